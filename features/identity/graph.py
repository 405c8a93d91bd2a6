"""The identity graph in memory: identifiers, link attempts, profiles, and how they change.

The answer is defined by one sequential process, so that batch and incremental agree:

1. Each message's identifiers (blocklisted and invalid values removed) are sorted by
   (priority rank, value); every pair ``i < j`` of them is a *link attempt* with the key
   ``(timestamp, message_id, i, j)``. Only the first attempt of a pair (smallest key) counts:
   with the shared set fixed, every rule is monotone (profiles only grow, so a refused pair
   stays refused and an accepted pair stays joined), which makes later repeats no-ops.
2. An identifier is *shared* when it was seen beside more people than ``rules.shared`` allows,
   counted over all messages (so the verdict does not depend on their order), or when a person
   said so (``unmerge --identifier``). People are distinct userIds or, for devices and cookies,
   groups of userIds, emails and phones seen together. Shared identifiers belong to no profile
   and link nothing.
3. Attempts are decided in key order: refused if an end is shared, if the merge would break a
   per-type limit, or if it would join two identifiers a person split; otherwise the two
   profiles merge. A profile's id derives from its *founder*, the identifier seen first, so it
   survives merges (the older profile's id wins) and splits (the piece with the founder keeps
   it; the other pieces get their own founders' ids).

The graph splits into independent *blocks* (connected through attempts between non-shared
identifiers). New in-order messages are applied directly; anything that changes the past (a late
message, an identifier becoming shared or no longer shared, an unmerge) recomputes only the
blocks it touches, from scratch, so the result always equals a full rebuild. Profile sizes are
bounded by the limits, which keeps each profile's member list short.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from features.identity.rules import IdentityRules

logger = logging.getLogger(__name__)

# Attempt decisions.
MERGE, REDUNDANT, SHARED, MANUAL = 0, 1, 2, 3
LIMIT = 10  # LIMIT + rank: refused by that type's limit
PENDING = -1  # recorded, decided by the next recomputation

MESSAGE_KINDS = ("track", "identify", "page", "screen", "alias")
_KIND_CODE = {kind: code for code, kind in enumerate(MESSAGE_KINDS)}
_EVIDENCE = {"alias": "alias", "identify": "identify"}
_EVIDENCE_BY_CODE = tuple(_EVIDENCE.get(kind, f"same {kind} message") for kind in MESSAGE_KINDS)
_NO_WATERMARK = (-(2**62), "")
DETECTED, MANUAL_SHARED = "detected", "manual"  # why an identifier is shared


def decision_name(code: int, types: Sequence[str]) -> str:
    if code >= LIMIT:
        return f"limit:{types[code - LIMIT]}"
    return {
        MERGE: "merge",
        REDUNDANT: "redundant",
        SHARED: "shared_identifier",
        MANUAL: "manual_split",
        PENDING: "pending",
    }[code]


def profile_id_for(identifier_type: str, value: str) -> str:
    """A profile's id: a stable hash of its founding identifier (pseudonymous, 64 bits)."""
    digest = hashlib.blake2b(f"{identifier_type}:{value}".encode(), digest_size=8)
    return "p-" + digest.hexdigest()


@dataclass(frozen=True)
class Override:
    """A manual unmerge: ``identifier`` makes ``a`` shared; ``link`` keeps ``a`` and ``b`` apart."""

    kind: str  # identifier | link
    a: tuple[str, str]  # (type, value)
    b: tuple[str, str] | None = None


class LogEntry(NamedTuple):
    """One line of the merge log as the engine produced it (persisted by the store layer)."""

    action: str  # merge | split | relabel | unmerge
    timestamp_us: int | None  # event time of the message that caused it (None: manual action)
    message_id: str | None
    profile_id: str | None  # the profile that remains (merge) or that was split
    other_profile_ids: str | None  # absorbed profile (merge) or the pieces (split), comma-separated
    identifier_a: tuple[str, str] | None  # (type, value)
    identifier_b: tuple[str, str] | None
    rule: str
    detail: str


class IdentityGraph:
    """Identifiers, link attempts and profiles under one set of rules."""

    def __init__(self, rules: IdentityRules):
        self.rules = rules
        self.types = rules.types
        self._limits = rules.limits
        self._people = rules.shared_people
        self._strong = tuple(rank in rules.strong_ranks for rank in range(len(self.types)))
        self._user_rank = rules.rank("user_id")
        self._column_ranks = tuple(
            rules.rank(t) for t in ("user_id", "email", "phone", "device_id", "anonymous_id")
        )
        n_types = len(self.types)
        # Identifiers (nodes), indexed by node id.
        self._index: list[dict[str, int]] = [{} for _ in range(n_types)]
        self.node_rank: list[int] = []
        self.node_value: list[str] = []
        self.node_ts: list[int] = []  # first seen: event time in microseconds ...
        self.node_mid: list[str] = []  # ... and that message's id
        # Values that never link: rank -> value -> (reason, first ts, first message).
        self.blocked: list[dict[str, tuple[str, int, str]]] = [{} for _ in range(n_types)]
        # Components: a label per node; lists only for components of two or more.
        self._comp: list[int] = []
        self._members: dict[int, list[int]] = {}
        self._counts: dict[int, list[int]] = {}
        self._founder: dict[int, int] = {}
        self._profile_cache: dict[int, str] = {}
        self._detail_cache: dict[tuple[int, ...], str] = {}
        # Shared identifiers: node -> reason; manual ones also in manual_shared.
        self.shared: dict[int, str] = {}
        self.manual_shared: set[int] = set()
        # Groups of strong identifiers (userId, email, phone) seen together: one person each, for
        # counting the people beside an identifier. Union-find without limits; parent absent:
        # a root. Members listed for groups of two or more.
        self._strong_parent: dict[int, int] = {}
        self._strong_members: dict[int, list[int]] = {}
        # Manual splits: node -> nodes it may never share a profile with.
        self.cannot_link: dict[int, set[int]] = {}
        self._constrained: dict[int, set[int]] = {}  # label -> constrained nodes inside
        # Link attempts, indexed by attempt id.
        self._pair: dict[int, int] = {}  # (a << 32) | b -> attempt id
        self.att_a: list[int] = []
        self.att_b: list[int] = []
        self.att_ts: list[int] = []
        self.att_mid: list[str] = []
        self.att_i: list[int] = []
        self.att_j: list[int] = []
        self.att_kind: list[int] = []
        self.att_decision: list[int] = []
        self.watermark: tuple[int, str] = _NO_WATERMARK
        # Adjacency (node -> attempt ids): a CSR for the first _csr_attempts, lists after.
        self._csr: tuple[np.ndarray, np.ndarray] | None = None
        self._csr_attempts = 0
        self._adj_extra: dict[int, list[int]] = {}
        # Change tracking for persistence and the merge log.
        self.dirty_nodes: set[int] = set()
        self.dirty_attempts: set[int] = set()
        self.dirty_blocked: set[tuple[int, str]] = set()
        self.log: list = []  # LogEntry, or (attempt, kept, absorbed, counts) for a merge
        self._all_dirty = False  # after a bulk load: everything is new
        self.issues: list[tuple[int, str, str]] = []  # (timestamp_us, message_id, reason)
        self._why: set[str] = set()  # why the pending recomputation is needed
        self._log_merges = True

    # --- identifiers -----------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self.node_rank)

    def node(self, identifier_type: str, value: str) -> int | None:
        return self._index[self.rules.rank(identifier_type)].get(value)

    def identifier(self, node: int) -> tuple[str, str]:
        return self.types[self.node_rank[node]], self.node_value[node]

    def _add_node(self, rank: int, value: str, ts: int, mid: str) -> int:
        node = len(self.node_rank)
        self._index[rank][value] = node
        self.node_rank.append(rank)
        self.node_value.append(value)
        self.node_ts.append(ts)
        self.node_mid.append(mid)
        self._comp.append(node)
        self.dirty_nodes.add(node)
        return node

    def _founder_key(self, node: int) -> tuple[int, str, int, str]:
        return self.node_ts[node], self.node_mid[node], self.node_rank[node], self.node_value[node]

    # --- profiles --------------------------------------------------------------------------------

    def founder(self, node: int) -> int:
        label = self._comp[node]
        return self._founder.get(label, label)

    def profile_id(self, node: int) -> str | None:
        """The profile of an identifier; None when it is shared (belongs to no one)."""
        if node in self.shared:
            return None
        founder = self.founder(node)
        cached = self._profile_cache.get(founder)
        if cached is None:
            cached = profile_id_for(self.types[self.node_rank[founder]], self.node_value[founder])
            self._profile_cache[founder] = cached
        return cached

    def shared_reason(self, node: int) -> str | None:
        """Why an identifier is shared, in words; None when it is not."""
        if node not in self.shared:
            return None
        if node in self.manual_shared:
            return "marked shared by a person (identity unmerge --identifier)"
        people, users, groups = self.people_beside(node)
        most = self._people[self.node_rank[node]]
        return (
            f"seen beside {people} people ({users} userIds, {groups} unconnected groups of "
            f"userIds, emails and phones); more than {most} means shared"
        )

    def members(self, node: int) -> list[int]:
        label = self._comp[node]
        return list(self._members.get(label, (label,)))

    def _component_counts(self, label: int) -> list[int]:
        counts = self._counts.get(label)
        if counts is None:
            counts = [0] * len(self.types)
            counts[self.node_rank[label]] = 1
        return counts

    # --- observing messages ----------------------------------------------------------------------

    def observe(
        self,
        timestamp_us: int,
        message_id: str,
        kind: str,
        identifiers: Iterable[tuple[str, str | None]],
    ) -> list[str]:
        """Observe one message's identifiers as (type, value) pairs; returns problems found.

        An unknown identifier type rejects the whole message (nothing is linked) and its reason
        is returned; empty values are ignored; blocklisted or invalid values never link.
        """
        ranked = []
        for identifier_type, value in identifiers:
            if identifier_type not in self.types:
                reason = (
                    f"unknown identifier type {identifier_type!r} (expected one of "
                    f"{', '.join(self.types)}); message not linked"
                )
                self.issues.append((timestamp_us, message_id, reason))
                return [reason]
            if value is not None and not isinstance(value, str):
                value = str(value)
            if value is not None and value.strip():
                ranked.append((self.types.index(identifier_type), value.strip()))
        problems = []
        for rank, value in ranked:
            if self._index[rank].get(value) is None:
                reason = self.blocked[rank].get(value, (self.rules.block_reason(rank, value),))[0]
                if reason is not None:
                    problems.append(f"{self.types[rank]} {value!r}: {reason}; not linked")
        seeds: set[int] = set()
        newly_shared: set[int] = set()
        self._observe_one(
            timestamp_us, message_id, _KIND_CODE.get(kind, 0), ranked, seeds, newly_shared
        )
        if seeds:
            self.recompute(seeds, reason=self._take_why(), newly_shared=newly_shared)
        return problems

    def observe_rows(self, rows: Iterable[Sequence]) -> None:
        """Observe canonical event rows ``(timestamp_us, message_id, type, user_id,
        anonymous_id, previous_id, email, phone, device_id)`` in any order."""
        ordered = sorted(rows, key=_row_key)
        r_user, r_email, r_phone, r_device, r_anon = self._column_ranks
        seeds: set[int] = set()
        newly_shared: set[int] = set()
        observe_one = self._observe_one
        for ts, mid, kind, user_id, anonymous_id, previous_id, email, phone, device_id in ordered:
            ranked = []
            if user_id is not None:
                ranked.append((r_user, user_id))
            if email is not None:
                ranked.append((r_email, email))
            if phone is not None:
                ranked.append((r_phone, phone))
            if device_id is not None:
                ranked.append((r_device, device_id))
            if anonymous_id is not None:
                ranked.append((r_anon, anonymous_id))
            if previous_id is not None:
                if previous_id == user_id:
                    self.issues.append(
                        (ts, mid, "alias previousId equals userId: self-link ignored")
                    )
                elif previous_id != anonymous_id:
                    ranked.append((r_anon, previous_id))
            observe_one(ts, mid, _KIND_CODE.get(kind, 0), ranked, seeds, newly_shared)
        if seeds:
            self.recompute(seeds, reason=self._take_why(), newly_shared=newly_shared)

    def _observe_one(
        self,
        ts: int,
        mid: str,
        kind: int,
        ranked: list[tuple[int, str]],
        seeds: set[int],
        newly_shared: set[int],
    ) -> None:
        index = self._index
        nodes: list[int] = []
        late = (ts, mid) < self.watermark
        if len(ranked) > 1:
            ranked.sort()
        previous = None
        for rank, value in ranked:
            if (rank, value) == previous:
                continue
            previous = (rank, value)
            node = index[rank].get(value)
            if node is None:
                if not self._allowed(rank, value, ts, mid):
                    continue
                node = self._add_node(rank, value, ts, mid)
            elif (ts, mid) < (self.node_ts[node], self.node_mid[node]):
                self.node_ts[node], self.node_mid[node] = ts, mid
                self.dirty_nodes.add(node)
                seeds.add(node)  # its profile's founder may change
                self._why.add("late message")
            nodes.append(node)
        if (ts, mid) > self.watermark:
            self.watermark = (ts, mid)
        if len(nodes) < 2:
            return
        pair_index = self._pair
        for i in range(len(nodes) - 1):
            a = nodes[i]
            for j in range(i + 1, len(nodes)):
                b = nodes[j]
                key = (a << 32) | b
                attempt = pair_index.get(key)
                if attempt is None:
                    attempt = self._add_attempt(a, b, ts, mid, i, j, kind)
                    pair_index[key] = attempt
                    self._count_people(a, b, seeds, newly_shared)
                    if late:
                        seeds.add(a)
                        seeds.add(b)
                        self._why.add("late message")
                    else:
                        self._decide(attempt)
                elif (ts, mid, i, j) < (
                    self.att_ts[attempt],
                    self.att_mid[attempt],
                    self.att_i[attempt],
                    self.att_j[attempt],
                ):
                    self.att_ts[attempt], self.att_mid[attempt] = ts, mid
                    self.att_i[attempt], self.att_j[attempt] = i, j
                    self.att_kind[attempt] = kind
                    self.dirty_attempts.add(attempt)
                    seeds.add(a)
                    seeds.add(b)
                    self._why.add("late message")

    def _take_why(self) -> str:
        why, self._why = self._why, set()
        return ", ".join(sorted(why)) or "late message"

    def _allowed(self, rank: int, value: str, ts: int, mid: str) -> bool:
        blocked = self.blocked[rank]
        entry = blocked.get(value)
        if entry is None:
            reason = self.rules.block_reason(rank, value)
            if reason is None:
                return True
            blocked[value] = (reason, ts, mid)
            self.dirty_blocked.add((rank, value))
        elif (ts, mid) < (entry[1], entry[2]):
            blocked[value] = (entry[0], ts, mid)
            self.dirty_blocked.add((rank, value))
        return False

    def _add_attempt(self, a: int, b: int, ts: int, mid: str, i: int, j: int, kind: int) -> int:
        attempt = len(self.att_a)
        self.att_a.append(a)
        self.att_b.append(b)
        self.att_ts.append(ts)
        self.att_mid.append(mid)
        self.att_i.append(i)
        self.att_j.append(j)
        self.att_kind.append(kind)
        self.att_decision.append(PENDING)
        extra = self._adj_extra
        extra.setdefault(a, []).append(attempt)
        extra.setdefault(b, []).append(attempt)
        self.dirty_attempts.add(attempt)
        return attempt

    def _count_people(self, a: int, b: int, seeds: set[int], newly_shared: set[int]) -> None:
        """Shared detection after a new attempt a-b: has an end now been seen beside too many
        people, or have two groups of strong identifiers turned out to be one person?"""
        strong_a, strong_b = self._strong[self.node_rank[a]], self._strong[self.node_rank[b]]
        if strong_a and strong_b:
            moved = self._strong_union(a, b)
            # Identifiers beside the group that moved may now see one person fewer.
            for member in moved:
                for attempt in self.attempts_of(member):
                    other = (
                        self.att_b[attempt]
                        if self.att_a[attempt] == member
                        else self.att_a[attempt]
                    )
                    if other in self.shared and other not in self.manual_shared:
                        self._reassess(other, seeds, newly_shared)
        if strong_b:
            self._reassess(a, seeds, newly_shared)
        if strong_a:
            self._reassess(b, seeds, newly_shared)

    def _reassess(self, node: int, seeds: set[int], newly_shared: set[int]) -> None:
        most = self._people[self.node_rank[node]]
        if most is None or node in self.manual_shared:
            return
        is_shared = self.people_beside(node)[0] > most
        if is_shared == (node in self.shared):
            return
        if is_shared:
            self.shared[node] = DETECTED
            newly_shared.add(node)
            self._why.add("identifier became shared")
        else:
            del self.shared[node]
            newly_shared.discard(node)
            self._why.add("identifier no longer shared")
        self.dirty_nodes.add(node)
        seeds.add(node)

    def people_beside(self, node: int) -> tuple[int, int, int]:
        """(people, userIds, groups of strong identifiers) seen beside ``node``. For a strong
        identifier, people are its userIds; otherwise the larger of the two counts."""
        users: set[int] = set()
        groups: set[int] = set()
        node_rank, strong, user_rank = self.node_rank, self._strong, self._user_rank
        for attempt in self.attempts_of(node):
            other = self.att_b[attempt] if self.att_a[attempt] == node else self.att_a[attempt]
            rank = node_rank[other]
            if rank == user_rank:
                users.add(other)
            if strong[rank]:
                groups.add(self._strong_find(other))
        if strong[node_rank[node]]:
            return len(users), len(users), len(groups)
        return max(len(users), len(groups)), len(users), len(groups)

    def _strong_find(self, node: int) -> int:
        parent = self._strong_parent
        root = node
        while root in parent:
            root = parent[root]
        while node != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def _strong_union(self, a: int, b: int) -> list[int]:
        """Join the strong groups of a and b; returns the members of the group that moved."""
        root_a, root_b = self._strong_find(a), self._strong_find(b)
        if root_a == root_b:
            return []
        members_a = self._strong_members.get(root_a) or [root_a]
        members_b = self._strong_members.get(root_b) or [root_b]
        if len(members_a) < len(members_b):
            root_a, root_b, members_a, members_b = root_b, root_a, members_b, members_a
        self._strong_parent[root_b] = root_a
        self._strong_members[root_a] = members_a + members_b
        self._strong_members.pop(root_b, None)
        return members_b

    def rebuild_strong_groups(self) -> None:
        """Recompute the strong groups from the attempts (after a bulk load or a restore)."""
        self._strong_parent, self._strong_members = {}, {}
        strong, node_rank = self._strong, self.node_rank
        for a, b in zip(self.att_a, self.att_b, strict=True):
            if strong[node_rank[a]] and strong[node_rank[b]]:
                self._strong_union(a, b)

    # --- deciding attempts -----------------------------------------------------------------------

    def _decide(self, attempt: int) -> int:
        a, b = self.att_a[attempt], self.att_b[attempt]
        shared = self.shared
        if a in shared or b in shared:
            decision = SHARED
        else:
            comp = self._comp
            label_a, label_b = comp[a], comp[b]
            if label_a == label_b:
                decision = REDUNDANT
            else:
                decision = self._check(label_a, label_b)
                if decision == MERGE:
                    self._merge(label_a, label_b, attempt)
        self.att_decision[attempt] = decision
        if not self._all_dirty:
            self.dirty_attempts.add(attempt)
        return decision

    def _decide_all(self) -> None:
        """Decide every attempt in order (attempts are sorted by key): the batch hot loop."""
        shared, comp, decisions = self.shared, self._comp, self.att_decision
        check, merge = self._check, self._merge
        for attempt, (a, b) in enumerate(zip(self.att_a, self.att_b, strict=True)):
            if a in shared or b in shared:
                decisions[attempt] = SHARED
                continue
            label_a, label_b = comp[a], comp[b]
            if label_a == label_b:
                decisions[attempt] = REDUNDANT
                continue
            decision = check(label_a, label_b)
            if decision == MERGE:
                merge(label_a, label_b, attempt)
            decisions[attempt] = decision

    def _check(self, label_a: int, label_b: int) -> int:
        counts_a = self._counts.get(label_a)
        counts_b = self._counts.get(label_b)
        limits = self._limits
        if counts_a is not None and counts_b is not None:
            for rank, limit in enumerate(limits):
                if counts_a[rank] + counts_b[rank] > limit:
                    return LIMIT + rank
        elif counts_a is None and counts_b is None:  # two single identifiers
            rank = self.node_rank[label_a]
            if rank == self.node_rank[label_b] and limits[rank] < 2:
                return LIMIT + rank
        else:  # a single identifier joins a profile: only its own type can overflow
            single, counts = (label_a, counts_b) if counts_a is None else (label_b, counts_a)
            rank = self.node_rank[single]
            if counts[rank] >= limits[rank]:
                return LIMIT + rank
        if self._constrained:
            inside_a = self._constrained.get(label_a)
            inside_b = self._constrained.get(label_b)
            if inside_a and inside_b:
                for node in inside_a:
                    if not self.cannot_link[node].isdisjoint(inside_b):
                        return MANUAL
        return MERGE

    def _merge(self, label_a: int, label_b: int, attempt: int) -> None:
        members, counts_of, founders = self._members, self._counts, self._founder
        list_a = members.get(label_a)
        list_b = members.get(label_b)
        if (len(list_a) if list_a else 1) < (len(list_b) if list_b else 1):
            label_a, label_b, list_a, list_b = label_b, label_a, list_b, list_a  # relabel less
        founder_a = founders.get(label_a, label_a)
        founder_b = founders.get(label_b, label_b)
        node_ts = self.node_ts
        if node_ts[founder_a] != node_ts[founder_b]:
            b_wins = node_ts[founder_b] < node_ts[founder_a]
        else:
            b_wins = self._founder_key(founder_b) < self._founder_key(founder_a)
        kept, absorbed = (founder_b, founder_a) if b_wins else (founder_a, founder_b)
        counts = counts_of.get(label_a)
        if counts is None:
            counts = [0] * len(self._limits)
            counts[self.node_rank[label_a]] = 1
            counts_of[label_a] = counts
        counts_b = counts_of.pop(label_b, None)
        if counts_b is None:
            counts[self.node_rank[label_b]] += 1
        else:
            for rank, count in enumerate(counts_b):
                counts[rank] += count
        if self._log_merges:
            # Materialised into a LogEntry only when written: cheap on the batch path.
            self.log.append((attempt, kept, absorbed, tuple(counts)))
        comp = self._comp
        if list_b is None:
            comp[label_b] = label_a
            moved = (label_b,)
        else:
            for node in list_b:
                comp[node] = label_a
            moved = list_b
            del members[label_b]
        if list_a is None:
            members[label_a] = [label_a, *moved]
        else:
            list_a.extend(moved)
        founders[label_a] = kept
        founders.pop(label_b, None)
        if not self._all_dirty:
            self.dirty_nodes.update(members[label_a] if b_wins else moved)
        if self._constrained:
            constrained_b = self._constrained.pop(label_b, None)
            if constrained_b:
                self._constrained.setdefault(label_a, set()).update(constrained_b)

    def _merge_entry(
        self, attempt: int, kept: int, absorbed: int, counts: tuple[int, ...]
    ) -> LogEntry:
        detail = self._detail_cache.get(counts)
        if detail is None:
            detail = self._limits_detail(counts)
        return LogEntry(
            "merge",
            self.att_ts[attempt],
            self.att_mid[attempt],
            self._founder_profile(kept),
            self._founder_profile(absorbed),
            self.identifier(self.att_a[attempt]),
            self.identifier(self.att_b[attempt]),
            _EVIDENCE_BY_CODE[self.att_kind[attempt]],
            detail,
        )

    def log_entries(
        self, skip: set[tuple[str, str, str, str]] | frozenset = frozenset()
    ) -> list[LogEntry]:
        """The merge log entries recorded since the last ``take_changes``, leaving out merges
        whose link (type a, a, type b, b) is in ``skip``."""
        entries = []
        for entry in self.log:
            if isinstance(entry, LogEntry):
                entries.append(entry)
                continue
            if skip:
                attempt = entry[0]
                key = (*self.identifier(self.att_a[attempt]), *self.identifier(self.att_b[attempt]))
                if key in skip:
                    continue
            entries.append(self._merge_entry(*entry))
        return entries

    def profile_count(self) -> int:
        """Profiles: every merge joins two, shared identifiers belong to none."""
        merges = sum(1 for decision in self.att_decision if decision == MERGE)
        return self.node_count - len(self.shared) - merges

    def profile_ids(self) -> list[str | None]:
        """The profile of every identifier, by node id (None: shared)."""
        comp, founders, shared = self._comp, self._founder, self.shared
        founder_profile = self._founder_profile
        return [
            None if node in shared else founder_profile(founders.get(label, label))
            for node, label in enumerate(comp)
        ]

    def evidence(self, attempt: int) -> str:
        """Which rule allowed a merge: the kind of message that carried both identifiers."""
        return _EVIDENCE_BY_CODE[self.att_kind[attempt]]

    def _limits_detail(self, counts: Sequence[int]) -> str:
        key = tuple(counts)
        cached = self._detail_cache.get(key)
        if cached is None:
            cached = self._detail_cache[key] = self._format_limits(key)
        return cached

    def _format_limits(self, counts: Sequence[int]) -> str:
        within = ", ".join(
            f"{t} {c}/{limit}"
            for t, c, limit in zip(self.types, counts, self._limits, strict=True)
            if c
        )
        return f"within limits: {within}"

    def _founder_profile(self, founder: int) -> str:
        cached = self._profile_cache.get(founder)
        if cached is None:
            cached = profile_id_for(self.types[self.node_rank[founder]], self.node_value[founder])
            self._profile_cache[founder] = cached
        return cached

    # --- bulk build (the batch path) -------------------------------------------------------------

    def bulk_load(
        self,
        nodes: dict[str, Sequence],
        blocked: Iterable[tuple[int, str, str, int, str]],
        attempts: dict[str, np.ndarray | Sequence],
        shared: Iterable[int],
        watermark: tuple[int, str],
        overrides: Sequence[Override] = (),
    ) -> None:
        """Load nodes and attempts (attempts sorted by key) into an empty graph, then decide
        every attempt in order. ``nodes``: rank, value, ts, mid; ``attempts``: a, b, ts, mid, i,
        j, kind; ``shared``: nodes detected as shared; ``overrides``: manual unmerges (those
        naming identifiers the graph does not hold are skipped)."""
        if self.node_rank or self.att_a:
            raise RuntimeError("bulk_load needs an empty graph")
        self.node_rank = _as_list(nodes["rank"])
        self.node_value = _as_list(nodes["value"])
        self.node_ts = _as_list(nodes["ts"])
        self.node_mid = _as_list(nodes["mid"])
        self._comp = list(range(len(self.node_rank)))
        for node, (rank, value) in enumerate(zip(self.node_rank, self.node_value, strict=True)):
            self._index[rank][value] = node
        for rank, value, reason, ts, mid in blocked:
            self.blocked[rank][value] = (reason, ts, mid)
            self.dirty_blocked.add((rank, value))
        for name in ("a", "b", "ts", "mid", "i", "j", "kind"):
            setattr(self, f"att_{name}", _as_list(attempts[name]))
        n = len(self.att_a)
        self.att_decision = [PENDING] * n
        self._pair = {
            (a << 32) | b: k for k, (a, b) in enumerate(zip(self.att_a, self.att_b, strict=True))
        }
        self.shared.update(dict.fromkeys(shared, DETECTED))
        self._apply_overrides(overrides)
        self._build_csr()
        self.rebuild_strong_groups()
        self.watermark = watermark
        self._all_dirty = True
        self._decide_all()

    def _apply_overrides(self, overrides: Sequence[Override]) -> None:
        """Record manual unmerges on a graph whose attempts are not decided yet."""
        for override in overrides:
            a = self.node(*override.a)
            b = self.node(*override.b) if override.b is not None else None
            if a is None or (override.kind == "link" and b is None):
                continue
            if override.kind == "identifier":
                self.manual_shared.add(a)
                self.shared.setdefault(a, MANUAL_SHARED)
            else:
                self.cannot_link.setdefault(a, set()).add(b)
                self.cannot_link.setdefault(b, set()).add(a)
        for label, constrained in self._constraint_labels().items():
            self._constrained[label] = constrained

    def restore(
        self,
        nodes: dict[str, Sequence],
        blocked: Iterable[tuple[int, str, str, int, str]],
        attempts: dict[str, Sequence],
        shared: dict[int, str],
        cannot_link: Iterable[tuple[int, int]],
        watermark: tuple[int, str],
    ) -> None:
        """Rebuild the in-memory graph from persisted state (decisions included) without
        deciding anything again: recorded merges are replayed. ``shared``: node -> "detected"
        or "manual"."""
        if self.node_rank or self.att_a:
            raise RuntimeError("restore needs an empty graph")
        self.node_rank = _as_list(nodes["rank"])
        self.node_value = _as_list(nodes["value"])
        self.node_ts = _as_list(nodes["ts"])
        self.node_mid = _as_list(nodes["mid"])
        self._comp = list(range(len(self.node_rank)))
        for node, (rank, value) in enumerate(zip(self.node_rank, self.node_value, strict=True)):
            self._index[rank][value] = node
        for rank, value, reason, ts, mid in blocked:
            self.blocked[rank][value] = (reason, ts, mid)
        for name in ("a", "b", "ts", "mid", "i", "j", "kind", "decision"):
            setattr(self, f"att_{name}", _as_list(attempts[name]))
        self._pair = {
            (a << 32) | b: k for k, (a, b) in enumerate(zip(self.att_a, self.att_b, strict=True))
        }
        self.shared = dict(shared)
        self.manual_shared = {node for node, why in shared.items() if why == MANUAL_SHARED}
        for a, b in cannot_link:
            self.cannot_link.setdefault(a, set()).add(b)
            self.cannot_link.setdefault(b, set()).add(a)
        self._build_csr()
        self.rebuild_strong_groups()
        self.watermark = watermark
        self._log_merges, self._all_dirty = False, True
        merge_attempts = [k for k, d in enumerate(self.att_decision) if d == MERGE]
        for label, constrained in self._constraint_labels().items():
            self._constrained[label] = constrained
        for attempt in merge_attempts:
            self._merge(self._comp[self.att_a[attempt]], self._comp[self.att_b[attempt]], attempt)
        self._log_merges, self._all_dirty = True, False
        self.dirty_nodes = set()
        self.dirty_attempts = set()

    def _constraint_labels(self) -> dict[int, set[int]]:
        labels: dict[int, set[int]] = {}
        for node in self.cannot_link:
            labels.setdefault(self._comp[node], set()).add(node)
        return labels

    # --- adjacency -------------------------------------------------------------------------------

    def _build_csr(self) -> None:
        n_attempts = len(self.att_a)
        if n_attempts == 0:
            self._csr, self._csr_attempts, self._adj_extra = None, 0, {}
            return
        ends = np.concatenate([np.asarray(self.att_a, np.int64), np.asarray(self.att_b, np.int64)])
        ids = np.concatenate([np.arange(n_attempts, dtype=np.int64)] * 2)
        order = np.argsort(ends, kind="stable")
        indptr = np.zeros(len(self.node_rank) + 1, dtype=np.int64)
        np.add.at(indptr, ends + 1, 1)
        self._csr = (np.cumsum(indptr), ids[order])
        self._csr_attempts = n_attempts
        self._adj_extra = {}

    def attempts_of(self, node: int) -> list[int]:
        """Ids of every attempt with ``node`` at one end."""
        result: list[int] = []
        if self._csr is not None and node + 1 < len(self._csr[0]):
            indptr, ids = self._csr
            result = ids[indptr[node] : indptr[node + 1]].tolist()
        extra = self._adj_extra.get(node)
        if extra:
            result = result + extra if result else list(extra)
        return result

    def _attempt_key(self, attempt: int) -> tuple[int, str, int, int]:
        return (
            self.att_ts[attempt],
            self.att_mid[attempt],
            self.att_i[attempt],
            self.att_j[attempt],
        )

    # --- recomputation ---------------------------------------------------------------------------

    def block_of(self, seeds: Iterable[int], passable: set[int] | None = None) -> set[int]:
        """Identifiers connected to ``seeds`` through attempts between non-shared identifiers
        (identifiers in ``passable`` are crossed even when shared)."""
        passable = passable or set()
        shared = self.shared
        block: set[int] = set()
        stack = [s for s in seeds]
        att_a, att_b = self.att_a, self.att_b
        while stack:
            node = stack.pop()
            if node in block:
                continue
            block.add(node)
            if node in shared and node not in passable:
                continue
            for attempt in self.attempts_of(node):
                other = att_b[attempt] if att_a[attempt] == node else att_a[attempt]
                if other not in block and (other not in shared or other in passable):
                    stack.append(other)
        # Components never straddle a block, but stale merges (made before a newly shared
        # identifier was known) may: take whole components.
        for node in list(block):
            for member in self._members.get(self._comp[node], ()):
                if member not in block:
                    block.add(member)
        return block

    def recompute(
        self,
        seeds: Iterable[int],
        reason: str,
        newly_shared: set[int] | None = None,
        cause: tuple[int | None, str | None] = (None, None),
    ) -> set[int]:
        """Decide again, from scratch and in key order, every attempt in the blocks of
        ``seeds``; log the merges and splits this changes. Returns the identifiers recomputed."""
        block = self.block_of(seeds, set(newly_shared or ()))
        old_profile = {node: self.profile_id(node) for node in block}
        attempts = sorted(
            {attempt for node in block for attempt in self.attempts_of(node)},
            key=self._attempt_key,
        )
        old_merges = {a for a in attempts if self.att_decision[a] == MERGE}
        for node in block:  # reset to singletons
            label = self._comp[node]
            self._members.pop(label, None)
            self._counts.pop(label, None)
            self._founder.pop(label, None)
            self._constrained.pop(label, None)
        for node in block:
            self._comp[node] = node
            if node in self.cannot_link:
                self._constrained[node] = {node}
        self._log_merges = False
        try:
            for attempt in attempts:
                self._decide(attempt)
        finally:
            self._log_merges = True
        self.dirty_nodes.update(block)
        self._log_changes(block, old_profile, attempts, old_merges, reason, cause)
        return block

    def _log_changes(
        self,
        block: set[int],
        old_profile: dict[int, str | None],
        attempts: list[int],
        old_merges: set[int],
        reason: str,
        cause: tuple[int | None, str | None],
    ) -> None:
        new_profile = {node: self.profile_id(node) for node in block}
        pieces: dict[str, set[str | None]] = {}
        for node in block:
            if old_profile[node] is not None:
                pieces.setdefault(old_profile[node], set()).add(new_profile[node])
        ts, mid = cause
        for old, new in sorted(pieces.items()):
            kept = sorted(p for p in new if p is not None)
            if len(new) > 1 or None in new:
                detail = f"{reason}; pieces: {', '.join(kept) or 'none'}"
                if None in new:
                    detail += "; some identifiers became shared"
                self.log.append(
                    LogEntry("split", ts, mid, old, ",".join(kept), None, None, reason, detail)
                )
            elif kept and kept[0] != old and old not in new_profile.values():
                self.log.append(
                    LogEntry(
                        "relabel",
                        ts,
                        mid,
                        old,
                        kept[0],
                        None,
                        None,
                        reason,
                        f"{reason}; founder changed",
                    )
                )
        for attempt in attempts:
            if self.att_decision[attempt] == MERGE and attempt not in old_merges:
                node = self.att_a[attempt]
                self.log.append(
                    LogEntry(
                        action="merge",
                        timestamp_us=self.att_ts[attempt],
                        message_id=self.att_mid[attempt],
                        profile_id=new_profile[node],
                        other_profile_ids=None,
                        identifier_a=self.identifier(node),
                        identifier_b=self.identifier(self.att_b[attempt]),
                        rule=self.evidence(attempt),
                        detail=f"{self._limits_detail(self._component_counts(self._comp[node]))}"
                        f" (decided again: {reason})",
                    )
                )

    # --- manual overrides ------------------------------------------------------------------------

    def quarantine(self, node: int, reason: str = "manual unmerge") -> set[int]:
        """Make an identifier shared: it leaves its profile and links nothing from now on."""
        self.manual_shared.add(node)
        if node in self.shared:
            return set()
        self.shared[node] = MANUAL_SHARED
        return self.recompute({node}, reason, newly_shared={node})

    def forbid(self, a: int, b: int, reason: str = "manual unmerge") -> set[int]:
        """Two identifiers may never share a profile; recompute their profiles."""
        if a == b:
            raise ValueError("cannot split an identifier from itself")
        self.cannot_link.setdefault(a, set()).add(b)
        self.cannot_link.setdefault(b, set()).add(a)
        return self.recompute({a, b}, reason)

    # --- views -----------------------------------------------------------------------------------

    def profile_members(self) -> dict[str, list[int]]:
        profiles: dict[str, list[int]] = {}
        for node in range(len(self.node_rank)):
            profile = self.profile_id(node)
            if profile is not None:
                profiles.setdefault(profile, []).append(node)
        return profiles

    def assignments(self) -> dict[tuple[str, str], str | None]:
        """(identifier type, value) -> profile id (None: shared) for every identifier."""
        return {self.identifier(node): self.profile_id(node) for node in range(len(self.node_rank))}

    def merge_links(self) -> set[tuple[tuple[str, str], tuple[str, str], int, str]]:
        """The links that built the current profiles: (a, b, timestamp, message_id)."""
        return {
            (
                self.identifier(self.att_a[k]),
                self.identifier(self.att_b[k]),
                self.att_ts[k],
                self.att_mid[k],
            )
            for k, decision in enumerate(self.att_decision)
            if decision == MERGE
        }

    def decisions(self) -> dict[tuple[tuple[str, str], tuple[str, str]], str]:
        names = self.types
        return {
            (self.identifier(self.att_a[k]), self.identifier(self.att_b[k])): decision_name(
                d, names
            )
            for k, d in enumerate(self.att_decision)
        }

    def take_changes(self) -> Changes:
        """Hand the persistence layer what changed since the last call, and forget it."""
        everything = self._all_dirty  # after a bulk load: None stands for all of them
        changes = Changes(
            None if everything else self.dirty_nodes,
            None if everything else self.dirty_attempts,
            self.dirty_blocked,
            self.log_entries(),
            self.issues,
        )
        self.dirty_nodes, self.dirty_attempts, self.dirty_blocked = set(), set(), set()
        self.log, self.issues = [], []
        self._all_dirty = False
        return changes


@dataclass
class Changes:
    nodes: set[int] | None  # None: every node
    attempts: set[int] | None  # None: every attempt
    blocked: set[tuple[int, str]]
    log: list[LogEntry]
    issues: list[tuple[int, str, str]]


def _row_key(row: Sequence) -> tuple:
    return row[0], row[1]


def _as_list(values: np.ndarray | Sequence) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)
