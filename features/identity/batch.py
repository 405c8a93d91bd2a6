"""The batch path: read identifiers from the event store in a few SQL passes and build the graph.

DuckDB does the heavy lifting (distinct identifier tuples, first sightings, link attempts with
their first key, ordered); Python then decides the attempts in order, exactly as the
incremental path would (see ``features.identity.graph``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from features.identity.graph import MESSAGE_KINDS, IdentityGraph, Override
from features.identity.rules import IdentityRules

logger = logging.getLogger(__name__)

# Event columns that carry identifiers, with their identifier type. previousId (alias) is read
# as an anonymous id: Segment's alias joins the anonymous history to the new userId.
IDENTIFIER_COLUMNS = (
    ("user_id", "user_id"),
    ("email", "email"),
    ("phone", "phone"),
    ("device_id", "device_id"),
    ("anonymous_id", "anonymous_id"),
    ("previous_id", "anonymous_id"),
)
_KIND_SQL = (
    "CASE type "
    + " ".join(f"WHEN '{kind}' THEN {code}" for code, kind in enumerate(MESSAGE_KINDS))
    + " ELSE 0 END"
)


@dataclass
class BatchTimings:
    seconds: dict[str, float] = field(default_factory=dict)
    events: int = 0
    tuples: int = 0
    identifiers: int = 0
    attempts: int = 0

    def lap(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(now - started, 3)
        return now


def event_filter_sql(at: datetime | None, max_rowid: int | None) -> tuple[str, list]:
    clauses, parameters = [], []
    if max_rowid is not None:
        clauses.append("rowid <= ?")
        parameters.append(max_rowid)
    if at is not None:
        clauses.append("timestamp <= ?")
        parameters.append(at)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", parameters


def build_graph(
    connection: duckdb.DuckDBPyConnection,
    rules: IdentityRules,
    overrides: list[Override] | None = None,
    at: datetime | None = None,
    max_rowid: int | None = None,
) -> tuple[IdentityGraph, BatchTimings]:
    """Resolve every event in the store (up to ``max_rowid``, at or before ``at``) at once."""
    timings = BatchTimings()
    started = time.perf_counter()
    where, parameters = event_filter_sql(at, max_rowid)
    ranks = {t: r for r, t in enumerate(rules.types)}
    # 1. Distinct identifier tuples, each with its first message (key order).
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _identity_tuples AS
        SELECT row_number() OVER () AS tuple_id, *
        FROM (
            SELECT user_id, email, phone, device_id, anonymous_id,
                   CASE WHEN previous_id = user_id OR previous_id = anonymous_id THEN NULL
                        ELSE previous_id END AS previous_id,
                   arg_min(struct_pack(ts := epoch_us(timestamp), mid := message_id,
                                       kind := {_KIND_SQL}), (timestamp, message_id)) AS first,
                   max(timestamp) AS last,
                   count(*) AS events
            FROM events{where}
            GROUP BY ALL
        )
        """,
        parameters,
    )
    timings.events, timings.tuples, last = connection.execute(
        "SELECT coalesce(sum(events), 0), count(*), max(last) FROM _identity_tuples"
    ).fetchall()[0]
    watermark = None
    if last is not None:  # the latest (timestamp, message_id): ties at the last instant
        where_last = f"{where} AND" if where else " WHERE"
        watermark = connection.execute(
            f"SELECT epoch_us(?::TIMESTAMP), max(message_id) FROM events{where_last} timestamp = ?",
            [last, *parameters, last],
        ).fetchall()[0]
    started = timings.lap("read_tuples", started)

    # 2. Distinct identifiers with their first sighting; the blocklist is applied in Python.
    unpivot = " UNION ALL ".join(
        f"SELECT tuple_id, {ranks[kind]} AS rank, {column} AS value, first "
        f"FROM _identity_tuples WHERE {column} IS NOT NULL"
        for column, kind in IDENTIFIER_COLUMNS
    )
    connection.execute(f"CREATE OR REPLACE TEMP TABLE _identity_mentions AS {unpivot}")
    values = connection.sql(
        """
        SELECT rank, value, min(first) AS first FROM _identity_mentions
        GROUP BY rank, value ORDER BY first, rank, value
        """
    ).to_arrow_table()
    rank_list = values["rank"].to_pylist()
    value_list = values["value"].to_pylist()
    first = values["first"].combine_chunks()
    ts_list = first.field("ts").to_pylist()
    mid_list = first.field("mid").to_pylist()
    keep = np.ones(len(rank_list), dtype=bool)
    blocked = []
    block_reason = rules.block_reason
    for k, (rank, value) in enumerate(zip(rank_list, value_list, strict=True)):
        reason = block_reason(rank, value)
        if reason is not None:
            keep[k] = False
            blocked.append((rank, value, reason, ts_list[k], mid_list[k]))
    allowed = np.flatnonzero(keep)
    nodes = {
        "rank": [rank_list[k] for k in allowed],
        "value": [value_list[k] for k in allowed],
        "ts": [ts_list[k] for k in allowed],
        "mid": [mid_list[k] for k in allowed],
    }
    timings.identifiers = len(allowed)
    node_table = pa.table(
        {
            "rank": pa.array(nodes["rank"], pa.int32()),
            "value": pa.array(nodes["value"], pa.string()),
            "node": pa.array(np.arange(len(allowed)), pa.int64()),
        }
    )
    started = timings.lap("identifiers", started)

    # 3. Link attempts: every pair in a tuple, positions over its allowed identifiers; the
    #    first key of each pair wins; ordered by that key.
    connection.register("_identity_nodes", node_table)
    try:
        attempts = connection.sql(
            """
            WITH positioned AS (
                SELECT m.tuple_id, n.node, m.first,
                       row_number() OVER (PARTITION BY m.tuple_id ORDER BY m.rank, m.value) - 1
                           AS pos
                FROM _identity_mentions m JOIN _identity_nodes n USING (rank, value)
            ), pairs AS (
                SELECT x.node AS a, y.node AS b,
                       min(struct_pack(ts := x.first.ts, mid := x.first.mid, i := x.pos,
                                       j := y.pos, kind := x.first.kind)) AS k
                FROM positioned x JOIN positioned y ON x.tuple_id = y.tuple_id AND x.pos < y.pos
                GROUP BY a, b
            )
            SELECT a, b, k.ts AS ts, k.mid AS mid, k.i AS i, k.j AS j, k.kind AS kind
            FROM pairs ORDER BY k
            """
        ).to_arrow_table()
    finally:
        connection.unregister("_identity_nodes")
        connection.execute("DROP TABLE IF EXISTS _identity_mentions")
        connection.execute("DROP TABLE IF EXISTS _identity_tuples")
    timings.attempts = attempts.num_rows
    columns = {name: attempts[name].to_numpy() for name in ("a", "b", "ts", "i", "j", "kind")}
    columns["mid"] = attempts["mid"].to_pylist()
    started = timings.lap("attempts", started)

    # 4. Shared identifiers: distinct neighbours of each type, from the unique pairs.
    shared = shared_by_people(
        rules, np.asarray(nodes["rank"], np.int64), columns["a"], columns["b"]
    )
    graph = IdentityGraph(rules)
    graph.bulk_load(
        nodes,
        blocked,
        columns,
        shared,
        watermark if watermark is not None else graph.watermark,
        overrides or (),
    )
    for ts, mid in connection.execute(
        f"SELECT epoch_us(timestamp), message_id FROM events{where}"
        + (" AND " if where else " WHERE ")
        + "type = 'alias' AND previous_id = user_id",
        parameters,
    ).fetchall():
        graph.issues.append((ts, mid, "alias previousId equals userId: self-link ignored"))
    timings.lap("decide", started)
    return graph, timings


def shared_by_people(
    rules: IdentityRules, node_rank: np.ndarray, a: np.ndarray, b: np.ndarray
) -> list[int]:
    """Nodes seen beside more people than ``rules.shared`` allows (the batch twin of
    ``IdentityGraph.people_beside``): people are distinct userIds, or for devices and cookies
    the distinct groups of userIds, emails and phones seen together, whichever is larger."""
    n_nodes = len(node_rank)
    if len(a) == 0 or n_nodes == 0:
        return []
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    strong_rank = np.array([r in rules.strong_ranks for r in range(len(rules.types))])
    user_rank = rules.rank("user_id")
    is_strong = strong_rank[node_rank]
    both = is_strong[a] & is_strong[b]
    group = union_find(n_nodes, a[both], b[both])
    # Every (subject, neighbour) pair, both ways round; pairs are unique already.
    subject = np.concatenate([a, b])
    neighbour = np.concatenate([b, a])
    most = np.array([-1 if m is None else m for m in rules.shared_people], dtype=np.int64)
    ruled = most[node_rank[subject]] >= 0
    subject, neighbour = subject[ruled], neighbour[ruled]
    users = np.bincount(subject[node_rank[neighbour] == user_rank], minlength=n_nodes)
    strong_pairs = is_strong[neighbour]
    groups_pairs = np.unique(
        np.stack([subject[strong_pairs], group[neighbour[strong_pairs]]], axis=1), axis=0
    )
    groups = (
        np.bincount(groups_pairs[:, 0], minlength=n_nodes)
        if len(groups_pairs)
        else np.zeros(n_nodes, dtype=np.int64)
    )
    people = np.where(is_strong, users, np.maximum(users, groups))
    limit = most[node_rank]
    return np.flatnonzero((limit >= 0) & (people > limit)).tolist()


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label (a root node) per node, for edges a-b."""
    parent = list(range(n))
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x != y:
            parent[max(x, y)] = min(x, y)
    labels = np.asarray(parent, dtype=np.int64)
    while True:  # point every node at its root
        hop = labels[labels]
        if np.array_equal(hop, labels):
            return labels
        labels = hop
