"""Point-in-time aggregates: exact values on a hand-written history, exact window edges."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
import pytest

from features.aggregates import aggregates_sql
from features.store import EVENT_SCHEMA

AT = datetime(2026, 2, 1, 12, 0)


def ev(profile: str, event: str, ago: timedelta, **fields) -> dict:
    channel = fields.pop("channel", "web")
    kind = fields.pop("type", "track")
    return {
        "profile_id": profile,
        "event": event,
        "channel": channel,
        "type": kind,
        "timestamp": AT - ago,
        **fields,
    }


HISTORY = [
    # ana: two orders, an open cart after the last one, email engagement, then unsubscribed
    ev("ana", "Order Completed", timedelta(days=40), revenue=30.0),
    ev("ana", "Order Completed", timedelta(days=7), revenue=20.0),  # exactly 7 days: not in 7d
    ev("ana", "Product Viewed", timedelta(days=2), category="mugs"),
    ev("ana", "Product Viewed", timedelta(days=1, hours=1), category="teapots"),
    ev("ana", "Product Added", timedelta(days=1), revenue=12.0),
    ev("ana", "Checkout Started", timedelta(hours=6), revenue=15.0),
    ev("ana", "Email Sent", timedelta(hours=30, minutes=1), channel="email", send_id="s1"),
    ev("ana", "Email Delivered", timedelta(hours=30), channel="email", send_id="s1"),  # same send
    ev("ana", "Email Opened", timedelta(hours=29), channel="email"),
    ev("ana", "Email Link Clicked", timedelta(hours=28), channel="email"),
    ev("ana", "Unsubscribed", timedelta(hours=3), channel="email"),
    ev("ana", "Screen Viewed", timedelta(hours=2), channel="app", type="screen"),
    # ben: only the future and a cancellation
    ev("ben", "Order Cancelled", timedelta(days=3), revenue=-5.0),
    ev("ben", "SMS Delivered", timedelta(days=6, hours=23, minutes=59), channel="sms"),
    ev("ben", "Order Completed", -timedelta(seconds=1), revenue=99.0),  # after AT: invisible
    # dora: orders months and a year ago; the year-ago month is (AT - 365 days, AT - 335 days]
    ev("dora", "Order Completed", timedelta(days=100), revenue=1.0),
    ev("dora", "Order Completed", timedelta(days=335), revenue=2.0),  # last day of the month
    ev("dora", "Order Completed", timedelta(days=350), revenue=4.0),
    ev("dora", "Order Completed", timedelta(days=365), revenue=8.0),  # exactly a year: outside
    # cleo: never seen before AT
    ev("cleo", "Product Viewed", -timedelta(days=1)),
]


@pytest.fixture(scope="module")
def result() -> dict[str, dict]:
    connection = duckdb.connect()
    rows = [
        {name: e.get(name) for name in EVENT_SCHEMA.names}
        | {"profile_id": e["profile_id"], "message_id": str(i)}
        for i, e in enumerate(HISTORY)
    ]
    table = pa.Table.from_pylist(
        rows, schema=EVENT_SCHEMA.append(pa.field("profile_id", pa.string()))
    )
    connection.register("profile_events", table)
    frame = connection.sql(aggregates_sql("profile_events", AT)).to_arrow_table().to_pylist()
    return {row["profile_id"]: row for row in frame}


def test_only_profiles_seen_by_the_cutoff(result: dict) -> None:
    assert sorted(result) == ["ana", "ben", "dora"]


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("orders_total", 2),
        ("revenue_total", 50.0),
        ("orders_7d", 0),
        ("orders_30d", 1),
        ("orders_90d", 2),
        ("revenue_30d", 20.0),
        ("days_since_last_order", 7.0),
        ("days_since_first_order", 40.0),
        ("average_order_value", 25.0),
        ("email_sent_1d", 0),
        ("email_sent_7d", 1),
        ("email_opened_7d", 1),
        ("email_clicked_7d", 1),
        ("hours_since_email_engagement", 28.0),
        ("hours_since_last_engagement", 28.0),
        ("app_events_1d", 1),
        ("web_events_7d", 4),
        ("hours_since_app_activity", 2.0),
        ("product_views_30d", 2),
        ("categories_viewed_30d", 2),
        ("last_viewed_category", "teapots"),
        ("cart_open", True),
        ("cart_value", 15.0),
        ("cart_age_hours", 24.0),
        ("email_unsubscribed", True),
        ("sms_opted_out", False),
        ("events_total", 12),
        ("first_seen_at", AT - timedelta(days=40)),
        ("last_seen_at", AT - timedelta(hours=2)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_ana(result: dict, column: str, expected: object) -> None:
    assert result["ana"][column] == expected


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("orders_total", 0),
        ("cancellations_total", 1),
        ("events_total", 2),
        ("days_since_last_order", None),
        ("average_order_value", None),
        ("sms_sent_7d", 1),
        ("sms_sent_1d", 0),
        ("cart_open", False),
        ("cart_value", 0.0),
        ("cart_age_hours", None),
        ("hours_since_last_engagement", None),
        ("email_unsubscribed", False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_ben(result: dict, column: str, expected: object) -> None:
    assert result["ben"][column] == expected


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("orders_total", 4),
        ("orders_90d", 0),
        ("orders_180d", 1),
        ("revenue_180d", 1.0),
        ("orders_365d", 3),
        ("revenue_365d", 7.0),
        ("orders_year_ago_next_30d", 2),
        ("revenue_year_ago_next_30d", 6.0),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_dora_long_windows(result: dict, column: str, expected: object) -> None:
    assert result["dora"][column] == expected


def test_long_windows_without_old_orders(result: dict) -> None:
    assert result["ana"]["orders_365d"] == 2
    assert result["ana"]["orders_year_ago_next_30d"] == 0
    assert result["ben"]["revenue_year_ago_next_30d"] == 0.0


@pytest.mark.real_data
def test_real_transaction_log_gives_each_customers_orders_and_revenue(tmp_path, real_data) -> None:
    """The Online Retail log through ingest, identity and aggregates matches pandas on the raw
    rows: per customer, orders and revenue up to the cutoff, and nothing after it."""
    import numpy as np
    import pandas as pd

    from features.ingest import IngestOptions, ingest_file
    from features.profile_source import default_profile_source
    from features.store import EventStore
    from features.tabular import parse_mapping

    frame = pd.read_parquet(real_data / "online_retail_ii_2009_2010.parquet").head(20_000)
    path = tmp_path / "slice.parquet"
    frame.to_parquet(path)
    mapping = parse_mapping(
        [
            "user_id=Customer ID",
            "timestamp=InvoiceDate",
            "order_id=Invoice",
            "price=Price",
            "quantity=Quantity",
            "product_id=StockCode",
        ],
        event="Order Completed",
    )
    cutoff = datetime(2009, 12, 10)
    with EventStore(tmp_path / "s.duckdb") as store:
        ingest_file(store, path, IngestOptions(mapping=mapping))
        source = default_profile_source(store.connection)
        rows = store.connection.sql(
            aggregates_sql(source.events_as_of(store.connection, cutoff), cutoff)
        ).df()

    lines = frame.dropna(subset=["Customer ID"])
    lines = lines[pd.to_datetime(lines["InvoiceDate"]) <= cutoff].assign(
        amount=lambda f: f["Quantity"] * f["Price"]
    )
    invoices = lines.groupby(["Customer ID", "Invoice"]).agg(
        quantity=("Quantity", "sum"), amount=("amount", "sum")
    )
    orders = invoices[invoices["quantity"] >= 0].groupby(level=0)
    expected = pd.DataFrame({"orders": orders.size(), "revenue": orders["amount"].sum()})
    expected = expected.reindex(lines["Customer ID"].unique(), fill_value=0)

    assert len(rows) == len(expected)  # one profile per customer seen by the cutoff
    assert sorted(rows["orders_total"]) == sorted(expected["orders"])
    np.testing.assert_allclose(
        np.sort(rows["revenue_total"].to_numpy()),
        np.sort(expected["revenue"].to_numpy()),
        1e-9,
        0.01,
    )
    assert (rows["last_seen_at"] <= cutoff).all()
