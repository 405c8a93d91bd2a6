"""Property: the batch path and the incremental path give identical profiles, links and
decisions, whatever the order and batching of the events, with limits, shared identifiers,
junk values, aliases and late events in play."""

from __future__ import annotations

import itertools
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.identity import (
    IdentityGraph,
    IdentityRules,
    ProfilesAsOf,
    profiles_as_of,
    resolve_identities,
    update_identity,
)
from features.identity import api as identity_api
from features.identity.batch import build_graph
from features.store import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, EventStore

T0 = datetime(2026, 1, 5)
EPOCH = datetime(1970, 1, 1)
# Tight limits and low shared thresholds so that refusals, detections and un-detections happen.
RULES = IdentityRules.model_validate(
    {
        "identifiers": [
            {"type": "user_id", "limit": 1},
            {"type": "email", "limit": 2},
            {"type": "phone", "limit": 1},
            {"type": "device_id", "limit": 2},
            {"type": "anonymous_id", "limit": 3},
        ],
        "shared": {"anonymous_id": 1, "device_id": 1, "email": 1, "phone": 2},
        "blocklist": {"any": ["null"], "email": ["test@test.com"]},
    }
)
POOLS = {
    "user_id": ["u1", "u2", "u3", "null"],
    "email": ["a@x.org", "b@x.org", "c@x.org", "test@test.com", "not-an-email"],
    "phone": ["+447911000001", "+447911000002"],
    "device_id": ["d1", "d2", "d3"],
    "anonymous_id": ["a1", "a2", "a3", "a4", "u1"],
}


@st.composite
def event_lists(draw) -> list[dict]:
    n = draw(st.integers(1, 30))
    events = []
    for k in range(n):
        kind = draw(st.sampled_from(["track", "identify", "page", "alias"]))
        row = {
            "message_id": f"m{draw(st.integers(0, 9))}{k:02d}",  # ties broken by message id
            "type": kind,
            "event": "x",
            "timestamp": T0 + timedelta(minutes=draw(st.integers(0, 12))),
        }
        if kind == "alias":
            row["previous_id"] = draw(st.sampled_from(POOLS["anonymous_id"] + ["u2"]))
            row["user_id"] = draw(st.sampled_from(POOLS["user_id"]))
        else:
            for column, pool in POOLS.items():
                if draw(st.booleans()):
                    row[column] = draw(st.sampled_from(pool))
            if not any(column in row for column in POOLS):
                row["anonymous_id"] = draw(st.sampled_from(POOLS["anonymous_id"]))
        events.append(row)
    return events


def events_table(events: list[dict]) -> pa.Table:
    return pa.table(
        {f.name: pa.array([e.get(f.name) for e in events], f.type) for f in EVENT_SCHEMA}
    )


def canonical_rows(events: list[dict]) -> list[tuple]:
    return [
        (
            (e["timestamp"] - EPOCH) // timedelta(microseconds=1),
            e["message_id"],
            e["type"],
            e.get("user_id"),
            e.get("anonymous_id"),
            e.get("previous_id"),
            e.get("email"),
            e.get("phone"),
            e.get("device_id"),
        )
        for e in events
    ]


def snapshot(graph: IdentityGraph) -> tuple:
    return (
        graph.assignments(),
        graph.merge_links(),
        {graph.identifier(node) for node in graph.shared},
        graph.decisions(),
        {
            (t, v, b[0])
            for t, blocked in zip(graph.types, graph.blocked, strict=True)
            for v, b in blocked.items()
        },
    )


def batches(events: list[dict], order: list[int], cuts: list[int]) -> list[list[dict]]:
    shuffled = [events[i] for i in order]
    edges = sorted({c % (len(events) + 1) for c in cuts} | {0, len(events)})
    return [shuffled[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), events=event_lists())
def test_batch_equals_incremental_for_any_order_and_batching(data, events):
    _check_batch_equals_incremental(data, events)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(data=st.data(), events=event_lists())
def test_batch_equals_incremental_many_examples(data, events):
    _check_batch_equals_incremental(data, events)


def _check_batch_equals_incremental(data, events) -> None:
    connection = duckdb.connect()
    connection.register("batch_events", events_table(events))
    connection.execute("CREATE TABLE events AS SELECT * FROM batch_events")
    batch, _ = build_graph(connection, RULES)

    order = data.draw(st.permutations(range(len(events))))
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=6))
    incremental = IdentityGraph(RULES)
    for piece in batches(events, order, cuts):
        incremental.observe_rows(canonical_rows(piece))
    assert snapshot(incremental) == snapshot(batch)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), events=event_lists())
def test_store_updates_equal_a_rebuild(data, events):
    """Through the event store: persisted updates (with process restarts in between) and a
    full rebuild agree on every table that describes today's profiles."""
    order = data.draw(st.permutations(range(len(events))))
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=4))
    restarts = data.draw(st.lists(st.booleans(), min_size=8, max_size=8))
    empty = pa.table({f.name: pa.array([], f.type) for f in DEAD_LETTER_SCHEMA})
    with tempfile.TemporaryDirectory() as folder, EventStore(Path(folder) / "e.duckdb") as store:
        for k, piece in enumerate(batches(events, order, cuts)):
            store.append(events_table(piece), empty, source="test", ingest_run=str(k))
            if k == 0:
                resolve_identities(store, RULES)
                continue
            if restarts[k % len(restarts)]:
                identity_api._GRAPHS.clear()  # the next update loads the graph from the tables
            update_identity(store)
        incremental = _tables(store)
        identity_api._GRAPHS.clear()
        resolve_identities(store)
        assert _tables(store) == incremental
    identity_api._GRAPHS.clear()


def _tables(store: EventStore) -> tuple:
    sql = store.connection.sql
    return (
        set(
            sql(
                "SELECT identifier_type, identifier, profile_id, shared, first_seen, "
                "first_message_id FROM identity_identifiers"
            ).fetchall()
        ),
        set(sql("SELECT * EXCLUDE (profile_id) FROM identity_links").fetchall()),
        set(
            sql(
                "SELECT a.identifier_type, a.identifier, b.identifier_type, b.identifier, "
                "t.timestamp, t.message_id, t.position_a, t.position_b, t.message_type, "
                "t.decision FROM identity_attempts t "
                "JOIN identity_identifiers a ON a.node_id = t.node_a "
                "JOIN identity_identifiers b ON b.node_id = t.node_b"
            ).fetchall()
        ),
        set(sql("SELECT * FROM identity_blocked").fetchall()),
        set(sql("SELECT * FROM identity_issues").fetchall()),
    )


@settings(max_examples=30, deadline=None)
@given(
    events=event_lists(),
    minutes=st.lists(st.integers(-1, 13), min_size=1, max_size=6),
)
def test_profiles_advanced_between_cutoffs_equal_a_rebuild_at_each(events, minutes):
    """``ProfilesAsOf`` moves one graph forward from cutoff to cutoff (and rebuilds when a
    cutoff goes back); at every cutoff it equals ``profiles_as_of``, a rebuild from scratch.
    Cutoffs fall on event instants too, so ties at the cutoff are covered."""
    connection = duckdb.connect()
    connection.register("batch_events", events_table(events))
    connection.execute("CREATE TABLE events AS SELECT * FROM batch_events")
    advancing = ProfilesAsOf(connection, RULES)
    for minute in minutes:
        at = T0 + timedelta(minutes=minute)
        advanced = advancing.at(at).sort_by(
            [("identifier_type", "ascending"), ("identifier", "ascending")]
        )
        rebuilt = profiles_as_of(connection, at, RULES).sort_by(
            [("identifier_type", "ascending"), ("identifier", "ascending")]
        )
        assert advanced.to_pylist() == rebuilt.to_pylist()
