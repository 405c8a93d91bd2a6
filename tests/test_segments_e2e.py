"""The default library on simulated and real data: batch and real time agree profile by
profile, and the deliverability tiers partition every emailed profile."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from features.contract import NormaliseOptions
from features.ingest import IngestOptions, ingest_file
from features.store import EventStore
from features.tabular import parse_mapping
from serving.segments.batch import evaluate_batch, profile_events_at, profile_events_of
from serving.segments.incremental import SegmentEngine
from serving.segments.library import load_library

TIERS = ("engaged", "active", "at_risk", "inactive", "sunset")


def _agree_on_sample(connection, library, at: datetime, sample: int) -> dict[str, int]:
    """Batch memberships at `at` over identity's profiles as of `at`; a sample of profiles
    replayed in real time must match."""
    view = profile_events_at(connection, at)
    result = evaluate_batch(connection, view, library, at)
    batch: dict[str, dict[str, datetime]] = {}
    for row in result.memberships.to_pylist():
        batch.setdefault(row["profile_id"], {})[row["segment"]] = row["entered_at"]
    engine = SegmentEngine(library)
    profiles = [
        r[0]
        for r in connection.sql(
            f"SELECT DISTINCT profile_id FROM {view} WHERE timestamp <= $at "
            f"ORDER BY hash(profile_id) LIMIT {sample}",
            params={"at": at},
        ).fetchall()
    ]
    for profile in profiles:
        state = engine.replay(profile, profile_events_of(connection, view, profile, at), until=at)
        assert engine.members(state) == batch.get(profile, {}), profile
    return result.sizes


def test_default_library_on_simulated_data(tmp_path: Path) -> None:
    from features.simulate import simulate

    summary = simulate(out_dir=tmp_path / "world", customers=150, days=45, seed=11)
    with EventStore(tmp_path / "events.duckdb") as store:
        ingest_file(store, summary.events_path)
    connection = duckdb.connect(str(tmp_path / "events.duckdb"), read_only=True)
    last = connection.sql("SELECT max(timestamp) FROM events").fetchall()[0][0]
    at = last - timedelta(days=1)
    sizes = _agree_on_sample(connection, load_library(), at, sample=60)
    for name in ("browsed_no_purchase_7d", "engaged", "clicked_no_checkout"):
        assert sizes[name] > 0, name
    emailed = connection.sql(
        f"SELECT count(DISTINCT profile_id) FROM {profile_events_at(connection, at)} "
        "WHERE event IN ('Email Delivered', 'Email Opened', 'Email Link Clicked', "
        "'Email Bounced')"
    ).fetchall()[0][0]
    identifiers = connection.sql(
        "SELECT count(DISTINCT coalesce(user_id, email, phone, anonymous_id, device_id)) "
        f"FROM events WHERE timestamp <= TIMESTAMP '{at.isoformat(sep=' ')}'"
    ).fetchall()[0][0]
    profiles = connection.sql(
        f"SELECT count(DISTINCT profile_id) FROM {profile_events_at(connection, at)}"
    ).fetchall()[0][0]
    assert profiles < identifiers  # identity joined anonymous browsing to known people
    assert sum(sizes[tier] for tier in TIERS) == emailed  # exactly one tier each


@pytest.mark.slow
@pytest.mark.real_data
def test_default_library_on_real_transactions(real_data: Path, tmp_path: Path) -> None:
    """Online Retail II: orders only; repeat buyers who stopped buying are found."""
    mapping = parse_mapping(
        [
            "user_id=Customer ID",
            "timestamp=InvoiceDate",
            "order_id=Invoice",
            "product_id=StockCode",
            "name=Description",
            "quantity=Quantity",
            "price=Price",
        ],
        "Order Completed",
    )
    options = IngestOptions(mapping=mapping, normalise=NormaliseOptions(timezone="Europe/London"))
    with EventStore(tmp_path / "events.duckdb") as store:
        ingest_file(store, real_data / "online_retail_ii_2009_2010.parquet", options)
    connection = duckdb.connect(str(tmp_path / "events.duckdb"), read_only=True)
    sizes = _agree_on_sample(connection, load_library(), datetime(2010, 9, 1), sample=200)
    assert sizes["repeat_buyers_disengaged_30d"] > 100
    assert sizes["new_customers_onboarding"] > 10
    assert sizes["engaged"] == 0  # no email events in a transaction log
