"""Identity resolution on an event store: resolve, update, explain, unmerge, export, stats."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from features.identity import tables
from features.identity.batch import build_graph
from features.identity.graph import MERGE, IdentityGraph, LogEntry, Override, profile_id_for
from features.identity.rules import IDENTIFIER_TYPES, IdentityRules, load_rules
from features.store import EventStore

logger = logging.getLogger(__name__)

# Above this many new events, when they are a quarter or more of all events, an update runs the
# batch path instead: both give the same answer and the batch path is faster in bulk.
BATCH_THRESHOLD = 50_000
_GRAPHS: dict[str, tuple[str, IdentityGraph]] = {}  # store path -> (state version, graph)


class IdentityError(ValueError):
    """A request the identity graph cannot serve; the message says why."""


@dataclass
class ResolveReport:
    """What a resolve or an update did."""

    path: str  # batch or incremental
    events: int  # events read from the store by this call
    identifiers: int
    profiles: int
    shared: int
    blocked: int
    merges: int
    refused: dict[str, int]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- resolve (batch) and update (incremental) ---------------------------------------------------


def resolve_identities(store: EventStore, rules: IdentityRules | None = None) -> ResolveReport:
    """Rebuild every profile from the events in the store (the batch path) and persist them.

    ``rules``: None keeps the rules the workspace was resolved with (the shipped defaults the
    first time). Merges and splits relative to the previous state go to ``merge_log``.
    """
    started = time.perf_counter()
    connection = store.connection
    tables.ensure_tables(connection)
    rules = rules or tables.stored_rules(connection) or load_rules()
    max_rowid = tables.max_event_rowid(connection)
    overrides = tables.read_overrides(connection)
    graph, timings = build_graph(connection, rules, overrides, max_rowid=max_rowid)
    lap = time.perf_counter()
    log = _rebuild_log(connection, graph) if tables.has_state(connection) else graph.log_entries()
    graph.log = []
    marker = LogEntry(
        "rebuild",
        None,
        None,
        None,
        None,
        None,
        None,
        "resolve",
        f"{timings.events} events, {graph.node_count} identifiers",
    )
    version = tables.save(
        connection,
        graph,
        _state(graph, rules, max_rowid, timings.events),
        full=True,
        extra_log=[marker, *log],
    )
    _GRAPHS[_key(store)] = (version, graph)
    timings.seconds["write"] = round(time.perf_counter() - lap, 3)
    return _report(graph, "batch", timings.events, started, timings.seconds)


def update_identity(store: EventStore, events: pa.Table | None = None) -> ResolveReport:
    """Bring profiles up to date with new events (the incremental path).

    ``events`` None (the usual call, right after ``store.append``): every event appended since
    the last resolve or update is read from the store. Given a table with the canonical event
    columns, exactly those events are observed (observing an event twice changes nothing).
    Events older than ones already processed are fine: the profiles they touch are recomputed,
    so the result always equals ``resolve_identities`` on the same store.
    """
    started = time.perf_counter()
    connection = store.connection
    tables.ensure_tables(connection)
    if not tables.has_state(connection):
        return resolve_identities(store)
    state = tables.read_state(connection)
    rules = tables.stored_rules(connection)
    last_rowid = int(state["events_rowid"])
    max_rowid = last_rowid
    if events is None:
        pending = tables.pending_events(connection, last_rowid)
        if pending[0] > BATCH_THRESHOLD and 4 * pending[0] > pending[0] + int(state["events"]):
            return resolve_identities(store)  # a quarter or more is new: the batch path is faster
        max_rowid = pending[1] if pending[1] is not None else last_rowid
        rows = tables.event_rows(connection, last_rowid, max_rowid)
    else:
        rows = _rows_from_table(events)
    graph = _graph(store, state, rules)
    graph.observe_rows(rows)
    processed = int(state.get("events", 0)) + (len(rows) if events is None else 0)
    new_state = _state(graph, rules, max_rowid, processed)
    version = tables.save(connection, graph, new_state, full=False)
    _GRAPHS[_key(store)] = (version, graph)
    return _report(graph, "incremental", len(rows), started, {})


def load_graph(store: EventStore) -> IdentityGraph:
    """The workspace's identity graph in memory (cached per process while it is current)."""
    connection = store.connection
    if not _has_identity(store):
        raise IdentityError("no identity profiles yet; run `kairos identity resolve`")
    state = tables.read_state(connection)
    return _graph(store, state, tables.stored_rules(connection))


def profiles_as_of(
    store: EventStore | duckdb.DuckDBPyConnection,
    at: datetime,
    rules: IdentityRules | None = None,
    overrides: bool = True,
) -> pa.Table:
    """Profiles exactly as the events at or before ``at`` define them, nothing later.

    Columns: identifier_type, identifier, profile_id (NULL: shared). Runs the batch path on the
    events up to ``at`` in memory; the stored profiles are untouched. ``overrides``: apply the
    workspace's manual unmerges (a person's later judgement) or not.
    """
    # A read-only connection is enough: training and scoring hold one, not a store.
    connection = store if isinstance(store, duckdb.DuckDBPyConnection) else store.connection
    return ProfilesAsOf(connection, rules, overrides).at(at)


class ProfilesAsOf:
    """``profiles_as_of`` at a series of instants, from one graph advanced between them.

    Observing the events in (previous instant, ``at``] turns the graph of the previous instant
    into the graph of ``at`` (batch equals incremental), so a later instant costs only the
    events in between rather than all of them. An earlier instant rebuilds from scratch.
    """

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        rules: IdentityRules | None = None,
        overrides: bool = True,
    ):
        has = tables.has_state(connection)
        self.connection = connection
        self.rules = rules or (tables.stored_rules(connection) if has else None) or load_rules()
        self.overrides = tables.read_overrides(connection) if (overrides and has) else []
        self._graph: IdentityGraph | None = None
        self._at: datetime | None = None

    def at(self, at: datetime) -> pa.Table:
        """Columns identifier_type, identifier, profile_id (NULL: shared), as of ``at``."""
        if self._graph is None or self._at is None or at < self._at:
            self._graph, _ = build_graph(self.connection, self.rules, self.overrides, at=at)
        elif at > self._at:
            self._graph.observe_rows(tables.first_sightings_between(self.connection, self._at, at))
        self._at = at
        return assignments_table(self._graph)


def assignments_table(graph: IdentityGraph) -> pa.Table:
    nodes = range(graph.node_count)
    return pa.table(
        {
            "identifier_type": pa.array([graph.types[graph.node_rank[n]] for n in nodes]),
            "identifier": pa.array([graph.node_value[n] for n in nodes], pa.string()),
            "profile_id": pa.array([graph.profile_id(n) for n in nodes], pa.string()),
        }
    )


# --- explain, unmerge, export, stats ------------------------------------------------------------


def parse_identifier(text: str) -> tuple[str | None, str]:
    """``"email:ann@x.org"`` -> ("email", "ann@x.org"); a bare value -> (None, value)."""
    kind, sep, value = text.partition(":")
    if sep and kind in IDENTIFIER_TYPES and value:
        return kind, value
    return None, text


def find_identifier(store: EventStore, text: str) -> list[dict[str, Any]]:
    """Identifiers (and blocked values) matching ``TYPE:VALUE`` or a bare value."""
    kind, value = parse_identifier(text.strip())
    return tables.find_identifiers(store.connection, kind, value)


def explain(store: EventStore, identifier: str) -> dict[str, Any]:
    """The profile of an identifier, all its identifiers and the links that joined them.

    Returns ``{"query", "identifier_type", "identifier", "profile_id", "founder",
    "identifiers": [...], "path": [...], "links": [...], "refused": [...], "refused_total",
    "shared_reason", "blocked_reason", "log": [...]}``. ``path`` is the chain of links from
    the profile's founder to the identifier asked about; ``links`` all merges of the profile.
    """
    if not _has_identity(store):
        raise IdentityError("no identity profiles yet; run `kairos identity resolve`")
    connection = store.connection
    matches = find_identifier(store, identifier)
    if not matches:
        raise IdentityError(f"no identifier {identifier!r} in the identity graph")
    if len(matches) > 1:
        options = ", ".join(f"{m['identifier_type']}:{m['identifier']}" for m in matches)
        raise IdentityError(f"{identifier!r} is ambiguous; say which: {options}")
    match = matches[0]
    result: dict[str, Any] = {
        "query": identifier,
        "identifier_type": match["identifier_type"],
        "identifier": match["identifier"],
        "profile_id": match.get("profile_id"),
        "founder": None,
        "identifiers": [],
        "path": [],
        "links": [],
        "refused": [],
        "refused_total": 0,
        "shared_reason": None,
        "blocked_reason": match.get("blocked"),
        "log": [],
    }
    if "blocked" in match:
        return result
    node = match["node_id"]
    if match["profile_id"] is None:
        result["shared_reason"] = load_graph(store).shared_reason(node)
    members = tables.profile_members(connection, match["profile_id"], node)
    result["identifiers"] = [{k: v for k, v in m.items() if k != "node_id"} for m in members]
    attempts = tables.attempts_touching(connection, [m["node_id"] for m in members])
    links = [a for a in attempts if a["decision"] == "merge"]
    refused = [a for a in attempts if a["decision"] not in ("merge", "redundant")]
    result["links"] = [_link_row(a) for a in links]
    result["refused"] = [_link_row(a) for a in refused[:50]]
    result["refused_total"] = len(refused)
    founder = next(
        (
            m
            for m in members
            if profile_id_for(m["identifier_type"], m["identifier"]) == match["profile_id"]
        ),
        None,
    )
    if founder is not None:
        result["founder"] = f"{founder['identifier_type']}:{founder['identifier']}"
        result["path"] = [_link_row(a) for a in _tree_path(links, founder["node_id"], node)]
    result["log"] = tables.recent_log(
        connection, match["profile_id"], (match["identifier_type"], match["identifier"])
    )
    return result


def unmerge(
    store: EventStore,
    identifier: str | None = None,
    link: tuple[str, str] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Undo a merge: ``identifier`` becomes shared (it leaves its profile and links nothing),
    or the two identifiers of ``link`` may never share a profile again. Only the profiles
    involved are recomputed; the pieces get the ids of their own founders and the split is
    logged. The override is stored and applied by every later rebuild."""
    if (identifier is None) == (link is None):
        raise IdentityError("unmerge needs either an identifier or a link (two identifiers)")
    graph = load_graph(store)
    connection = store.connection
    if identifier is not None:
        (node,) = _resolve_nodes(store, graph, [identifier])
        before = graph.profile_id(node)
        if node in graph.shared:
            raise IdentityError(
                f"{identifier!r} is already shared and belongs to no profile; nothing to unmerge"
            )
        override = Override("identifier", graph.identifier(node))
        changed = graph.quarantine(node, reason="manual unmerge of an identifier")
        summary = f"{_label(graph, node)} made shared; it links nothing from now on"
        profiles_before = [before]
    else:
        node_a, node_b = _resolve_nodes(store, graph, list(link))
        if node_a == node_b:
            raise IdentityError("a link needs two different identifiers")
        before_a, before_b = graph.profile_id(node_a), graph.profile_id(node_b)
        if before_a is None or before_a != before_b:
            raise IdentityError(
                f"{_label(graph, node_a)} and {_label(graph, node_b)} are not in the same "
                "profile; nothing to unmerge"
            )
        override = Override("link", graph.identifier(node_a), graph.identifier(node_b))
        changed = graph.forbid(node_a, node_b, reason="manual unmerge of a link")
        summary = f"{_label(graph, node_a)} and {_label(graph, node_b)} kept apart from now on"
        profiles_before = [before_a]
    profiles_after = sorted({graph.profile_id(n) for n in changed} - {None})
    entry = LogEntry(
        "unmerge",
        None,
        None,
        profiles_before[0],
        ",".join(profiles_after),
        override.a,
        override.b,
        "manual unmerge",
        summary + (f"; note: {note}" if note else ""),
    )
    state = tables.read_state(connection)
    graph.log.insert(0, entry)
    try:
        version = tables.save(
            connection,
            graph,
            {k: state.get(k) for k in _STATE_KEYS},
            full=False,
            override=(override, note),
        )
    except BaseException:
        _GRAPHS.pop(_key(store), None)  # the graph in memory is ahead of the tables now
        raise
    _GRAPHS[_key(store)] = (version, graph)
    return {
        "override_id": int(tables.read_state(connection)["last_override"]),
        "summary": summary,
        "profile_before": profiles_before[0],
        "profiles_after": profiles_after,
        "identifiers_recomputed": len(changed),
    }


def export_identities(store: EventStore, out: Path, include_shared: bool = False) -> int:
    """Write identifier_type, identifier, profile_id to Parquet or CSV (by extension)."""
    if not _has_identity(store):
        raise IdentityError("no identity profiles yet; run `kairos identity resolve`")
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise IdentityError(f"{out}: unknown output format {out.suffix!r}; use .parquet or .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    return tables.export_assignments(store.connection, out, include_shared)


def identity_stats(store: EventStore) -> dict[str, Any]:
    """Profiles, identifiers per profile, the largest profile, refusals by rule, and more."""
    if not _has_identity(store):
        raise IdentityError("no identity profiles yet; run `kairos identity resolve`")
    counts = tables.summary(store.connection)
    state = tables.read_state(store.connection)
    decisions = counts["decisions"]
    return {
        "profiles": counts["profiles"],
        "identifiers": sum(counts["by_type"].values()),
        "identifiers_in_profiles": counts["identifiers_in_profiles"],
        "identifiers_by_type": counts["by_type"],
        "identifiers_per_profile": {
            "mean": round(counts["mean"] or 0.0, 3),
            "median": counts["median"] or 0,
            "p99": round(counts["p99"] or 0.0, 1),
            "max": counts["max"] or 0,
        },
        "largest_profile": counts["largest_profile"],
        "merges": decisions.get("merge", 0),
        "redundant_links": decisions.get("redundant", 0),
        "refused_by_rule": {
            k: v for k, v in sorted(decisions.items()) if k not in ("merge", "redundant")
        },
        "shared_identifiers": counts["shared"],
        "blocked_values": counts["blocked"],
        "issues": counts["issues"],
        "events_resolved": int(state.get("events", 0)),
        "watermark": state.get("watermark_time"),
        "overrides": counts["overrides"],
    }


def event_profiles_sql(
    rules: IdentityRules | None = None,
    where: str = "",
    identifiers: str = "identity_identifiers",
    columns: str = "e.message_id",
) -> str:
    """SQL giving each event's profile: that of its highest-priority identifier that belongs to
    one (columns ``columns``, profile_id; NULL when none does). ``where`` filters ``events e``;
    ``identifiers`` names a relation with identifier_type, identifier, profile_id. ``columns``
    ``"e.*"`` gives whole events in one pass, without joining back on message_id."""
    rules = rules or load_rules()
    event_columns = {"anonymous_id": ["anonymous_id", "previous_id"]}
    joins, picks = [], []
    for rank, kind in enumerate(rules.types):
        for k, column in enumerate(event_columns.get(kind, [kind])):
            alias = f"i{rank}_{k}"
            joins.append(
                f"LEFT JOIN {identifiers} {alias} ON {alias}.identifier_type = '{kind}' "
                f"AND {alias}.identifier = e.{column}"
            )
            picks.append(f"{alias}.profile_id")
    return (
        f"SELECT {columns}, coalesce({', '.join(picks)}) AS profile_id FROM events e "
        + " ".join(joins)
        + (f" WHERE {where}" if where else "")
    )


def event_profiles_as_of(
    store: EventStore, at: datetime, rules: IdentityRules | None = None, overrides: bool = True
) -> pa.Table:
    """Each event at or before ``at`` with its profile as of ``at`` (message_id, profile_id):
    a later login never enriches a past profile."""
    connection = store.connection
    has = _has_identity(store)
    rules = rules or (tables.stored_rules(connection) if has else None) or load_rules()
    profiles = profiles_as_of(store, at, rules, overrides)
    sql = event_profiles_sql(rules, "e.timestamp <= $at", tables.AS_OF_RELATION)
    return tables.event_profiles_with(connection, sql, profiles, at)


# --- helpers ------------------------------------------------------------------------------------

_STATE_KEYS = ("rules", "watermark_ts", "watermark_mid", "watermark_time", "events_rowid", "events")


def _state(
    graph: IdentityGraph, rules: IdentityRules, max_rowid: int | None, events: int
) -> dict[str, str | None]:
    ts, mid = graph.watermark
    has_watermark = mid != "" or ts > -(2**61)
    return {
        "rules": rules.to_json(),
        "watermark_ts": str(ts) if has_watermark else None,
        "watermark_mid": mid if has_watermark else None,
        "watermark_time": str(_from_us(ts)) if has_watermark else None,
        "events_rowid": str(max_rowid if max_rowid is not None else -1),
        "events": str(events),
    }


def _from_us(ts: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=ts)


_ROW_COLUMNS = (
    "timestamp",
    "message_id",
    "type",
    "user_id",
    "anonymous_id",
    "previous_id",
    "email",
    "phone",
    "device_id",
)


def _rows_from_table(events: pa.Table) -> list[tuple]:
    missing = [c for c in _ROW_COLUMNS if c not in events.column_names]
    if missing:
        raise IdentityError(
            f"events table: column(s) {', '.join(missing)} missing; have: "
            f"{', '.join(events.column_names)}"
        )
    timestamps = events["timestamp"]
    if not pa.types.is_timestamp(timestamps.type):
        raise IdentityError(
            f"events table: column timestamp must be a timestamp, got {timestamps.type}"
        )
    micros = timestamps.cast(pa.timestamp("us", tz=timestamps.type.tz)).cast(pa.int64())
    columns = [events[c].to_pylist() for c in _ROW_COLUMNS[1:]]
    return list(zip(micros.to_pylist(), *columns, strict=True))


def _key(store: EventStore) -> str:
    return str(Path(store.path).resolve())


def _graph(store: EventStore, state: dict[str, str], rules: IdentityRules) -> IdentityGraph:
    cached = _GRAPHS.get(_key(store))
    if cached is not None and cached[0] == state.get("version"):
        return cached[1]
    graph = tables.load(store.connection, rules)
    _GRAPHS[_key(store)] = (state.get("version", ""), graph)
    return graph


def _has_identity(store: EventStore) -> bool:
    return tables.has_state(store.connection)


def _report(
    graph: IdentityGraph, path: str, events: int, started: float, timings: dict[str, float]
) -> ResolveReport:
    names = graph.types
    refused: dict[str, int] = {}
    merges = 0
    for decision in graph.att_decision:
        if decision == MERGE:
            merges += 1
        elif decision != 1:
            name = _decision(decision, names)
            refused[name] = refused.get(name, 0) + 1
    return ResolveReport(
        path=path,
        events=events,
        identifiers=graph.node_count,
        profiles=graph.node_count - len(graph.shared) - merges,
        shared=len(graph.shared),
        blocked=sum(len(b) for b in graph.blocked),
        merges=merges,
        refused=dict(sorted(refused.items())),
        seconds=round(time.perf_counter() - started, 3),
        timings=timings,
    )


def _decision(code: int, names: tuple[str, ...]) -> str:
    from features.identity.graph import decision_name

    return decision_name(code, names)


def _rebuild_log(connection, graph: IdentityGraph) -> list[LogEntry]:
    """Log entries for what a rebuild changed relative to the stored profiles."""
    old_links = tables.current_links(connection)
    entries = graph.log_entries(skip=old_links)
    old = tables.current_profiles(connection)
    new_profiles = graph.profile_ids()
    pieces: dict[str, set[str | None]] = {}
    index = graph.node
    for profile, kind, value in old:
        node = index(kind, value)
        pieces.setdefault(profile, set()).add(new_profiles[node] if node is not None else None)
    for profile, new in sorted(pieces.items()):
        if len(new) > 1:
            kept = sorted(p for p in new if p is not None)
            entries.append(
                LogEntry(
                    "split",
                    None,
                    None,
                    profile,
                    ",".join(kept),
                    None,
                    None,
                    "rebuild",
                    f"rebuild split the profile; pieces: {', '.join(kept)}",
                )
            )
    return entries


def _resolve_nodes(store: EventStore, graph: IdentityGraph, texts: list[str]) -> list[int]:
    nodes = []
    for text in texts:
        matches = find_identifier(store, text)
        if not matches:
            raise IdentityError(f"no identifier {text!r} in the identity graph; nothing to unmerge")
        if len(matches) > 1:
            options = ", ".join(f"{m['identifier_type']}:{m['identifier']}" for m in matches)
            raise IdentityError(f"{text!r} is ambiguous; say which: {options}")
        if "blocked" in matches[0]:
            raise IdentityError(
                f"{text!r} is blocked ({matches[0]['blocked']}): it never links; nothing to unmerge"
            )
        node = graph.node(matches[0]["identifier_type"], matches[0]["identifier"])
        if node is None:
            raise IdentityError(f"no identifier {text!r} in the identity graph; nothing to unmerge")
        nodes.append(node)
    return nodes


def _label(graph: IdentityGraph, node: int) -> str:
    kind, value = graph.identifier(node)
    return f"{kind}:{value}"


def _tree_path(links: list[dict[str, Any]], start: int, end: int) -> list[dict[str, Any]]:
    """The merge links on the way from ``start`` to ``end`` (the links form a tree)."""
    neighbours: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for link in links:
        neighbours.setdefault(link["node_a"], []).append((link["node_b"], link))
        neighbours.setdefault(link["node_b"], []).append((link["node_a"], link))
    came_from: dict[int, tuple[int, dict[str, Any]] | None] = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if node == end:
            break
        for other, link in neighbours.get(node, []):
            if other not in came_from:
                came_from[other] = (node, link)
                queue.append(other)
    if end not in came_from:
        return []
    path = []
    node = end
    while came_from[node] is not None:
        previous, link = came_from[node]
        path.append(link)
        node = previous
    return path[::-1]


def _link_row(attempt: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": attempt["timestamp"],
        "message_id": attempt["message_id"],
        "message_type": attempt["message_type"],
        "identifier_a": f"{attempt['type_a']}:{attempt['identifier_a']}",
        "identifier_b": f"{attempt['type_b']}:{attempt['identifier_b']}",
        "decision": attempt["decision"],
    }
