"""Event sequences: exact arrays for a hand-written history, padding and truncation."""

from __future__ import annotations

import math
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from features.sequences import (
    VOCABULARY_SIZE,
    SequenceConfig,
    sequences_sql,
    to_sequences,
    token_of,
)
from features.store import EVENT_SCHEMA

AT = datetime(2026, 1, 7, 12, 0)  # a Wednesday
SCHEMA = EVENT_SCHEMA.append(pa.field("profile_id", pa.string()))


def build(events: list[dict], config: SequenceConfig):
    rows = [{name: e.get(name) for name in SCHEMA.names} for e in events]
    connection = duckdb.connect()
    connection.register("profile_events", pa.Table.from_pylist(rows, schema=SCHEMA))
    table = connection.sql(sequences_sql("profile_events", AT, config)).to_arrow_table()
    return to_sequences(table, config)


HISTORY = [
    {
        "profile_id": "ana",
        "message_id": "1",
        "event": "Product Viewed",
        "channel": "web",
        "timestamp": datetime(2026, 1, 5, 9, 0),
        "category": "mugs",
    },  # Monday 09:00 -> hour 9
    {
        "profile_id": "ana",
        "message_id": "2",
        "event": "Order Completed",
        "channel": "app",
        "timestamp": datetime(2026, 1, 5, 11, 0),
        "revenue": 20.0,
    },
    {
        "profile_id": "ana",
        "message_id": "3",
        "event": "Email Opened",
        "channel": "email",
        "timestamp": datetime(2026, 1, 7, 10, 0),
    },  # Wednesday 10:00 -> 58
    {
        "profile_id": "ana",
        "message_id": "4",
        "event": "Email Opened",
        "channel": "email",
        "timestamp": datetime(2026, 1, 7, 12, 0, 0, 1),
    },  # 1 µs after the cutoff: invisible
    {
        "profile_id": "ben",
        "message_id": "5",
        "event": "Wishlist Shared",
        "channel": "web",
        "timestamp": datetime(2026, 1, 6, 12, 0),
    },
]


def test_exact_arrays_left_padded() -> None:
    seq = build(HISTORY, SequenceConfig(length=4, category_buckets=8))
    assert list(seq.profile_ids) == ["ana", "ben"]
    assert seq.mask.tolist() == [[False, True, True, True], [False, False, False, True]]
    assert seq.tokens[0].tolist() == [
        0,
        token_of("Product Viewed", "web"),
        token_of("Order Completed", "app"),
        token_of("Email Opened", "email"),
    ]
    assert seq.tokens[1, -1] == token_of("other", "web")  # custom events share a token
    assert seq.hour_of_week[0].tolist() == [0, 9, 11, 58]
    np.testing.assert_allclose(
        seq.gap_previous[0], [0, 0, math.log1p(2), math.log1p(47)], rtol=1e-6
    )
    np.testing.assert_allclose(
        seq.gap_to_cutoff[0], [0, math.log1p(51), math.log1p(49), math.log1p(2)], rtol=1e-6
    )
    np.testing.assert_allclose(seq.value[0], [0, 0, math.log1p(20), 0], rtol=1e-6)
    assert seq.category[0, 0] == 0 and 1 <= seq.category[0, 1] <= 8
    assert seq.category[0, 2:].tolist() == [0, 0]
    assert seq.tokens.max() < VOCABULARY_SIZE


def test_truncation_keeps_the_most_recent_events() -> None:
    seq = build(HISTORY, SequenceConfig(length=2))
    assert seq.tokens[0].tolist() == [
        token_of("Order Completed", "app"),
        token_of("Email Opened", "email"),
    ]
    np.testing.assert_allclose(seq.gap_previous[0, 0], math.log1p(2), rtol=1e-6)  # from history


def test_category_hash_is_stable() -> None:
    first = build(HISTORY, SequenceConfig(length=4, category_buckets=1024)).category[0, 1]
    again = build(HISTORY[:1], SequenceConfig(length=4, category_buckets=1024)).category[0, -1]
    assert first == again


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SequenceConfig(length=0)
