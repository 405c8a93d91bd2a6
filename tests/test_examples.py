"""Training examples: forward-only labels, exact windows, time splits with a gap, no leakage."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.examples import (
    ExampleConfig,
    IdentifierProfiles,
    build_examples,
    cutoff_schedule,
    split_by_time,
)
from features.sequences import SequenceConfig
from features.store import EVENT_SCHEMA

T = datetime(2026, 3, 2, 12, 0)
CONFIG = ExampleConfig(horizon_days=7, send_window_days=2, sequence=SequenceConfig(length=8))


def event(message_id: str, user: str, event_name: str, at: datetime, **fields) -> dict:
    return {
        "message_id": message_id,
        "type": "track",
        "event": event_name,
        "channel": fields.pop("channel", "web"),
        "timestamp": at,
        "user_id": user,
        **fields,
    }


def connection_with(events: list[dict]) -> duckdb.DuckDBPyConnection:
    rows = [{name: e.get(name) for name in EVENT_SCHEMA.names} for e in events]
    connection = duckdb.connect()
    connection.register("events", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    return connection


HISTORY = [
    event("1", "ana", "Product Viewed", T - timedelta(days=1)),
    event("2", "ana", "Order Completed", T, revenue=10.0),  # at the cutoff: an input, not a label
    event("3", "ana", "Order Completed", T + timedelta(days=7), revenue=5.0),  # last instant
    event("4", "ben", "Product Viewed", T - timedelta(hours=1)),
    event("5", "ben", "Order Completed", T + timedelta(days=7, microseconds=1)),  # too late
    event(
        "6",
        "ana",
        "Email Delivered",
        T + timedelta(hours=1),
        channel="email",
        send_id="s1",
        properties='{"send_hour_propensity": 0.0416}',
    ),
    event("7", "ana", "Email Opened", T + timedelta(hours=24), channel="email", send_id="s1"),
    event("8", "ben", "SMS Delivered", T + timedelta(hours=2), channel="sms", send_id="s2"),
    event(
        "9",
        "ben",
        "SMS Link Clicked",
        T + timedelta(hours=26, seconds=1),
        channel="sms",
        send_id="s2",
    ),
    event("10", "ben", "Email Delivered", T + timedelta(days=3), channel="email", send_id="s3"),
    event("11", "cleo", "Product Viewed", T + timedelta(hours=3)),  # not yet a profile at T
]


def test_labels_look_forward_with_exact_windows() -> None:
    examples = build_examples(connection_with(HISTORY), IdentifierProfiles(), T, CONFIG)
    profiles = examples.profiles.set_index("profile_id")
    assert list(profiles.index) == ["ana", "ben"]
    assert profiles.loc["ana", "ordered"] and not profiles.loc["ben", "ordered"]
    assert profiles.loc["ana", "orders_total"] == 1  # the order at T is history
    sends = examples.sends
    assert sends[["profile_id", "channel", "hour_of_week", "engaged"]].values.tolist() == [
        ["ana", "email", 13, True],  # Monday 13:00, opened exactly 23 h later
        ["ben", "sms", 14, False],  # clicked 24 h + 1 s later: too late
    ]  # s3 is outside the 2-day send window
    assert sends["propensity"].tolist()[0] == pytest.approx(0.0416)
    assert list(examples.sequences.profile_ids) == ["ana", "ben"]


def test_a_send_belongs_to_the_window_of_its_first_record() -> None:
    """A send logged before the cutoff and delivered after it is history, not a label; one
    whose first record is the window's last instant is a label; an open 24 h later counts."""
    edge = T + timedelta(days=2)  # the send window's last instant
    history = [
        event("1", "ana", "Product Viewed", T - timedelta(days=1)),
        event("2", "ana", "Email Sent", T - timedelta(seconds=1), channel="email", send_id="old"),
        event(
            "3", "ana", "Email Delivered", T + timedelta(seconds=1), channel="email", send_id="old"
        ),
        event("4", "ana", "Email Opened", T + timedelta(hours=1), channel="email", send_id="old"),
        event("5", "ana", "Email Sent", edge, channel="email", send_id="edge"),
        event(
            "6",
            "ana",
            "Email Delivered",
            edge + timedelta(seconds=5),
            channel="email",
            send_id="edge",
        ),
        event(
            "7", "ana", "Email Opened", edge + timedelta(hours=24), channel="email", send_id="edge"
        ),
        event(
            "8",
            "ana",
            "Email Sent",
            edge + timedelta(microseconds=1),
            channel="email",
            send_id="late",
        ),
    ]
    examples = build_examples(connection_with(history), IdentifierProfiles(), T, CONFIG)
    sends = examples.sends
    assert sends[["profile_id", "sent_at", "engaged"]].values.tolist() == [["ana", edge, True]]


def test_until_hides_later_events_labels_included() -> None:
    source = IdentifierProfiles(until=T + timedelta(days=3))
    examples = build_examples(connection_with(HISTORY), source, T, CONFIG)
    assert not examples.profiles.set_index("profile_id").loc["ana", "ordered"]


event_names = st.sampled_from(
    ["Product Viewed", "Order Completed", "Email Opened", "Product Added", "Identify"]
)


@settings(max_examples=15, deadline=None)
@given(
    later=st.lists(
        st.tuples(
            st.sampled_from(["ana", "ben", "cleo"]),
            event_names,
            st.integers(min_value=1, max_value=10**7),
        ),
        max_size=12,
    )
)
def test_inputs_at_the_cutoff_ignore_anything_appended_later(later: list) -> None:
    base = build_examples(connection_with(HISTORY[:5]), IdentifierProfiles(), T, CONFIG)
    extra = [
        event(f"x{i}", user, name, T + timedelta(microseconds=offset), revenue=1.0)
        for i, (user, name, offset) in enumerate(later)
    ]
    grown = build_examples(connection_with(HISTORY[:5] + extra), IdentifierProfiles(), T, CONFIG)
    features = [c for c in base.profiles.columns if c not in ("ordered", "label_profile_id")]
    assert grown.profiles[features].equals(base.profiles[features])
    for name in ("tokens", "gap_previous", "gap_to_cutoff", "hour_of_week", "value", "mask"):
        assert (getattr(grown.sequences, name) == getattr(base.sequences, name)).all(), name


def test_split_keeps_a_horizon_gap_between_train_validation_and_test() -> None:
    cutoffs = cutoff_schedule(datetime(2026, 1, 5), datetime(2026, 4, 27), timedelta(days=7))
    split = split_by_time(cutoffs, timedelta(days=14), validation=2, test=2)
    assert max(split.train) + timedelta(days=14) <= min(split.validation)
    assert max(split.validation) + timedelta(days=14) <= min(split.test)
    assert split.test == cutoffs[-2:]
    assert not set(split.train) & set(split.validation) | set(split.test) & set(split.train)


def test_split_explains_when_it_cannot() -> None:
    with pytest.raises(ValueError, match="need at least 3 cutoffs"):
        split_by_time([datetime(2026, 1, 1)], timedelta(days=7))
    close = cutoff_schedule(datetime(2026, 1, 1), datetime(2026, 1, 3), timedelta(days=1))
    with pytest.raises(ValueError, match="too close together"):
        split_by_time(close, timedelta(days=7))
