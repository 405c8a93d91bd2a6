"""Batch segment membership of every profile at a cutoff, compiled to DuckDB SQL.

Input: a DuckDB connection and the name of a relation of *profile events* (``profile_id`` plus
the canonical event columns, see ``PROFILE_EVENT_COLUMNS``), optionally a relation of model
scores (``profile_id`` plus ``SCORE_COLUMNS``). Only events with timestamp <= ``at`` are read.

Two compilations of the same ``ir`` expressions:

- *membership at the cutoff*: one aggregate pass over the events (a filtered count or sum per
  test; "is there one in the window" tests share one max / min timestamp per filter; sequences
  are two aggregates, or an ASOF join when the follow-up has a time limit), then each segment's
  boolean expression;
- *timelines* (``entered_at``): each test becomes the list of instants at which it flips; the
  flips of all tests are sorted once per profile and a running sum carries every test's value
  as the bits of one integer, so each segment's expression can be read at every instant and
  ``entered_at`` is the exact start of the current membership, the same instant the
  incremental evaluator reports. Expressions are first rewritten into equivalent ones with
  fewer flips, and each test's flips are built only for members of the segments that use it.
  (``membership_history`` keeps the per-node sweep: every flip of every node.)

Events are read through small integer codes of the event names the library mentions, sorted by
code when timelines are wanted, so the many reads by event name skip other events' rows.
Top-percent thresholds are computed over the population at the cutoff (``score_thresholds``);
the incremental evaluator takes the same numbers. All SQL of the segment layer lives here.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

import duckdb
import pyarrow as pa

from serving.segments import ir
from serving.segments.library import SegmentLibrary

logger = logging.getLogger(__name__)

PROFILE_EVENT_COLUMNS = (
    "profile_id",
    "message_id",
    "type",
    "event",
    "channel",
    "timestamp",
    "user_id",
    "anonymous_id",
    "email",
    "phone",
    "device_id",
    "order_id",
    "product_id",
    "category",
    "revenue",
    "currency",
    "send_id",
    "campaign_id",
    "properties",
)
SCORE_COLUMNS = (
    "p_convert",
    "p_engage_email",
    "p_engage_sms",
    "p_engage_push",
    "best_hour_of_week",
)
MEMBERSHIP_SCHEMA = pa.schema(
    [("profile_id", pa.string()), ("segment", pa.string()), ("entered_at", pa.timestamp("us"))]
)
_NEG = -(1 << 62)  # "before any event": the initial flip of a constant test
_NEVER = ir.NEVER


def profile_events_at(connection: duckdb.DuckDBPyConnection, at: datetime) -> str:
    """The relation of profile events at ``at``: ``profile_id`` plus the event columns, events
    at or before ``at``.

    Profiles are the pipeline's, from ``features.profile_source.default_profile_source``:
    identity resolution's profiles as of ``at`` (formed only from links made at or before it,
    so a later login never reaches back into a past membership) when the workspace has an
    identity graph, else each event's first identifier (user_id, email, phone, anonymous_id,
    device_id). Features, training and scoring read the same profiles, so score files and
    memberships name the same profile ids.
    """
    from features.profile_source import default_profile_source

    relation = default_profile_source(connection).events_as_of(connection, at)
    # IdentifierProfiles leaves the cutoff to its reader; the batch reads only up to `at`
    # anyway, this makes the relation mean the same from both sources.
    return f"(SELECT * FROM {relation} WHERE timestamp <= {_timestamp_literal(at)})"


# Event columns holding each identifier type (an alias's previous id is an anonymous id).
IDENTIFIER_COLUMNS = {
    "user_id": ("user_id",),
    "email": ("email",),
    "phone": ("phone",),
    "device_id": ("device_id",),
    "anonymous_id": ("anonymous_id", "previous_id"),
}


@dataclass(frozen=True)
class FoundProfile:
    profile_id: str
    how: str  # how the query led to it, in words ("" when the query was the profile id)


def find_profile(
    connection: duckdb.DuckDBPyConnection, profile_events: str, query: str, at: datetime
) -> FoundProfile:
    """The profile ``query`` names at ``at``: a profile id of ``profile_events``, an identifier
    (``email:ann@x.org``, ``user_id:u1`` or a bare value) carried by its events, or a profile
    id of today's identity graph whose identifiers formed a different profile at ``at``.

    Raises ValueError when nothing matches, or when the identifier belongs to several profiles
    at ``at`` (a shared identifier, or identifiers not yet linked then); the message lists them.
    """
    from features.identity import parse_identifier

    text = query.strip()
    have = check_columns(connection, profile_events, ("profile_id", "timestamp"), "profile events")
    visible = f"timestamp <= {_timestamp_literal(at)}"
    exists = connection.sql(
        f"SELECT 1 FROM {profile_events} WHERE profile_id = $q AND {visible} LIMIT 1",
        params={"q": text},
    ).fetchall()
    if exists:
        return FoundProfile(text, "")
    kind, value = parse_identifier(text)
    conditions = []
    for identifier_type, columns in IDENTIFIER_COLUMNS.items():
        if kind is not None and identifier_type != kind:
            continue
        wanted = value.lower() if identifier_type == "email" else value  # stored lower-cased
        conditions.extend(f"{_ident(c)} = {_literal(wanted)}" for c in columns if c in have)
    how = f"identifier {text}"
    found = _profiles_where(connection, profile_events, visible, conditions)
    if not found and _has_table(connection, "identity_identifiers"):
        # A profile id of today's graph: the profiles its identifiers formed at `at`.
        conditions = [
            f"{_ident(c)} IN (SELECT identifier FROM identity_identifiers WHERE profile_id = "
            f"{_literal(text)} AND identifier_type = {_literal(identifier_type)})"
            for identifier_type, columns in IDENTIFIER_COLUMNS.items()
            for c in columns
            if c in have
        ]
        found = _profiles_where(connection, profile_events, visible, conditions)
        how = f"today's profile {text}"
    if not found:
        raise ValueError(
            f"no profile or identifier {text!r} with events at or before {at.isoformat()} "
            "(give a profile id from `kairos segments --out`, or an identifier such as "
            "email:ann@example.com or user_id:42)"
        )
    if len(found) > 1:
        listed = ", ".join(f"{p} ({n} events)" for p, n in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise ValueError(
            f"{how} belongs to {len(found)} profiles at {at.isoformat()}: {listed}{more}; "
            "give one of these profile ids"
        )
    return FoundProfile(found[0][0], f"{how} is profile {found[0][0]} at {at.isoformat()}")


def _profiles_where(
    connection: duckdb.DuckDBPyConnection, profile_events: str, visible: str, conditions: list
) -> list[tuple[str, int]]:
    if not conditions:
        return []
    return connection.sql(
        f"SELECT profile_id, count(*) AS n FROM {profile_events} WHERE {visible} "
        f"AND ({' OR '.join(conditions)}) GROUP BY profile_id ORDER BY n DESC, profile_id"
    ).fetchall()


def _has_table(connection: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        connection.sql(
            "SELECT 1 FROM duckdb_tables() WHERE table_name = $name "
            "AND database_name = current_database() LIMIT 1",
            params={"name": name},
        ).fetchall()
    )


def check_columns(
    connection: duckdb.DuckDBPyConnection, relation: str, needed: tuple[str, ...], what: str
) -> list[str]:
    """Raise ValueError naming every missing column of ``relation``; return its columns."""
    try:
        have = connection.sql(f"SELECT * FROM {relation} LIMIT 0").columns
    except duckdb.Error as error:
        raise ValueError(f"{what} relation {relation!r} cannot be read: {error}") from None
    missing = [column for column in needed if column not in have]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        raise ValueError(
            f"{what} {relation!r}: column{'s' if len(missing) > 1 else ''} {names} missing; "
            f"have: {', '.join(have)}"
        )
    return list(have)


@dataclass
class BatchResult:
    """Memberships at a cutoff, with what a size report needs."""

    at: datetime
    memberships: pa.Table  # profile_id, segment, entered_at (sorted by segment, profile_id)
    profiles: int  # profiles with at least one event at or before the cutoff
    sizes: dict[str, int]  # members per segment, every segment of the library
    thresholds: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_batch(
    connection: duckdb.DuckDBPyConnection,
    profile_events: str,
    library: SegmentLibrary,
    at: datetime,
    *,
    scores: str | None = None,
    entered_at: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> BatchResult:
    """Every profile's segments at ``at``: rows (profile_id, segment, entered_at).

    ``entered_at=False`` skips the timelines (membership only, about twice as fast) and leaves
    entered_at null. Raises ValueError when a relation lacks a column the library needs, or when
    the library uses scores and ``scores`` is None.
    """
    started = time.perf_counter()
    run = _Run(
        connection, profile_events, library, at, scores, on_step or (lambda _: None), entered_at
    )
    try:
        run.prepare()
        run.step("tests at the cutoff")
        run.build_tests_table()
        run.step("top-percent thresholds")
        run.compute_thresholds()
        run.step("memberships")
        members = run.aggregate_memberships()
        if entered_at:
            run.build_members_table()
            table = run.timeline_memberships()
            if table.num_rows != members.num_rows:  # pragma: no cover - a bug, loudly
                raise RuntimeError(
                    f"segment evaluators disagree at {at}: {members.num_rows} memberships at the "
                    f"cutoff, {table.num_rows} from timelines; please report this"
                )
        else:
            table = members
        profiles = connection.sql(f"SELECT count(*) FROM {run.tests_table}").fetchall()[0][0]
    finally:
        run.cleanup()
    counts = dict.fromkeys(library.segments, 0)
    if table.num_rows:
        for row in table.group_by("segment").aggregate([("profile_id", "count")]).to_pylist():
            counts[row["segment"]] = row["profile_id_count"]
    return BatchResult(
        at=at,
        memberships=table,
        profiles=profiles,
        sizes=counts,
        thresholds=run.thresholds,
        seconds=time.perf_counter() - started,
    )


def score_thresholds(
    connection: duckdb.DuckDBPyConnection,
    profile_events: str,
    library: SegmentLibrary,
    at: datetime,
    scores: str,
) -> dict[str, float | None]:
    """Top-percent thresholds at ``at`` (key -> the lowest score still in the top k percent of
    its population, None when nobody in the population has a score), for ``SegmentEngine``."""
    run = _Run(connection, profile_events, library, at, scores, lambda _: None, False)
    try:
        run.prepare()
        if not library.top_tests():
            return {}
        run.build_tests_table()
        run.compute_thresholds()
        return run.thresholds
    finally:
        run.cleanup()


def membership_history(
    connection: duckdb.DuckDBPyConnection,
    profile_events: str,
    library: SegmentLibrary,
    until: datetime,
    *,
    scores: str | None = None,
) -> pa.Table:
    """Every membership change up to ``until``: rows (profile_id, segment, at, member), in
    order, one per change (a profile's first event is when it can first enter anything).

    The same log the incremental evaluator reports as it streams the events and lets time pass
    (``MembershipChange``), with top-percent thresholds fixed at their value at ``until``.
    """
    run = _Run(connection, profile_events, library, until, scores, lambda _: None)
    try:
        run.prepare()
        run.build_tests_table()
        run.compute_thresholds()
        flips = run.timeline_history().to_pylist()
    finally:
        run.cleanup()
    rows: list[tuple] = []
    previous_key, previous_at, member_before, member_now = None, None, False, False
    for flip in flips:  # sorted by profile, segment, instant: the initial state, then flips
        key = (flip["profile_id"], flip["segment"])
        if key != previous_key or flip["changed_at"] != previous_at:
            if previous_key is not None and member_now != member_before:
                rows.append((*previous_key, previous_at, member_now))
            if key != previous_key:
                member_now = False  # before its first event a profile is in nothing
            member_before = member_now
            previous_key, previous_at = key, flip["changed_at"]
        member_now = flip["member"]  # the last word at an instant is its state
    if previous_key is not None and member_now != member_before:
        rows.append((*previous_key, previous_at, member_now))
    return pa.table(
        {
            "profile_id": pa.array([r[0] for r in rows], pa.string()),
            "segment": pa.array([r[1] for r in rows], pa.string()),
            "at": pa.array([r[2] for r in rows], pa.timestamp("us")),
            "member": pa.array([r[3] for r in rows], pa.bool_()),
        }
    )


def profile_events_of(
    connection: duckdb.DuckDBPyConnection, profile_events: str, profile_id: str, at: datetime
) -> list[dict[str, Any]]:
    """One profile's events at or before ``at``, in time order (for explain and replays)."""
    have = check_columns(
        connection, profile_events, ("profile_id", "event", "timestamp"), "profile events"
    )
    columns = [c for c in PROFILE_EVENT_COLUMNS if c in have]
    order = ", message_id" if "message_id" in have else ""
    relation = connection.sql(
        f"SELECT {', '.join(_ident(c) for c in columns)} FROM {profile_events} "
        f"WHERE profile_id = $profile AND timestamp <= $at ORDER BY timestamp{order}",
        params={"profile": profile_id, "at": at},
    )
    return relation.to_arrow_table().to_pylist()


def scores_of(
    connection: duckdb.DuckDBPyConnection, scores: str | None, profile_id: str
) -> dict[str, Any] | None:
    """One profile's scores (None when there is no scores relation or no row for it)."""
    if scores is None:
        return None
    rows = (
        connection.sql(
            f"SELECT * FROM {scores} WHERE profile_id = $profile LIMIT 1",
            params={"profile": profile_id},
        )
        .to_arrow_table()
        .to_pylist()
    )
    return rows[0] if rows else None


# --- SQL of event filters ----------------------------------------------------------------------


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(float(value))
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _typed(field_name: str, expected: Any) -> str:
    """SQL for the field's value as the type of ``expected`` (NULL when it is not that type)."""
    if field_name.startswith("properties."):
        path = "'$." + ".".join(f'"{k}"' for k in field_name.split(".")[1:]) + "'"
        kind = f"json_type(properties, {path})"
        if isinstance(expected, bool):
            return (
                f"(CASE WHEN {kind} = 'BOOLEAN' "
                f"THEN TRY_CAST(json_extract_string(properties, {path}) AS BOOLEAN) END)"
            )
        if isinstance(expected, str):
            return (
                f"(CASE WHEN {kind} = 'VARCHAR' THEN json_extract_string(properties, {path}) END)"
            )
        return (
            f"(CASE WHEN {kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT') "
            f"THEN TRY_CAST(json_extract(properties, {path}) AS DOUBLE) END)"
        )
    if field_name == "revenue":
        if isinstance(expected, bool | str):
            return "NULL"
        return "(CASE WHEN isnan(revenue) THEN NULL ELSE revenue END)"
    if isinstance(expected, str):
        return _ident(field_name)
    return "NULL"  # a text column never equals a number or a boolean


def _present(field_name: str) -> str:
    if field_name.startswith("properties."):
        path = "'$." + ".".join(f'"{k}"' for k in field_name.split(".")[1:]) + "'"
        return f"(coalesce(json_type(properties, {path}), 'NULL') <> 'NULL')"
    if field_name == "revenue":
        return "(revenue IS NOT NULL AND NOT isnan(revenue))"
    return f"({_ident(field_name)} IS NOT NULL)"


def _predicate_sql(predicate: ir.Predicate) -> str:
    op, value, name = predicate.op, predicate.value, predicate.field
    if op == "exists":
        return _present(name) if value else f"(NOT {_present(name)})"
    if op in ("eq", "ne", "in", "not_in"):
        options = value if isinstance(value, tuple) else (value,)
        tests = [f"coalesce({_typed(name, v)} = {_literal(v)}, false)" for v in options]
        matched = "(" + " OR ".join(tests) + ")"
        return matched if op in ("eq", "in") else f"(NOT {matched})"
    symbol = {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}[op]
    return f"coalesce({_typed(name, value)} {symbol} {_literal(value)}, false)"


def filter_sql(event_filter: ir.EventFilter, codes: dict[str, int] | None = None) -> str:
    """SQL boolean for an event filter over a relation with the event columns; with ``codes``
    (event name -> small integer, every name the filter mentions), over ``event_code``."""

    def names(values: frozenset[str]) -> str:
        if codes is None:
            return f"event IN ({', '.join(_literal(e) for e in sorted(values))})"
        return f"event_code IN ({', '.join(str(codes[e]) for e in sorted(values))})"

    parts = []
    if event_filter.events is not None:
        parts.append(names(event_filter.events))
    if event_filter.exclude:
        parts.append(f"NOT {names(event_filter.exclude)}")
    parts.extend(_predicate_sql(p) for p in event_filter.predicates)
    return " AND ".join(parts) if parts else "true"


def _filters(test: ir.Test) -> list[ir.EventFilter]:
    if isinstance(test, ir.Tally):
        return [test.filter]
    if isinstance(test, ir.Sequence):
        return [test.first, test.then]
    return []


# --- One evaluation ----------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        profile_events: str,
        library: SegmentLibrary,
        at: datetime,
        scores: str | None,
        on_step: Callable[[str], None],
        timelines: bool = True,
    ):
        self.connection = connection
        self.timelines = timelines  # sort the events by name for the timelines' many reads
        self.source = profile_events
        self.library = library
        self.at = at
        self.at_us = ir.to_us(at)
        self.scores_relation = scores
        self.step = on_step
        self.prefix = f"__kairos_segments_{uuid.uuid4().hex[:8]}"
        self.created: list[tuple[str, str]] = []  # (kind, name) to drop
        self.tests = library.tests()
        self.test_index = {test: i for i, test in enumerate(self.tests)}
        self.thresholds: dict[str, float | None] = {}
        self.events = f"{self.prefix}_events"
        self.profiles = f"{self.prefix}_profiles"
        self.scores = f"{self.prefix}_scores"
        self.tests_table = f"{self.prefix}_tests"
        self.members = f"{self.prefix}_members"
        self.keys = f"{self.prefix}_keys"  # profile_id text -> the integer key used inside
        self.node_tables: dict[ir.Node, tuple[str, bool]] = {}  # node -> (flips relation, v0)
        # Timelines only for members (entered_at): node -> bit mask of the segments using it.
        self.restrict: dict[ir.Node, int] | None = None
        self.island_bases: dict[tuple[str, int, bool], str] = {}  # (filter, mask, ever) -> CTE
        self.base_masks: dict[str, int] = {}  # island base CTE -> the segments it serves
        # Event names the library mentions -> small integers (0: any other name): the events
        # table is read by event name many times, and integers sorted together let each read
        # skip the row groups of other events.
        names: set[str] = set()
        for test in self.tests:
            for event_filter in _filters(test):
                names |= (event_filter.events or frozenset()) | event_filter.exclude
        self.codes = {name: code for code, name in enumerate(sorted(names), start=1)}
        self.counter = itertools.count()
        self.ctes: list[tuple[str, str]] = []  # timeline nodes in dependency order
        self.uses: dict[str, int] = {}  # how many readers each node's CTE has

    def sql(self, text: str) -> None:
        self.connection.execute(text)

    def _filter(self, event_filter: ir.EventFilter) -> str:
        return filter_sql(event_filter, self.codes)

    def create(self, kind: str, name: str, body: str) -> None:
        self.sql(f"CREATE OR REPLACE TEMP {kind} {name} AS {body}")
        self.created.append((kind, name))

    def cleanup(self) -> None:
        for kind, name in reversed(self.created):
            try:
                self.sql(f"DROP {kind} IF EXISTS {name}")
            except duckdb.Error:  # pragma: no cover - best effort
                logger.debug("could not drop %s", name)

    # --- Inputs ----------------------------------------------------------------------------

    def prepare(self) -> None:
        score_tests = [t for t in self.tests if isinstance(t, ir.ScoreTest)]
        if score_tests and self.scores_relation is None:
            raise ValueError(
                "the segment library uses model scores but no scores were given; load it with "
                "scores_available=False to use the fallback rules"
            )
        needed = {"profile_id", "event", "timestamp"}
        revenue = False
        for test in self.tests:
            if isinstance(test, ir.Tally) and test.measure == "revenue":
                revenue = True
            for event_filter in _filters(test):
                for predicate in event_filter.predicates:
                    needed.add(
                        "properties"
                        if predicate.field.startswith("properties.")
                        else predicate.field
                    )
        if revenue:
            needed.add("revenue")
        check_columns(
            self.connection,
            self.source,
            tuple(c for c in PROFILE_EVENT_COLUMNS if c in needed),
            "profile events",
        )
        event_predicates = any(
            predicate.field == "event"
            for test in self.tests
            for event_filter in _filters(test)
            for predicate in event_filter.predicates
        )
        columns = sorted(
            needed - {"profile_id", "timestamp"} - (set() if event_predicates else {"event"})
        )
        extra = "".join(f", {_ident(c)}" for c in columns)
        amount = (
            ", CASE WHEN revenue IS NULL OR isnan(revenue) THEN 0 "
            "ELSE floor(revenue * 10000 + 0.5)::BIGINT END AS amount"
            if revenue
            else ""
        )
        self.step("reading profile events")
        # Profiles are keyed by a 64-bit hash of profile_id inside the evaluation (sorting and
        # grouping integers is much cheaper than text); a collision, however unlikely, is
        # detected and then dense keys are used instead.
        cutoff = f"timestamp <= {_timestamp_literal(self.at)} AND profile_id IS NOT NULL"
        self.create(
            "TABLE",
            self.keys,
            f"SELECT name, hash(name) AS profile_id FROM (SELECT DISTINCT profile_id AS name "
            f"FROM {self.source} WHERE {cutoff})",
        )
        collisions = self.connection.sql(
            f"SELECT count(*) - count(DISTINCT profile_id) FROM {self.keys}"
        ).fetchall()[0][0]
        if collisions:  # pragma: no cover - about 1 in 10^7 for a million profiles
            self.create(
                "TABLE",
                self.keys,
                f"SELECT name, (row_number() OVER ())::UBIGINT AS profile_id FROM {self.keys}",
            )
            key, join = "k.profile_id", f" e JOIN {self.keys} k ON e.profile_id = k.name"
        else:
            key, join = "hash(profile_id)", ""
        code_type = "UTINYINT" if len(self.codes) < 255 else "UINTEGER"
        event_code = (
            "CASE event "
            + " ".join(f"WHEN {_literal(name)} THEN {code}" for name, code in self.codes.items())
            + f" ELSE 0 END::{code_type}"
            if self.codes
            else f"0::{code_type}"
        )
        self.create(
            "TABLE",
            self.events,
            f"SELECT {key} AS profile_id, epoch_us(timestamp) AS ts, {event_code} AS event_code"
            f"{extra}{amount} FROM {self.source}{join} WHERE {cutoff}"
            + (" ORDER BY event_code" if self.timelines else ""),
        )
        if score_tests:
            used = sorted(
                {t.score for t in score_tests}
                | {t.value for t in score_tests if isinstance(t.value, str)}
            )
            check_columns(self.connection, self.scores_relation, ("profile_id", *used), "scores")
            duplicated = self.connection.sql(
                f"SELECT count(*) - count(DISTINCT profile_id) FROM {self.scores_relation}"
            ).fetchall()[0][0]
            if duplicated:
                raise ValueError(
                    f"scores {self.scores_relation!r}: {duplicated} rows repeat a profile_id; "
                    "give one row per profile"
                )
            cleaned = ", ".join(
                f"CASE WHEN isnan(s.{_ident(c)}::DOUBLE) THEN NULL ELSE s.{_ident(c)}::DOUBLE END "
                f"AS {_ident(c)}"
                for c in used
            )
            self.create(
                "TABLE",
                self.scores,
                f"SELECT k.profile_id, {cleaned} FROM {self.scores_relation} s "
                f"JOIN {self.keys} k ON s.profile_id = k.name",
            )

    # --- Membership at the cutoff ----------------------------------------------------------

    def _window_sql(self, start: int | None, end: int) -> str:
        parts = [f"ts <= {self.at_us - end}"]
        if start is not None:
            parts.append(f"ts > {self.at_us - start}")
        return " AND ".join(parts)

    def _score_sql(self, test: ir.ScoreTest, column: Callable[[str], str]) -> str:
        """SQL boolean of a score test; ``column(score name)`` is the SQL of that score."""
        value = column(test.score)
        if test.op == "in":
            hours = ", ".join(str(h) for h in sorted(test.value))
            return f"coalesce(floor({value})::BIGINT IN ({hours}), false)"
        if test.op == "top":
            threshold = self.thresholds.get(test.key)
            if threshold is None:
                return "false"
            return f"coalesce({value} >= {_literal(threshold)}, false)"
        other = column(test.value) if isinstance(test.value, str) else _literal(test.value)
        return f"coalesce({value} {test.op} {other}, false)"

    def build_tests_table(self) -> None:
        """One row per profile: first_ts, t<i> = value of test i at the cutoff, and the raw
        scores (for ranking). One aggregate pass; tests that only ask whether a matching event
        is in a window share one max / min per filter."""
        aggregates: dict[str, str] = {"min(ts)": "first_ts"}

        def agg(sql: str) -> str:
            if sql not in aggregates:
                aggregates[sql] = f"x{len(aggregates)}"
            return f"a.{aggregates[sql]}"

        values, joins = [], []
        for index, test in enumerate(self.tests):
            if isinstance(test, ir.Tally):
                values.append(self._tally_at_cutoff(test, agg))
            elif isinstance(test, ir.Sequence) and test.horizon is None:
                values.append(self._open_sequence_at_cutoff(test, agg))
            elif isinstance(test, ir.Sequence):
                name = f"{self.prefix}_seq{index}"
                self.create("TABLE", name, self._sequence_at_cutoff(test))
                joins.append(f"LEFT JOIN {name} AS q{index} USING (profile_id)")
                values.append(f"coalesce(q{index}.v, false)")
            else:
                values.append("NULL::BOOLEAN")  # scores: decided in SQL later
        aggregate = (
            "SELECT profile_id, "
            + ", ".join(f"{sql} AS {alias}" for sql, alias in aggregates.items())
            + f" FROM {self.events} GROUP BY profile_id"
        )
        score_columns = ""
        if any(isinstance(t, ir.ScoreTest) for t in self.tests):
            joins.append(f"LEFT JOIN {self.scores} AS s USING (profile_id)")
            used = self._score_columns()
            score_columns = "".join(f", s.{_ident(c)} AS {_ident('score_' + c)}" for c in used)
        columns = "".join(f", {value} AS t{i}" for i, value in enumerate(values))
        self.create(
            "TABLE",
            self.tests_table,
            f"SELECT a.profile_id, a.first_ts{columns}{score_columns} FROM ({aggregate}) AS a "
            + " ".join(joins),
        )
        self.create("VIEW", self.profiles, f"SELECT profile_id, first_ts FROM {self.tests_table}")

    def _tally_at_cutoff(self, test: ir.Tally, agg: Callable[[str], str]) -> str:
        at, f = self.at_us, self._filter(test.filter)
        if test.measure == "count" and (test.op, test.threshold) in ((">=", 1), ("<=", 0)):
            if test.start is None and test.end == 0:
                present = f"({agg(f'max(CASE WHEN {f} THEN ts END)')} IS NOT NULL)"
            elif test.start is None:
                present = (
                    f"coalesce({agg(f'min(CASE WHEN {f} THEN ts END)')} <= {at - test.end}, false)"
                )
            else:
                last = (
                    f"max(CASE WHEN {f} THEN ts END)"
                    if test.end == 0
                    else f"max(CASE WHEN {f} AND ts <= {at - test.end} THEN ts END)"
                )
                present = f"coalesce({agg(last)} > {at - test.start}, false)"
            return present if test.op == ">=" else f"(NOT {present})"
        condition = f"{f} AND {self._window_sql(test.start, test.end)}"
        if test.measure == "count":
            total = agg(f"count(CASE WHEN {condition} THEN 1 END)")
        else:
            total = f"coalesce({agg(f'sum(CASE WHEN {condition} THEN amount END)')}, 0)"
        return f"({total} {test.op} {test.threshold})"

    def _open_sequence_at_cutoff(self, test: ir.Sequence, agg: Callable[[str], str]) -> str:
        """A sequence whose follow-up is looked for any time after the first event, from two
        aggregates: with then_not, the latest A old enough to count has no B after it; with
        then, some B follows the earliest A still in its window."""
        at, first, then = self.at_us, self._filter(test.first), self._filter(test.then)
        lower = f" AND ts > {at - test.within}" if test.within is not None else ""
        last_b = agg(f"max(CASE WHEN {then} THEN ts END)")
        if test.negated:
            a = agg(f"max(CASE WHEN {first}{lower} AND ts <= {at - test.wait} THEN ts END)")
            return f"({a} IS NOT NULL AND ({last_b} IS NULL OR {last_b} <= {a}))"
        a = agg(f"min(CASE WHEN {first}{lower} THEN ts END)")
        return f"coalesce({last_b} > {a}, false)"

    def _score_columns(self) -> list[str]:
        tests = [t for t in self.tests if isinstance(t, ir.ScoreTest)]
        return sorted(
            {t.score for t in tests} | {t.value for t in tests if isinstance(t.value, str)}
        )

    def _sequence_pairs(self, test: ir.Sequence, first_window: bool, only: str = "") -> str:
        """(profile_id, a, b): each first event and the first follow-up after it."""
        window = only
        if first_window and test.within is not None:
            window += f" AND ts > {self.at_us - test.within}"
        return (
            f"SELECT a.profile_id, a.ts AS a, b.ts AS b FROM (SELECT profile_id, ts "
            f"FROM {self.events} WHERE {self._filter(test.first)}{window}) a "
            f"ASOF LEFT JOIN (SELECT profile_id, ts FROM {self.events} "
            f"WHERE {self._filter(test.then)}{only}) b "
            "ON a.profile_id = b.profile_id AND a.ts < b.ts"
        )

    def _followed(self, test: ir.Sequence) -> str:
        if test.horizon is None:
            return "(b IS NOT NULL)"
        return f"(b IS NOT NULL AND b <= a + {test.horizon})"

    def _sequence_at_cutoff(self, test: ir.Sequence) -> str:
        if test.negated:
            qualifies = f"{self.at_us} >= a + {test.wait} AND NOT {self._followed(test)}"
        else:
            qualifies = self._followed(test)
        return (
            f"SELECT profile_id, bool_or({qualifies}) AS v "
            f"FROM ({self._sequence_pairs(test, True)}) "
            "GROUP BY profile_id"
        )

    def expression_sql(self, node: ir.Node) -> str:
        """SQL boolean of an expression over the tests table (references inlined)."""
        if isinstance(node, ir.Leaf):
            if isinstance(node.test, ir.ScoreTest):
                return self._score_sql(node.test, lambda name: _ident("score_" + name))
            return f"t{self.test_index[node.test]}"
        if isinstance(node, ir.All):
            return "(" + " AND ".join(self.expression_sql(c) for c in node.children) + ")"
        if isinstance(node, ir.Any_):
            return "(" + " OR ".join(self.expression_sql(c) for c in node.children) + ")"
        if isinstance(node, ir.Not):
            return f"(NOT {self.expression_sql(node.child)})"
        if isinstance(node, ir.Ref):
            return self.expression_sql(node.child)
        return "true" if node.value else "false"

    def compute_thresholds(self) -> None:
        for test in self.library.top_tests():
            score = _ident("score_" + test.score)
            population = (
                self.expression_sql(test.population) if test.population is not None else "true"
            )
            where = f"({population}) AND {score} IS NOT NULL"
            count = self.connection.sql(
                f"SELECT count(*) FROM {self.tests_table} WHERE {where}"
            ).fetchall()[0][0]
            if count == 0:
                self.thresholds[test.key] = None
                continue
            keep = math.ceil(Fraction(count) * Fraction(str(test.value)) / 100)
            self.thresholds[test.key] = self.connection.sql(
                f"SELECT {score} FROM {self.tests_table} WHERE {where} "
                f"ORDER BY {score} DESC LIMIT 1 OFFSET {keep - 1}"
            ).fetchall()[0][0]

    def aggregate_memberships(self) -> pa.Table:
        parts = [
            f"SELECT profile_id, {_literal(name)} AS segment, NULL::TIMESTAMP AS entered_at "
            f"FROM {self.tests_table} WHERE {self.expression_sql(segment.expression)}"
            for name, segment in self.library.segments.items()
        ]
        return self._collect(parts)

    def _collect(self, parts: list[str]) -> pa.Table:
        if not parts:
            return MEMBERSHIP_SCHEMA.empty_table()
        table = self.connection.sql(
            f"SELECT k.name AS profile_id, x.segment, x.entered_at FROM "
            f"({' UNION ALL '.join(f'({p})' for p in parts)}) x JOIN {self.keys} k "
            "USING (profile_id) ORDER BY x.segment, k.name"
        ).to_arrow_table()
        return table.cast(MEMBERSHIP_SCHEMA)

    # --- Timelines -------------------------------------------------------------------------
    # A timeline is a relation (profile_id, t, v) of the instants a boolean flips, plus v0, its
    # value before any flip; consecutive flips alternate and the first differs from v0.

    def build_members_table(self) -> None:
        """(profile_id, mask): bit k set when the profile is in segment k at the cutoff; the
        timelines then cover, for each node, only members of the segments that use it."""
        names = list(self.library.segments)
        if len(names) > 62:  # one BIGINT of bits; bigger libraries compute every timeline
            return
        bits = " | ".join(
            f"(CASE WHEN {self.expression_sql(self.library.segments[name].expression)} "
            f"THEN {1 << k} ELSE 0 END)"
            for k, name in enumerate(names)
        )
        self.create(
            "TABLE",
            self.members,
            f"SELECT profile_id, mask FROM (SELECT profile_id, ({bits})::BIGINT AS mask "
            f"FROM {self.tests_table}) WHERE mask <> 0",
        )
        self.restrict = {}
        for k, name in enumerate(names):
            for node in ir.walk(self.library.segments[name].expression):
                key = ir.strip_refs(node)
                self.restrict[key] = self.restrict.get(key, 0) | (1 << k)
        self.bits = {name: 1 << k for k, name in enumerate(names)}

    def _only(self, node: ir.Node) -> str:
        """SQL condition keeping the profiles a node's timeline is needed for."""
        if self.restrict is None:
            return ""
        return self._members_with(self.restrict[ir.strip_refs(node)])

    def _members_with(self, mask: int) -> str:
        return (
            f" AND profile_id IN (SELECT profile_id FROM {self.members} WHERE mask & {mask} <> 0)"
        )

    def timeline_memberships(self) -> pa.Table:
        """Every member's entered_at in one ordered pass.

        Each test (leaf) has its own timeline of flips (``_leaf_timeline``); all leaves' flips
        are merged and sorted once per profile, and a running sum of signed powers of two
        carries the value of every leaf at each instant as the bits of one integer (leaf
        flips alternate, so +2^k on becoming true and -2^k on becoming false). Each segment's
        expression is then a bit test on that state, and its membership started at the
        instant after the last one at which it was false. One sort replaces a sweep per
        ``all`` / ``any`` node; leaf timelines are still built only for members of the
        segments that use them."""
        self.step("timelines")
        names = list(self.library.segments)
        expressions = {name: _fewer_flips(self.library.segments[name].expression) for name in names}
        leaves: dict[ir.Test, int] = {}
        ordered: list[ir.Leaf] = []

        def collect(node: ir.Node, bit: int) -> None:
            if isinstance(node, ir.Leaf):
                if node.test not in leaves:
                    leaves[node.test] = len(ordered)
                    ordered.append(node)
                if self.restrict is not None:  # rewritten leaves: the segments using them now
                    key = ir.Leaf(node.test)
                    self.restrict[key] = self.restrict.get(key, 0) | bit
            elif isinstance(node, ir.All | ir.Any_):
                for child in node.children:
                    collect(child, bit)
            elif isinstance(node, ir.Not):
                collect(node.child, bit)

        for k, name in enumerate(names):
            collect(expressions[name], 1 << k)
        initial = [self.timeline(leaf) for leaf in ordered]  # (flips CTE, v0) per leaf
        width = 62  # leaves per BIGINT state
        chunks = max(1, math.ceil(len(ordered) / width))

        def value_sql(node: ir.Node, state: str = "s") -> str:
            """The node's value at an instant, from the state bits in columns state<chunk>."""
            if isinstance(node, ir.Leaf):
                chunk, bit = divmod(leaves[node.test], width)
                return f"(({state}{chunk} >> {bit}) & 1 = 1)"
            if isinstance(node, ir.All | ir.Any_):
                joiner = " AND " if isinstance(node, ir.All) else " OR "
                return "(" + joiner.join(value_sql(c, state) for c in node.children) + ")"
            if isinstance(node, ir.Not):
                return f"(NOT {value_sql(node.child, state)})"
            return "true" if node.value else "false"

        def value_before_flips(node: ir.Node) -> bool:
            if isinstance(node, ir.Leaf):
                return initial[leaves[node.test]][1]
            if isinstance(node, ir.All):
                return all(value_before_flips(c) for c in node.children)
            if isinstance(node, ir.Any_):
                return any(value_before_flips(c) for c in node.children)
            if isinstance(node, ir.Not):
                return not value_before_flips(node.child)
            return bool(node.value)

        flips = []
        for index, (name, _) in enumerate(initial):
            self._use(name)
            chunk, bit = divmod(index, width)
            deltas = ", ".join(
                f"(CASE WHEN v THEN {1 << bit} ELSE {-(1 << bit)} END)::BIGINT AS d{c}"
                if c == chunk
                else f"0::BIGINT AS d{c}"
                for c in range(chunks)
            )
            flips.append(f"SELECT profile_id, t, {index} AS k, {deltas} FROM {name}")
        bases = [0] * chunks
        for index, (_, v0) in enumerate(initial):
            if v0:
                bases[index // width] |= 1 << (index % width)
        sums = ", ".join(f"({bases[c]} + sum(d{c}) OVER o)::BIGINT AS s{c}" for c in range(chunks))
        aggregates, parts = [], []
        for j, name in enumerate(names):
            expression = expressions[name]
            value = value_sql(expression)
            v0 = _literal(value_before_flips(expression))
            final = value_sql(expression, "e.last_s")
            aggregates.append(f"max(CASE WHEN NOT {value} THEN nt END) AS f{j}")
            members = ""
            if self.restrict is not None:
                members = (
                    f"SEMI JOIN (SELECT profile_id FROM {self.members} "
                    f"WHERE mask & {self.bits[name]} <> 0) m USING (profile_id) "
                )
            # Before any flip the segment has value v0; the last false instant's successor
            # is when the current membership began.
            start = (
                f"CASE WHEN e.f{j} IS NOT NULL THEN e.f{j} WHEN {v0} THEN p.first_ts "
                "ELSE coalesce(e.first_t, p.first_ts) END"
            )
            parts.append(
                f"SELECT p.profile_id, {_literal(name)} AS segment, "
                f"make_timestamp(greatest({start}, p.first_ts)) AS entered_at "
                f"FROM {self.profiles} p {members}LEFT JOIN __states e USING (profile_id) "
                f"WHERE CASE WHEN e.profile_id IS NULL THEN {v0} ELSE {final} END"
            )
        ctes = [
            f"{name} AS {'MATERIALIZED ' if self.uses.get(name, 0) > 1 else ''}({body})"
            for name, body in self.ctes
        ]
        union = " UNION ALL ".join(f"({f})" for f in flips) or (
            "SELECT NULL::UBIGINT AS profile_id, 0::BIGINT AS t, 0 AS k, 0::BIGINT AS d0 "
            "WHERE false"
        )
        ctes.append(
            f"__instants AS (SELECT profile_id, t, {', '.join(f's{c}' for c in range(chunks))}, nt "
            f"FROM (SELECT profile_id, t, {sums}, lead(t) OVER o AS nt FROM ({union}) "
            "WINDOW o AS (PARTITION BY profile_id ORDER BY t, k "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) "
            "WHERE nt IS NULL OR nt <> t)"  # the last flip of an instant sees all of them
        )
        ctes.append(
            "__states AS MATERIALIZED (SELECT profile_id, min(t) AS first_t, "
            + "".join(f"arg_max(s{c}, t) AS last_s{c}, " for c in range(chunks))
            + f"{', '.join(aggregates)} FROM __instants GROUP BY profile_id)"
        )
        statement = (
            "WITH " + ",\n".join(ctes) + "\nSELECT k.name AS profile_id, x.segment, x.entered_at "
            f"FROM ({' UNION ALL '.join(f'({p})' for p in parts)}) x "
            f"JOIN {self.keys} k USING (profile_id) ORDER BY x.segment, k.name"
        )
        return self.connection.sql(statement).to_arrow_table().cast(MEMBERSHIP_SCHEMA)

    def timeline_history(self) -> pa.Table:
        """Every flip of every segment up to the cutoff, plus each profile's state when it
        appears (its first event, t before any flip), as rows (profile_id, segment,
        changed_at, member, t)."""

        def all_flips(name: str, flips: str, v0: bool) -> str:
            return (
                f"SELECT p.profile_id, {_literal(name)} AS segment, "
                "make_timestamp(greatest(f.t, p.first_ts)) AS changed_at, f.v AS member, f.t AS t "
                f"FROM {flips} f JOIN {self.profiles} p USING (profile_id) "
                f"UNION ALL SELECT profile_id, {_literal(name)}, make_timestamp(first_ts), "
                f"{_literal(v0)}, {_NEG - 1} FROM {self.profiles}"
            )

        return self._timelines(all_flips, "profile_id, segment, changed_at, t")

    def _timelines(self, per_segment: Callable[[str, str, bool], str], order: str) -> pa.Table:
        parts = []
        for name, segment in self.library.segments.items():
            flips, v0 = self.timeline(segment.expression)
            self._use(flips)
            parts.append(per_segment(name, flips, v0))
        ctes = ",\n".join(
            f"{name} AS {'MATERIALIZED ' if self.uses.get(name, 0) > 1 else ''}({body})"
            for name, body in self.ctes
        )
        union = " UNION ALL ".join(f"({p})" for p in parts)
        return self.connection.sql(
            f"WITH {ctes}\nSELECT * FROM (SELECT k.name AS profile_id, x.* EXCLUDE (profile_id) "
            f"FROM ({union}) x JOIN {self.keys} k USING (profile_id)) ORDER BY {order}"
        ).to_arrow_table()

    def _use(self, cte: str) -> None:
        self.uses[cte] = self.uses.get(cte, 0) + 1

    def _cte(self, body: str) -> str:
        name = f"n{next(self.counter)}"
        self.ctes.append((name, body))
        return name

    def timeline(self, node: ir.Node) -> tuple[str, bool]:
        """The CTE name of a node's flips and its initial value (shared nodes are built once)."""
        while isinstance(node, ir.Ref):
            node = node.child
        key = ir.strip_refs(node)
        if key in self.node_tables:
            return self.node_tables[key]
        if isinstance(node, ir.Leaf):
            body, v0 = self._leaf_timeline(node)
        elif isinstance(node, ir.Not):
            child, child_v0 = self.timeline(node.child)
            self._use(child)
            body, v0 = f"SELECT profile_id, t, NOT v AS v FROM {child}", not child_v0
        elif isinstance(node, ir.All | ir.Any_):
            children = [self.timeline(c) for c in node.children]
            for child, _ in children:
                self._use(child)
            base = sum(1 for _, child_v0 in children if child_v0)
            if isinstance(node, ir.All):
                v0, condition = base == len(children), f"= {len(children)}"
            else:
                v0, condition = base >= 1, ">= 1"
            deltas = " UNION ALL ".join(
                f"SELECT profile_id, t, CASE WHEN v THEN 1 ELSE -1 END AS dx FROM {flips}"
                for flips, _ in children
            )
            body = self._sweep(deltas, f"{base} + ", condition)
        else:  # Const
            v0 = bool(node.value)
            body = "SELECT NULL::UBIGINT AS profile_id, 0::BIGINT AS t, false AS v WHERE false"
        self.node_tables[key] = (self._cte(body), v0)
        return self.node_tables[key]

    def _sweep(self, deltas: str, base: str, condition: str) -> str:
        """Flips of `base + running sum of dx` `condition`, from delta rows (profile_id, t, dx).

        One ordered pass: the value just before an instant is the running sum minus that
        instant's own dx (the first instant of a profile sees `base`, i.e. v0)."""
        return f"""
            WITH g AS (SELECT profile_id, t, sum(dx) AS dx FROM ({deltas}) GROUP BY profile_id, t),
            r AS (SELECT profile_id, t, dx, {base}sum(dx) OVER (PARTITION BY profile_id ORDER BY t
                  ROWS UNBOUNDED PRECEDING) AS k FROM g)
            SELECT profile_id, t, k {condition} AS v FROM r
            WHERE (k {condition}) <> (k - dx {condition})
        """

    def _leaf_timeline(self, leaf: ir.Leaf) -> tuple[str, bool]:
        at, test, only = self.at_us, leaf.test, self._only(leaf)
        if isinstance(test, ir.ScoreTest):
            return (
                f"SELECT profile_id, {_NEG}::BIGINT AS t, true AS v FROM {self.scores} AS s "
                f"WHERE {self._score_sql(test, lambda name: 's.' + _ident(name))}{only}",
                False,
            )
        if isinstance(test, ir.Sequence):
            if test.negated:
                hi_b = f"CASE WHEN {self._followed(test)} THEN b ELSE {_NEVER} END"
                lo = f"a + {test.wait}"
            else:
                lo = f"CASE WHEN {self._followed(test)} THEN b ELSE {_NEVER} END"
                hi_b = str(_NEVER)
            hi_a = f"a + {test.within}" if test.within is not None else str(_NEVER)
            intervals = (
                f"SELECT profile_id, {lo} AS lo, least({hi_a}, {hi_b}) AS hi "
                f"FROM ({self._sequence_pairs(test, False, only)})"
            )
            deltas = (
                f"SELECT profile_id, lo AS t, 1 AS dx FROM i WHERE lo < hi AND lo <= {at} "
                "UNION ALL SELECT profile_id, hi AS t, -1 AS dx FROM i "
                f"WHERE lo < hi AND hi <= {at}"
            )
            body = self._sweep(deltas, "", ">= 1")
            return f"WITH i AS ({intervals}), " + body.strip().removeprefix("WITH "), False
        # Tally
        v0 = test.threshold <= 0 if test.op == ">=" else test.threshold >= 0
        if test.measure == "count" and (test.op, test.threshold) in ((">=", 1), ("<=", 0)):
            return self._island_timeline(leaf, v0), v0
        amount = "amount" if test.measure == "revenue" else "1"
        matches = (
            f"SELECT profile_id, ts, {amount} AS x FROM {self.events} "
            f"WHERE {self._filter(test.filter)}{only}"
        )
        deltas = (
            f"SELECT profile_id, ts + {test.end} AS t, x AS dx FROM m WHERE ts + {test.end} <= {at}"
        )
        if test.start is not None:
            deltas += (
                f" UNION ALL SELECT profile_id, ts + {test.start} AS t, -x AS dx FROM m "
                f"WHERE ts + {test.start} <= {at}"
            )
        body = self._sweep(deltas, "", f"{test.op} {test.threshold}")
        return f"WITH m AS ({matches}), " + body.strip().removeprefix("WITH "), v0

    def _island_timeline(self, leaf: ir.Leaf, v0: bool) -> str:
        """'At least one matching event in the window' flips where islands of overlapping
        windows start and end. Tests on the same events share one ordered pass (previous and
        next matching instant per event), whatever their windows."""
        test, at, end = leaf.test, self.at_us, leaf.test.end
        present = "true" if not v0 else "false"
        absent = "false" if not v0 else "true"
        condition = self._filter(test.filter)
        if test.start is None:  # one flip, `end` after the first matching event
            first = self._island_base(condition, ever=True)
            self._use(first)
            only = ""
            if self.restrict is not None and self.restrict[ir.Leaf(test)] != self.base_masks[first]:
                only = self._only(leaf)
            return (
                f"SELECT profile_id, first + {end} AS t, {present} AS v FROM {first} "
                f"WHERE first + {end} <= {at}{only}"
            )
        base = self._island_base(condition)
        self._use(base)
        length = test.start - end
        # The base serves every windowed test on these events; keep this test's profiles only
        # (fewer rows to sort downstream).
        only = ""
        if self.restrict is not None and self.restrict[ir.Leaf(test)] != self.base_masks[base]:
            only = self._only(leaf)
        # An event entered the window by `at` if ts + end <= at; a later one is still pending.
        return f"""
            SELECT profile_id, ts + {end} AS t, {present} AS v FROM {base}
              WHERE (prev IS NULL OR ts - prev > {length}) AND ts + {end} <= {at}{only}
            UNION ALL
            SELECT profile_id, ts + {test.start} AS t, {absent} AS v FROM {base}
              WHERE (next IS NULL OR next - ts > {length} OR next + {end} > {at})
              AND ts + {test.start} <= {at}{only}
        """

    def _island_base(self, condition: str, ever: bool = False) -> str:
        """(profile_id, ts, prev, next) of the distinct instants of matching events, for every
        profile any windowed test on these events needs (built once per filter); ``ever``:
        (profile_id, first) of the first matching event, for the tests with no lower edge."""
        mask = 0
        if self.restrict is not None:
            for node, bits in self.restrict.items():
                if (
                    isinstance(node, ir.Leaf)
                    and isinstance(node.test, ir.Tally)
                    and (node.test.start is None) == ever
                    and self._filter(node.test.filter) == condition
                ):
                    mask |= bits
        key = (condition, mask, ever)
        if key not in self.island_bases:
            only = self._members_with(mask) if self.restrict is not None else ""
            if ever:
                self.island_bases[key] = self._cte(
                    f"SELECT profile_id, min(ts) AS first FROM {self.events} "
                    f"WHERE {condition}{only} GROUP BY profile_id"
                )
            else:
                self.island_bases[key] = self._cte(
                    f"SELECT profile_id, ts, lag(ts) OVER w AS prev, lead(ts) OVER w AS next "
                    f"FROM (SELECT DISTINCT profile_id, ts FROM {self.events} "
                    f"WHERE {condition}{only}) WINDOW w AS (PARTITION BY profile_id ORDER BY ts)"
                )
            self.base_masks[self.island_bases[key]] = mask
        return self.island_bases[key]


def _fewer_flips(node: ir.Node) -> ir.Node:
    """An equivalent expression (references inlined) whose leaves flip less often, for the
    timeline pass; membership at every instant is unchanged.

    - "at most 0 matching events in a window" is "not (at least 1)": one leaf for both;
    - within ``all``, "at least one matching event in (t - S, t - E]" next to "none at or
      before t - S" is "at least one at or before t - E" (a first-time rule such as "first
      email delivered in the last 30 days"): the window's many islands become one flip.
    """
    if isinstance(node, ir.Ref):
        return _fewer_flips(node.child)
    if isinstance(node, ir.Not):
        return ir.Not(_fewer_flips(node.child), node.label, node.path)
    if isinstance(node, ir.Leaf):
        test = node.test
        if (
            isinstance(test, ir.Tally)
            and test.measure == "count"
            and (test.op, test.threshold) == ("<=", 0)
        ):
            twin = ir.Tally(test.filter, test.start, test.end, "count", ">=", 1)
            return ir.Not(ir.Leaf(twin, node.label, node.path), node.label, node.path)
        return node
    if isinstance(node, ir.Any_):
        return ir.Any_(tuple(_fewer_flips(c) for c in node.children), node.label, node.path)
    if not isinstance(node, ir.All):
        return node
    children = [_fewer_flips(c) for c in node.children]
    never_before = {  # (filter, S) of children "no matching event at or before t - S"
        (c.child.test.filter, c.child.test.end)
        for c in children
        if isinstance(c, ir.Not)
        and isinstance(c.child, ir.Leaf)
        and _at_least_one(c.child.test)
        and c.child.test.start is None
    }
    rewritten = []
    for child in children:
        test = child.test if isinstance(child, ir.Leaf) else None
        if (
            test is not None
            and _at_least_one(test)
            and test.start is not None
            and (test.filter, test.start) in never_before
        ):
            ever = ir.Tally(test.filter, None, test.end, "count", ">=", 1)
            child = ir.Leaf(ever, child.label, child.path)
        rewritten.append(child)
    return ir.All(tuple(rewritten), node.label, node.path)


def _at_least_one(test: ir.Test) -> bool:
    return (
        isinstance(test, ir.Tally)
        and test.measure == "count"
        and (test.op, test.threshold) == (">=", 1)
    )


def _timestamp_literal(value: datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
