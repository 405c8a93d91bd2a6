"""Identity-backed profiles at a cutoff: later links never enrich a past profile (no leakage)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from features.aggregates import aggregates_sql
from features.examples import ExampleConfig, build_examples, profile_events_table
from features.ingest import ingest_file
from features.profile_source import IdentityProfiles, default_profile_source
from features.simulate import simulate
from features.store import EventStore
from training.config import DataConfig
from training.datasets import examples_at

T = datetime(2026, 1, 10, 12, 0)


def line(i: int, at: datetime, **fields) -> bytes:
    return orjson.dumps(
        {"type": "track", "messageId": f"m-{i}", "timestamp": at.isoformat() + "Z", **fields}
    )


BEFORE = [
    # Browsing on a phone, anonymously, then an order by the account on a laptop.
    line(
        1,
        T - timedelta(days=2),
        anonymousId="phone",
        event="Product Viewed",
        properties={"category": "mugs"},
    ),
    line(
        2,
        T - timedelta(days=1),
        anonymousId="laptop",
        userId="ana",
        event="Order Completed",
        properties={"revenue": 30},
    ),
]
AFTER = [
    # Later the phone logs in: the same person, but only from this moment on.
    orjson.dumps(
        {
            "type": "identify",
            "messageId": "m-3",
            "anonymousId": "phone",
            "userId": "ana",
            "timestamp": (T + timedelta(hours=1)).isoformat() + "Z",
        }
    ),
    line(
        4, T + timedelta(days=2), userId="ana", event="Order Completed", properties={"revenue": 10}
    ),
]


def ingest_lines(store: EventStore, path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")
    ingest_file(store, path)


def features_at(store: EventStore) -> list[dict]:
    source = default_profile_source(store.connection)
    assert isinstance(source, IdentityProfiles)  # ingest built the identity graph
    view = source.events_as_of(store.connection, T)
    return store.connection.sql(aggregates_sql(view, T)).to_arrow_table().to_pylist()


def test_a_later_login_does_not_enrich_the_past_profile(tmp_path: Path) -> None:
    with EventStore(tmp_path / "store.duckdb") as store:
        ingest_lines(store, tmp_path / "before.jsonl", BEFORE)
        before = features_at(store)
        ingest_lines(store, tmp_path / "after.jsonl", AFTER)
        after = features_at(store)
        assert after == before
        assert sorted(row["events_total"] for row in after) == [1, 1]  # two separate profiles

        examples = build_examples(
            store.connection,
            default_profile_source(store.connection),
            T,
            ExampleConfig(horizon_days=7),
        )
        labels = examples.profiles.set_index("profile_id")["ordered"]
        # Labels follow the later link: both past profiles are Ana, who ordered on day 2.
        assert labels.tolist() == [True, True]
        assert examples.profiles["label_profile_id"].nunique() == 1


def test_at_or_after_the_last_event_the_stored_graph_equals_a_rebuild(tmp_path: Path) -> None:
    """The shortcut that reads the stored identity graph instead of rebuilding it as of ``at``
    gives the same profile events, labels included."""
    later = T + timedelta(days=3)
    with EventStore(tmp_path / "store.duckdb") as store:
        ingest_lines(store, tmp_path / "all.jsonl", BEFORE + AFTER)
        relations = {}
        for reuse in (True, False):
            source = IdentityProfiles(store.connection, reuse_stored=reuse)
            view = source.events_as_of(store.connection, later)
            relations[reuse] = store.connection.sql(
                f"SELECT profile_id, message_id FROM {view} ORDER BY message_id"
            ).fetchall()
            assert ("identity_identifiers" in view) == reuse
        assert relations[True] == relations[False]
        assert len({profile for profile, _ in relations[True]}) == 1  # all Ana by then


def test_cutoffs_in_any_order_give_the_same_profiles(tmp_path: Path) -> None:
    """One source read at cutoffs forwards, backwards and repeated (it advances one graph and
    keeps only recent as-of tables) matches a fresh source at each cutoff."""
    cutoffs = [T - timedelta(days=1), T, T + timedelta(hours=2), T - timedelta(days=3), T]
    with EventStore(tmp_path / "store.duckdb") as store:
        ingest_lines(store, tmp_path / "all.jsonl", BEFORE + AFTER)
        shared = IdentityProfiles(store.connection, reuse_stored=False)

        def rows(source: IdentityProfiles, at: datetime) -> list[tuple]:
            view = source.events_as_of(store.connection, at)
            return store.connection.sql(
                f"SELECT message_id, profile_id FROM {view} ORDER BY message_id"
            ).fetchall()

        for at in cutoffs:
            fresh = IdentityProfiles(store.connection, reuse_stored=False)
            assert rows(shared, at) == rows(fresh, at)
        # The phone's browsing joins Ana's profile only once the login is visible.
        assert len({p for _, p in rows(shared, T + timedelta(hours=2))}) == 1
        assert len({p for _, p in rows(shared, T)}) == 2


def test_integer_profile_keys_give_the_same_examples_as_profile_ids(tmp_path: Path) -> None:
    """Identity's profile events carry 64-bit keys instead of "p-<hex>" ids for speed; every
    output (aggregates, labels, sequences, activity, send labels) is the same as with ids."""
    world = simulate(tmp_path / "sim", customers=60, days=28, seed=5)
    with EventStore(tmp_path / "store.duckdb") as store:
        ingest_file(store, world.events_path)
        keyed = IdentityProfiles(store.connection, reuse_stored=False)
        plain = IdentityProfiles(store.connection, reuse_stored=False)
        plain.profile_keys = None  # profile ids all the way through
        start = store.connection.sql("SELECT min(timestamp) FROM events").fetchall()[0][0]
        for at in (start + timedelta(days=10), start + timedelta(days=17)):
            with profile_events_table(store.connection, keyed, at) as events:
                key_type = f"SELECT DISTINCT typeof(profile_id) FROM {events.table}"
                assert store.connection.sql(key_type).fetchall() == [("UBIGINT",)]
            a = examples_at(store.connection, keyed, at, DataConfig(horizon_days=7))
            b = examples_at(store.connection, plain, at, DataConfig(horizon_days=7))
            assert (
                len(a.profiles) > 50
                and a.profiles["profile_id"].str.match(r"p-[0-9a-f]{16}$").all()
            )
            pd.testing.assert_frame_equal(a.profiles, b.profiles)
            pd.testing.assert_frame_equal(a.sends, b.sends)
            assert a.arrays.keys() == b.arrays.keys()
            for name in a.arrays:
                np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
            assert a.arrays["activity"].sum() > 0 and len(a.sends) > 0
