"""Identity tables in the workspace's DuckDB event store: the only module with identity SQL.

Tables (created on first use, next to ``events``):
- ``identity_identifiers``  one row per identifier: type, value, ``profile_id`` (NULL when the
                            identifier is shared), ``shared`` (NULL, detected or manual),
                            first sighting;
- ``identity_attempts``     one row per pair of identifiers ever seen in one message: the first
                            message (its time, id, type), the pair's positions in it, and the
                            ``decision`` (merge, redundant, shared_identifier, manual_split,
                            limit:<type>);
- ``identity_blocked``      values that never link (blocklisted, not an email, not E.164);
- ``identity_overrides``    manual unmerges, applied by every rebuild;
- ``merge_log``             append-only history: merges (message, time, rule), splits, unmerges;
- ``identity_issues``       messages with an identity problem (a self-alias, an unknown type);
- ``identity_state``        rules, watermarks and a version.
Views: ``identity_links`` (the merges that built today's profiles), ``identity_profiles`` (one
row per profile with its identifier counts).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from features.identity.graph import (
    MESSAGE_KINDS,
    Changes,
    IdentityGraph,
    LogEntry,
    Override,
    decision_name,
)
from features.identity.rules import IDENTIFIER_TYPES, IdentityRules, RulesError

TABLES = (
    "identity_identifiers",
    "identity_attempts",
    "identity_blocked",
    "identity_overrides",
    "merge_log",
    "identity_issues",
    "identity_state",
)

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS identity_identifiers (
    node_id BIGINT,
    identifier_type VARCHAR,
    identifier VARCHAR,
    profile_id VARCHAR,          -- NULL: shared, belongs to no one
    shared VARCHAR,              -- NULL, 'detected' or 'manual'
    first_seen TIMESTAMP,
    first_message_id VARCHAR
);
CREATE TABLE IF NOT EXISTS identity_attempts (
    attempt_id BIGINT,
    node_a BIGINT,               -- the higher-priority identifier of the pair
    node_b BIGINT,
    timestamp TIMESTAMP,         -- the first message that carried both
    message_id VARCHAR,
    position_a INTEGER,          -- positions in that message's sorted identifiers
    position_b INTEGER,
    message_type VARCHAR,
    decision VARCHAR
);
CREATE TABLE IF NOT EXISTS identity_blocked (
    identifier_type VARCHAR,
    identifier VARCHAR,
    reason VARCHAR,
    first_seen TIMESTAMP,
    first_message_id VARCHAR
);
CREATE TABLE IF NOT EXISTS identity_overrides (
    override_id BIGINT,
    kind VARCHAR,                -- identifier: make it shared; link: keep two apart
    identifier_type_a VARCHAR,
    identifier_a VARCHAR,
    identifier_type_b VARCHAR,
    identifier_b VARCHAR,
    created_at TIMESTAMP,
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS merge_log (
    seq BIGINT,
    recorded_at TIMESTAMP,
    action VARCHAR,              -- merge, split, relabel, unmerge, rebuild
    timestamp TIMESTAMP,         -- event time of the message that caused it (NULL: a person)
    message_id VARCHAR,
    profile_id VARCHAR,          -- merge: the profile that remains; split: the one split
    other_profile_ids VARCHAR,   -- merge: the profile absorbed; split: the pieces
    identifier_type_a VARCHAR,
    identifier_a VARCHAR,
    identifier_type_b VARCHAR,
    identifier_b VARCHAR,
    rule VARCHAR,                -- merge: the evidence that allowed it; split: the cause
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS identity_issues (
    message_id VARCHAR,
    timestamp TIMESTAMP,
    reason VARCHAR
);
CREATE TABLE IF NOT EXISTS identity_state (
    key VARCHAR,
    value VARCHAR
);
CREATE OR REPLACE VIEW identity_links AS
SELECT a.profile_id, t.timestamp, t.message_id, t.message_type,
       a.identifier_type AS identifier_type_a, a.identifier AS identifier_a,
       b.identifier_type AS identifier_type_b, b.identifier AS identifier_b
FROM identity_attempts t
JOIN identity_identifiers a ON a.node_id = t.node_a
JOIN identity_identifiers b ON b.node_id = t.node_b
WHERE t.decision = 'merge';
CREATE OR REPLACE VIEW identity_profiles AS
SELECT profile_id,
       count(*) AS identifiers,
       count(*) FILTER (WHERE identifier_type = 'user_id') AS user_ids,
       count(*) FILTER (WHERE identifier_type = 'email') AS emails,
       count(*) FILTER (WHERE identifier_type = 'phone') AS phones,
       count(*) FILTER (WHERE identifier_type = 'device_id') AS device_ids,
       count(*) FILTER (WHERE identifier_type = 'anonymous_id') AS anonymous_ids,
       min(first_seen) AS first_seen
FROM identity_identifiers
WHERE profile_id IS NOT NULL
GROUP BY profile_id;
"""

_TS = pa.timestamp("us")


def ensure_tables(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(_SCHEMA_SQL)


def drop_tables(connection: duckdb.DuckDBPyConnection) -> None:
    """Remove every identity table and view (the events stay)."""
    connection.execute("DROP VIEW IF EXISTS identity_links")
    connection.execute("DROP VIEW IF EXISTS identity_profiles")
    for table in TABLES:
        connection.execute(f"DROP TABLE IF EXISTS {table}")


def has_state(connection: duckdb.DuckDBPyConnection) -> bool:
    exists = connection.execute(
        # Only the connection's own database: an ATTACHed store's tables are not ours to read.
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'identity_state'"
        " AND database_name = current_database()"
    ).fetchall()[0][0]
    return bool(exists) and read_state(connection).get("version") is not None


def read_state(connection: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(connection.execute("SELECT key, value FROM identity_state").fetchall())


def write_state(connection: duckdb.DuckDBPyConnection, values: dict[str, str | None]) -> None:
    for key, value in values.items():
        connection.execute("DELETE FROM identity_state WHERE key = ?", [key])
        if value is not None:
            connection.execute("INSERT INTO identity_state VALUES (?, ?)", [key, value])


def stored_rules(connection: duckdb.DuckDBPyConnection) -> IdentityRules | None:
    """The rules the workspace was last resolved with (None before the first resolve)."""
    text = read_state(connection).get("rules")
    if not text:
        return None
    try:
        return IdentityRules.from_json(text)
    except RulesError as error:
        raise RulesError(
            f"{error}; choose rules again with `kairos identity resolve --rules FILE`"
        ) from None


def read_overrides(connection: duckdb.DuckDBPyConnection) -> list[Override]:
    rows = connection.execute(
        "SELECT kind, identifier_type_a, identifier_a, identifier_type_b, identifier_b "
        "FROM identity_overrides ORDER BY override_id"
    ).fetchall()
    return [
        Override(kind, (ta, a), (tb, b) if tb is not None else None) for kind, ta, a, tb, b in rows
    ]


def add_override(
    connection: duckdb.DuckDBPyConnection, override: Override, note: str | None
) -> int:
    next_id = connection.execute(
        "SELECT coalesce(max(override_id), 0) + 1 FROM identity_overrides"
    ).fetchall()[0][0]
    b_type, b_value = override.b if override.b is not None else (None, None)
    connection.execute(
        "INSERT INTO identity_overrides VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [next_id, override.kind, *override.a, b_type, b_value, datetime.now(), note],
    )
    return next_id


# --- graph -> tables -----------------------------------------------------------------------


def _identifiers_table(graph: IdentityGraph, nodes: list[int] | None) -> pa.Table:
    """Rows of identity_identifiers for ``nodes`` (None: all, built column-wise)."""
    types = pa.array(graph.types, pa.string())
    shared = graph.shared
    if nodes is None:
        ids = np.arange(graph.node_count, dtype=np.int64)
        profiles = graph.profile_ids()
        columns = (graph.node_rank, graph.node_value, graph.node_ts, graph.node_mid)
        shared_column = [None] * graph.node_count
        for node, why in shared.items():
            shared_column[node] = why
    else:
        ids = np.asarray(nodes, dtype=np.int64)
        profiles = [graph.profile_id(n) for n in nodes]
        columns = tuple(
            [values[n] for n in nodes]
            for values in (graph.node_rank, graph.node_value, graph.node_ts, graph.node_mid)
        )
        shared_column = [shared.get(n) for n in nodes]
    rank, value, ts, mid = columns
    return pa.table(
        {
            "node_id": pa.array(ids, pa.int64()),
            "identifier_type": types.take(pa.array(rank, pa.int32())),
            "identifier": pa.array(value, pa.string()),
            "profile_id": pa.array(profiles, pa.string()),
            "shared": pa.array(shared_column, pa.string()),
            "first_seen": pa.array(ts, pa.int64()).cast(_TS),
            "first_message_id": pa.array(mid, pa.string()),
        }
    )


def _attempts_table(graph: IdentityGraph, attempts: list[int] | None) -> pa.Table:
    """Rows of identity_attempts for ``attempts`` (None: all, built column-wise)."""
    codes = sorted(set(graph.att_decision))
    code_index = np.full(max(codes) + 2 if codes else 1, -1, dtype=np.int32)
    for k, code in enumerate(codes):
        code_index[code + 1] = k  # shifted by one: PENDING is -1
    names = pa.array([decision_name(code, graph.types) for code in codes], pa.string())
    kinds = pa.array(MESSAGE_KINDS, pa.string())
    sources = (graph.att_a, graph.att_b, graph.att_ts, graph.att_mid, graph.att_i, graph.att_j,
               graph.att_kind, graph.att_decision)  # fmt: skip
    if attempts is None:
        ids = np.arange(len(graph.att_a), dtype=np.int64)
        a, b, ts, mid, i, j, kind, decision = sources
    else:
        ids = np.asarray(attempts, dtype=np.int64)
        a, b, ts, mid, i, j, kind, decision = ([values[k] for k in attempts] for values in sources)
    decision_codes = code_index[np.asarray(decision, dtype=np.int64) + 1]
    return pa.table(
        {
            "attempt_id": pa.array(ids, pa.int64()),
            "node_a": pa.array(a, pa.int64()),
            "node_b": pa.array(b, pa.int64()),
            "timestamp": pa.array(ts, pa.int64()).cast(_TS),
            "message_id": pa.array(mid, pa.string()),
            "position_a": pa.array(i, pa.int32()),
            "position_b": pa.array(j, pa.int32()),
            "message_type": kinds.take(pa.array(kind, pa.int32())),
            "decision": names.take(pa.array(decision_codes, pa.int32())),
        }
    )


def _blocked_table(graph: IdentityGraph, keys: Iterable[tuple[int, str]]) -> pa.Table:
    rows = [(rank, value, *graph.blocked[rank][value]) for rank, value in keys]
    return pa.table(
        {
            "identifier_type": pa.array([graph.types[r[0]] for r in rows], pa.string()),
            "identifier": pa.array([r[1] for r in rows], pa.string()),
            "reason": pa.array([r[2] for r in rows], pa.string()),
            "first_seen": pa.array([r[3] for r in rows], pa.int64()).cast(_TS),
            "first_message_id": pa.array([r[4] for r in rows], pa.string()),
        }
    )


def _log_table(entries: list[LogEntry], first_seq: int, recorded_at: datetime) -> pa.Table:
    (action, ts, mid, profile, others, a, b, rule, detail) = (
        list(column) for column in zip(*entries, strict=True)
    )
    no_identifier = (None, None)
    a = [x or no_identifier for x in a]
    b = [x or no_identifier for x in b]
    n = len(entries)
    return pa.table(
        {
            "seq": pa.array(np.arange(first_seq, first_seq + n), pa.int64()),
            "recorded_at": pa.array([recorded_at] * n, _TS),
            "action": pa.array(action, pa.string()),
            "timestamp": pa.array(ts, pa.int64()).cast(_TS),
            "message_id": pa.array(mid, pa.string()),
            "profile_id": pa.array(profile, pa.string()),
            "other_profile_ids": pa.array(others, pa.string()),
            "identifier_type_a": pa.array([x[0] for x in a], pa.string()),
            "identifier_a": pa.array([x[1] for x in a], pa.string()),
            "identifier_type_b": pa.array([x[0] for x in b], pa.string()),
            "identifier_b": pa.array([x[1] for x in b], pa.string()),
            "rule": pa.array(rule, pa.string()),
            "detail": pa.array(detail, pa.string()),
        }
    )


def _issues_table(issues: list[tuple[int, str, str]]) -> pa.Table:
    unique = sorted(set(issues))
    return pa.table(
        {
            "message_id": pa.array([i[1] for i in unique], pa.string()),
            "timestamp": pa.array([i[0] for i in unique], pa.int64()).cast(_TS),
            "reason": pa.array([i[2] for i in unique], pa.string()),
        }
    )


def save(
    connection: duckdb.DuckDBPyConnection,
    graph: IdentityGraph,
    state: dict[str, str | None],
    full: bool,
    extra_log: list[LogEntry] | None = None,
    override: tuple[Override, str | None] | None = None,
) -> str:
    """Write what changed in ``graph`` (everything when ``full``), and a manual ``override``
    with its note, in one transaction; returns the new state version."""
    changes: Changes = graph.take_changes()
    full = full or changes.nodes is None or changes.attempts is None
    log = list(extra_log or []) + changes.log
    version = uuid.uuid4().hex
    recorded_at = datetime.now()
    connection.execute("BEGIN TRANSACTION")
    try:
        if full:
            for table in (
                "identity_identifiers",
                "identity_attempts",
                "identity_blocked",
                "identity_issues",
            ):
                connection.execute(f"DELETE FROM {table}")
            nodes = attempts = None  # everything
            blocked = [(r, v) for r in range(len(graph.types)) for v in graph.blocked[r]]
        else:
            nodes = sorted(changes.nodes)
            attempts = sorted(changes.attempts)
            blocked = sorted(changes.blocked)
        _replace(
            connection, "identity_identifiers", "node_id", _identifiers_table(graph, nodes), full
        )
        _replace(
            connection, "identity_attempts", "attempt_id", _attempts_table(graph, attempts), full
        )
        if blocked:
            table = _blocked_table(graph, blocked)
            connection.register("_identity_rows", table)
            connection.execute(
                "DELETE FROM identity_blocked WHERE (identifier_type, identifier) IN "
                "(SELECT (identifier_type, identifier) FROM _identity_rows)"
            )
            connection.execute("INSERT INTO identity_blocked SELECT * FROM _identity_rows")
            connection.unregister("_identity_rows")
        if changes.issues:
            connection.register("_identity_rows", _issues_table(changes.issues))
            connection.execute(
                "INSERT INTO identity_issues SELECT * FROM _identity_rows "
                "EXCEPT SELECT * FROM identity_issues"
            )
            connection.unregister("_identity_rows")
        if log:
            first_seq = connection.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM merge_log"
            ).fetchall()[0][0]
            connection.register("_identity_rows", _log_table(log, first_seq, recorded_at))
            connection.execute("INSERT INTO merge_log SELECT * FROM _identity_rows")
            connection.unregister("_identity_rows")
        if override is not None:
            state = {**state, "last_override": str(add_override(connection, *override))}
        write_state(connection, {**state, "version": version})
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return version


def _replace(
    connection: duckdb.DuckDBPyConnection, table: str, key: str, rows: pa.Table, full: bool
) -> None:
    if rows.num_rows == 0:
        return
    connection.register("_identity_rows", rows)
    try:
        if not full:
            connection.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM _identity_rows)"
            )
        connection.execute(f"INSERT INTO {table} SELECT * FROM _identity_rows")
    finally:
        connection.unregister("_identity_rows")


# --- tables -> graph -----------------------------------------------------------------------


def load(connection: duckdb.DuckDBPyConnection, rules: IdentityRules) -> IdentityGraph:
    """The persisted graph, back in memory (decisions as recorded)."""
    ranks = {t: r for r, t in enumerate(rules.types)}
    rank_case = (
        "CASE identifier_type "
        + " ".join(f"WHEN '{t}' THEN {ranks[t]}" for t in IDENTIFIER_TYPES)
        + " END"
    )
    nodes = connection.sql(
        f"SELECT node_id, {rank_case} AS rank, identifier, epoch_us(first_seen) AS ts, "
        "first_message_id, shared FROM identity_identifiers ORDER BY node_id"
    ).to_arrow_table()
    node_ids = nodes["node_id"].to_numpy()
    if len(node_ids) and not np.array_equal(node_ids, np.arange(len(node_ids))):
        raise RuntimeError("identity_identifiers is not dense; run `kairos identity resolve`")
    attempts = connection.sql(
        "SELECT node_a, node_b, epoch_us(timestamp) AS ts, message_id, position_a, position_b, "
        "message_type, decision FROM identity_attempts ORDER BY attempt_id"
    ).to_arrow_table()
    kind_codes = {kind: code for code, kind in enumerate(MESSAGE_KINDS)}
    decision_codes = {
        decision_name(code, rules.types): code for code in (0, 1, 2, 3, *range(10, 10 + len(ranks)))
    }
    decision_codes["pending"] = -1
    blocked = [
        (ranks[t], value, reason, ts, mid)
        for t, value, reason, ts, mid in connection.execute(
            "SELECT identifier_type, identifier, reason, epoch_us(first_seen), first_message_id "
            "FROM identity_blocked"
        ).fetchall()
    ]
    shared_column = nodes["shared"].to_pylist()
    shared = {node: why for node, why in enumerate(shared_column) if why is not None}
    graph = IdentityGraph(rules)
    overrides = read_overrides(connection)
    state = read_state(connection)
    watermark = (
        (int(state["watermark_ts"]), state["watermark_mid"])
        if state.get("watermark_ts")
        else graph.watermark
    )
    index = {}
    for node, (rank, value) in enumerate(
        zip(nodes["rank"].to_pylist(), nodes["identifier"].to_pylist(), strict=True)
    ):
        index[(rank, value)] = node
    cannot_link = []
    for override in overrides:
        if override.kind == "link" and override.b is not None:
            a = index.get((ranks[override.a[0]], override.a[1]))
            b = index.get((ranks[override.b[0]], override.b[1]))
            if a is not None and b is not None:
                cannot_link.append((a, b))
    graph.restore(
        {
            "rank": nodes["rank"].to_pylist(),
            "value": nodes["identifier"].to_pylist(),
            "ts": nodes["ts"].to_pylist(),
            "mid": nodes["first_message_id"].to_pylist(),
        },
        blocked,
        {
            "a": attempts["node_a"].to_pylist(),
            "b": attempts["node_b"].to_pylist(),
            "ts": attempts["ts"].to_pylist(),
            "mid": attempts["message_id"].to_pylist(),
            "i": attempts["position_a"].to_pylist(),
            "j": attempts["position_b"].to_pylist(),
            "kind": [kind_codes[k] for k in attempts["message_type"].to_pylist()],
            "decision": [decision_codes[d] for d in attempts["decision"].to_pylist()],
        },
        shared,
        cannot_link,
        watermark,
    )
    return graph


# --- reads for the API ---------------------------------------------------------------------------

# The identifier columns of an event, in the order graph.observe_rows reads them.
_IDENTIFIER_COLUMNS = "user_id, anonymous_id, previous_id, email, phone, device_id"
EVENT_ROW_SQL = f"epoch_us(timestamp), message_id, type, {_IDENTIFIER_COLUMNS}"


def max_event_rowid(connection: duckdb.DuckDBPyConnection) -> int | None:
    return connection.execute("SELECT max(rowid) FROM events").fetchall()[0][0]


def pending_events(connection: duckdb.DuckDBPyConnection, after: int) -> tuple[int, int | None]:
    """(how many, last rowid) of the events appended after rowid ``after``."""
    return tuple(
        connection.execute(
            "SELECT count(*), max(rowid) FROM events WHERE rowid > ?", [after]
        ).fetchall()[0]
    )


def event_rows(connection: duckdb.DuckDBPyConnection, after: int, upto: int) -> list[tuple]:
    """Identity columns of the events with ``after < rowid <= upto`` (see graph.observe_rows)."""
    return connection.execute(
        f"SELECT {EVENT_ROW_SQL} FROM events WHERE rowid > ? AND rowid <= ?", [after, upto]
    ).fetchall()


def first_sightings_between(
    connection: duckdb.DuckDBPyConnection, after: datetime, upto: datetime
) -> list[tuple]:
    """Identity columns (see graph.observe_rows) of the first message, by (timestamp,
    message_id), of each distinct identifier tuple among the events with ``after < timestamp
    <= upto``. A tuple seen again adds nothing the graph does not have (the batch path reads
    the same first sightings), and most events repeat one: a known visitor's next page view."""
    return connection.execute(
        f"""
        SELECT first.ts, first.mid, first.kind, {_IDENTIFIER_COLUMNS}
        FROM (
            SELECT {_IDENTIFIER_COLUMNS},
                   arg_min(struct_pack(ts := epoch_us(timestamp), mid := message_id,
                                       kind := type), (timestamp, message_id)) AS first
            FROM events WHERE timestamp > ? AND timestamp <= ?
            GROUP BY ALL
        )
        """,
        [after, upto],
    ).fetchall()


def find_identifiers(
    connection: duckdb.DuckDBPyConnection, kind: str | None, value: str
) -> list[dict[str, Any]]:
    """Identifiers with this value (and type, when given); blocked values when there are none
    (their row has ``blocked``: the reason)."""
    type_clause = " AND identifier_type = ?" if kind else ""
    parameters = [value, kind] if kind else [value]
    found = _records(
        connection.execute(
            "SELECT identifier_type, identifier, profile_id, shared, node_id FROM "
            f"identity_identifiers WHERE identifier = ?{type_clause} ORDER BY identifier_type",
            parameters,
        )
    )
    if found:
        return found
    return _records(
        connection.execute(
            "SELECT identifier_type, identifier, reason AS blocked FROM identity_blocked "
            f"WHERE identifier = ?{type_clause}",
            parameters,
        )
    )


def profile_members(
    connection: duckdb.DuckDBPyConnection, profile_id: str | None, node: int
) -> list[dict[str, Any]]:
    """Identifiers of a profile (or the single node when it belongs to none), first seen first."""
    where, parameter = ("profile_id = ?", profile_id) if profile_id else ("node_id = ?", node)
    return _records(
        connection.execute(
            "SELECT identifier_type, identifier, first_seen, first_message_id, node_id "
            f"FROM identity_identifiers WHERE {where} "
            "ORDER BY first_seen, first_message_id, identifier_type",
            [parameter],
        )
    )


def attempts_touching(
    connection: duckdb.DuckDBPyConnection, nodes: list[int]
) -> list[dict[str, Any]]:
    """Every link attempt with an end among ``nodes``, in key order."""
    connection.register("_identity_members", pa.table({"node_id": pa.array(nodes, pa.int64())}))
    try:
        return _records(
            connection.execute(
                """
                SELECT t.timestamp, t.message_id, t.message_type, t.decision,
                       a.identifier_type AS type_a, a.identifier AS identifier_a, t.node_a,
                       b.identifier_type AS type_b, b.identifier AS identifier_b, t.node_b
                FROM identity_attempts t
                JOIN identity_identifiers a ON a.node_id = t.node_a
                JOIN identity_identifiers b ON b.node_id = t.node_b
                WHERE t.node_a IN (SELECT node_id FROM _identity_members)
                   OR t.node_b IN (SELECT node_id FROM _identity_members)
                ORDER BY t.timestamp, t.message_id, t.position_a, t.position_b
                """
            )
        )
    finally:
        connection.unregister("_identity_members")


def recent_log(
    connection: duckdb.DuckDBPyConnection,
    profile_id: str | None,
    identifier: tuple[str, str],
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The latest merge-log entries about a profile or an identifier, newest first."""
    return _records(
        connection.execute(
            "SELECT seq, recorded_at, action, timestamp, message_id, profile_id, "
            "other_profile_ids, identifier_type_a, identifier_a, identifier_type_b, identifier_b,"
            " rule, detail FROM merge_log WHERE action <> 'rebuild' AND (profile_id = ? OR "
            "list_contains(string_split(other_profile_ids, ','), ?) OR "
            "(identifier_type_a = ? AND identifier_a = ?) OR "
            "(identifier_type_b = ? AND identifier_b = ?)) ORDER BY seq DESC LIMIT ?",
            [profile_id, profile_id, *identifier, *identifier, limit],
        )
    )


def export_assignments(
    connection: duckdb.DuckDBPyConnection, out: Path, include_shared: bool
) -> int:
    """COPY identifier_type, identifier, profile_id to ``out`` (.parquet or .csv)."""
    where = "" if include_shared else " WHERE profile_id IS NOT NULL"
    query = (
        "SELECT identifier_type, identifier, profile_id FROM identity_identifiers"
        f"{where} ORDER BY profile_id, identifier_type, identifier"
    )
    fmt = "PARQUET" if out.suffix.lower() == ".parquet" else "CSV, HEADER"
    escaped = str(out).replace("'", "''")
    connection.execute(f"COPY ({query}) TO '{escaped}' (FORMAT {fmt})")
    return connection.execute(f"SELECT count(*) FROM identity_identifiers{where}").fetchall()[0][0]


def summary(connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts for ``kairos identity stats``."""
    profiles, in_profiles, mean, median, p99, largest = connection.execute(
        """
        SELECT count(*), coalesce(sum(identifiers), 0), avg(identifiers), median(identifiers),
               quantile_cont(identifiers, 0.99), max(identifiers)
        FROM identity_profiles
        """
    ).fetchall()[0]
    largest_profile = _records(
        connection.execute(
            "SELECT * FROM identity_profiles ORDER BY identifiers DESC, profile_id LIMIT 1"
        )
    )

    def counts(sql: str) -> dict[str, int]:
        return dict(connection.execute(sql).fetchall())

    return {
        "profiles": profiles,
        "identifiers_in_profiles": int(in_profiles),
        "mean": mean,
        "median": median,
        "p99": p99,
        "max": largest,
        "largest_profile": largest_profile[0] if largest_profile else None,
        "decisions": counts("SELECT decision, count(*) FROM identity_attempts GROUP BY 1"),
        "by_type": counts(
            "SELECT identifier_type, count(*) FROM identity_identifiers GROUP BY 1 ORDER BY 1"
        ),
        "shared": counts(
            "SELECT identifier_type || ' (' || shared || ')', count(*) FROM identity_identifiers "
            "WHERE shared IS NOT NULL GROUP BY 1 ORDER BY 1"
        ),
        "blocked": counts(
            "SELECT reason, count(*) FROM identity_blocked GROUP BY 1 ORDER BY 2 DESC, 1"
        ),
        "issues": counts(
            "SELECT reason, count(*) FROM identity_issues GROUP BY 1 ORDER BY 2 DESC, 1"
        ),
        "overrides": connection.execute("SELECT count(*) FROM identity_overrides").fetchall()[0][0],
    }


AS_OF_RELATION = "_identity_as_of"


def event_profiles_with(
    connection: duckdb.DuckDBPyConnection, sql: str, profiles: pa.Table, at: datetime
) -> pa.Table:
    """Run an ``event_profiles_sql`` query against ``profiles`` registered as AS_OF_RELATION."""
    connection.register(AS_OF_RELATION, profiles)
    try:
        return connection.sql(sql, params={"at": at}).to_arrow_table()
    finally:
        connection.unregister(AS_OF_RELATION)


def current_links(connection: duckdb.DuckDBPyConnection) -> set[tuple[str, str, str, str]]:
    """(type a, a, type b, b) of every merge behind today's profiles."""
    return set(
        connection.execute(
            "SELECT identifier_type_a, identifier_a, identifier_type_b, identifier_b "
            "FROM identity_links"
        ).fetchall()
    )


def current_profiles(connection: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(profile_id, identifier type, identifier) of every identifier in a profile."""
    return connection.execute(
        "SELECT profile_id, identifier_type, identifier FROM identity_identifiers "
        "WHERE profile_id IS NOT NULL"
    ).fetchall()


def _records(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
