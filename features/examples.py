"""Training examples: profiles described at many cutoffs, with labels that only look forward.

At each cutoff ``t`` a profile is described by its aggregates and its event sequence, both
computed from events at or before ``t`` with profiles formed only from identity links made at
or before ``t`` (a :class:`ProfileSource` provides that as-of view). Labels look at
``(t, t + horizon]`` and may follow identity links made later: an order placed after logging
in counts for the anonymous browsing that led to it.

- intent label ``ordered``: an ``Order Completed`` of the profile within the horizon;
- send labels: every message sent to the profile within ``send_window`` after ``t`` (a send is
  its first logged event: Sent, else Delivered or Bounced, tied by ``send_id``), its channel,
  hour of week, the logged propensity of that hour, and whether it was opened, clicked or
  tapped within 24 hours of the send.

Cutoffs are split by time into train / validation / test with a gap of at least the horizon,
so no label window crosses into the next split.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.aggregates import aggregates_sql, timestamp_literal
from features.contract import SEND_EVENTS
from features.sequences import SequenceConfig, Sequences, sequences_sql, to_sequences

ENGAGED = ("Email Opened", "Email Link Clicked", "SMS Link Clicked", "Push Notification Tapped")
ENGAGEMENT_WINDOW = timedelta(hours=24)
# The event columns that aggregates, sequences and activity read: all a cutoff's table holds.
FEATURE_EVENT_COLUMNS = (
    "profile_id",
    "message_id",
    "timestamp",
    "type",
    "event",
    "channel",
    "revenue",
    "category",
    "send_id",
)
_table_names = itertools.count()


@dataclass(frozen=True)
class ProfileKeys:
    """How a source's profile ids pack into integer keys and back, as SQL templates (``{}`` is
    the column). DuckDB groups, sorts and joins integers much faster than strings longer than
    its 12-byte inline limit. Keys sort as their ids do."""

    encode: str  # profile id -> key
    decode: str  # key -> profile id


class ProfileSource(Protocol):
    """Where profile events come from; identity resolution implements it."""

    # Set when events_as_of(keyed=True) can put integer keys in profile_id; None: never.
    profile_keys: ProfileKeys | None

    def events_as_of(
        self, connection: duckdb.DuckDBPyConnection, at: datetime, keyed: bool = False
    ) -> str:
        """Name of a relation: profile_id + canonical event columns, events at or before
        ``at``, profiles formed from identity links made at or before ``at``. With ``keyed``
        (only where ``profile_keys`` is set), profile_id holds each profile's key."""

    def label_profiles(self, connection: duckdb.DuckDBPyConnection, at: datetime) -> str:
        """Name of a relation (profile_id, label_profile_id): each as-of-``at`` profile and
        the profile its identifiers belong to in the final identity graph."""

    def label_events(self, connection: duckdb.DuckDBPyConnection) -> str:
        """Name of a relation: label_profile_id + canonical event columns, final identity."""


class IdentifierProfiles:
    """A provisional profile source with no identity stitching: each event's profile is its
    first identifier in the order user_id, email, phone, anonymous_id, device_id.

    Exact for logs with a single identifier (a transaction log keyed by customer id); for
    cross-channel data the identity graph's source replaces it.
    """

    _PROFILE = "coalesce(user_id, email, phone, anonymous_id, device_id)"
    profile_keys = None  # identifiers have no integer form worth the dense ranking it would take

    def __init__(self, events: str = "events", until: datetime | None = None):
        self.events = events
        self.until = until

    def _visible(self) -> str:
        if self.until is None:
            return self.events
        return f"(SELECT * FROM {self.events} WHERE timestamp <= {timestamp_literal(self.until)})"

    def events_as_of(
        self, connection: duckdb.DuckDBPyConnection, at: datetime, keyed: bool = False
    ) -> str:
        if keyed:
            raise ValueError("first-identifier profiles have no integer keys")
        return (
            f"(SELECT {self._PROFILE} AS profile_id, * FROM {self._visible()}"
            f" WHERE timestamp <= {timestamp_literal(at)})"
        )

    def label_profiles(self, connection: duckdb.DuckDBPyConnection, at: datetime) -> str:
        return (
            f"(SELECT DISTINCT {self._PROFILE} AS profile_id, {self._PROFILE} AS label_profile_id"
            f" FROM {self._visible()} WHERE timestamp <= {timestamp_literal(at)})"
        )

    def label_events(self, connection: duckdb.DuckDBPyConnection) -> str:
        return f"(SELECT {self._PROFILE} AS label_profile_id, * FROM {self._visible()})"


@dataclass(frozen=True)
class ExampleConfig:
    horizon_days: int = 14  # intent label: an order within this many days after the cutoff
    send_window_days: int = 7  # send labels: messages delivered this many days after the cutoff
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    def __post_init__(self) -> None:
        if self.horizon_days < 1 or self.send_window_days < 1:
            raise ValueError("horizon_days and send_window_days must be at least 1")


@dataclass(frozen=True)
class CutoffExamples:
    """All examples at one cutoff; rows of ``profiles`` align with ``sequences``."""

    cutoff: datetime
    profiles: pd.DataFrame  # aggregates + label_profile_id + ordered (bool)
    sequences: Sequences
    sends: pd.DataFrame  # profile_id, channel, hour_of_week, propensity, engaged, sent_at


@dataclass(frozen=True)
class ProfileEvents:
    """A cutoff's profile events (FEATURE_EVENT_COLUMNS) in a temporary table. Its profile_id
    holds the source's integer keys where it has them: read it through these methods, which
    give profile ids back."""

    table: str
    keys: ProfileKeys | None

    def decoded(self, sql: str) -> str:
        """``sql`` (a query over :attr:`table` with a profile_id column) with profile ids in
        profile_id again, in the same order."""
        if self.keys is None:
            return sql
        return (
            f"SELECT * REPLACE ({self.keys.decode.format('profile_id')} AS profile_id) FROM ({sql})"
        )

    def ids(self, connection: duckdb.DuckDBPyConnection, keys: np.ndarray) -> np.ndarray:
        """The profile ids of ``keys`` (values of the table's profile_id), in order."""
        return self._converted(connection, keys, self.keys and self.keys.decode)

    def keys_of(self, connection: duckdb.DuckDBPyConnection, ids: np.ndarray) -> np.ndarray:
        """The table's profile_id values of the profiles ``ids``, in order."""
        return self._converted(connection, ids, self.keys and self.keys.encode)

    @staticmethod
    def _converted(
        connection: duckdb.DuckDBPyConnection, values: np.ndarray, template: str | None
    ) -> np.ndarray:
        if template is None:
            return values
        relation = connection.from_arrow(pa.table({"v": values}))
        return relation.project(template.format("v")).to_arrow_table().column(0).to_numpy()

    def aggregates(self, connection: duckdb.DuckDBPyConnection, at: datetime) -> pd.DataFrame:
        """AGGREGATE_COLUMNS of every profile at ``at``, sorted by profile."""
        return connection.sql(self.decoded(aggregates_sql(self.table, at))).df()

    def sequences(
        self, connection: duckdb.DuckDBPyConnection, at: datetime, config: SequenceConfig
    ) -> Sequences:
        """The last ``config.length`` events of every profile at ``at``."""
        rows = connection.sql(sequences_sql(self.table, at, config)).to_arrow_table()
        sequences = to_sequences(rows, config)
        # Keys become ids once per profile, not once per row (up to config.length rows each).
        return replace(sequences, profile_ids=self.ids(connection, sequences.profile_ids))


@contextmanager
def profile_events_table(
    connection: duckdb.DuckDBPyConnection, source: ProfileSource, at: datetime
) -> Iterator[ProfileEvents]:
    """The profile events as of ``at``, computed once into a temporary table for everything
    that describes the profiles at ``at``: reading the source's relation directly would map
    every event to its profile again for each reader. Dropped on exit."""
    name = f"kairos_profile_events_{next(_table_names)}"
    keyed = source.profile_keys is not None
    connection.execute(
        f"CREATE TEMP TABLE {name} AS SELECT {', '.join(FEATURE_EVENT_COLUMNS)}"
        f" FROM {source.events_as_of(connection, at, keyed=keyed)}"
    )
    try:
        yield ProfileEvents(name, source.profile_keys)
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def build_examples(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    cutoff: datetime,
    config: ExampleConfig,
    events: ProfileEvents | None = None,
) -> CutoffExamples:
    """Features at ``cutoff`` and labels after it, for every profile seen by then.

    ``events``: the profile events at ``cutoff`` when the caller already holds them (see
    :func:`profile_events_table`); by default they are computed here."""
    if events is None:
        with profile_events_table(connection, source, cutoff) as table:
            return build_examples(connection, source, cutoff, config, table)
    aggregates = events.aggregates(connection, cutoff)
    sequences = events.sequences(connection, cutoff, config.sequence)
    labels = connection.sql(
        _intent_labels_sql(source, connection, cutoff, config.horizon_days)
    ).df()
    profiles = aggregates.merge(labels, on="profile_id", how="left", validate="one_to_one")
    profiles["ordered"] = profiles["ordered"].fillna(False).astype(bool)
    sends = connection.sql(_send_labels_sql(source, connection, cutoff, config)).df()
    order = pd.Index(profiles["profile_id"]).get_indexer(sequences.profile_ids)
    if (order < 0).any() or len(order) != len(profiles):
        raise RuntimeError("aggregates and sequences disagree on the profiles at the cutoff")
    return CutoffExamples(cutoff, profiles.iloc[order].reset_index(drop=True), sequences, sends)


def _intent_labels_sql(
    source: ProfileSource, connection: duckdb.DuckDBPyConnection, at: datetime, horizon_days: int
) -> str:
    at_sql = timestamp_literal(at)
    return f"""
SELECT p.profile_id, any_value(p.label_profile_id) AS label_profile_id,
       count(e.label_profile_id) > 0 AS ordered
FROM {source.label_profiles(connection, at)} AS p
LEFT JOIN {source.label_events(connection)} AS e
  ON e.label_profile_id = p.label_profile_id
 AND e.event = 'Order Completed'
 AND e.timestamp > {at_sql} AND e.timestamp <= {at_sql} + INTERVAL {horizon_days} DAY
GROUP BY p.profile_id
"""


def _send_labels_sql(
    source: ProfileSource,
    connection: duckdb.DuckDBPyConnection,
    at: datetime,
    config: ExampleConfig,
) -> str:
    at_sql = timestamp_literal(at)
    send_events = ", ".join(f"'{name}'" for name in sorted(SEND_EVENTS))
    engaged = ", ".join(f"'{name}'" for name in ENGAGED)
    events = source.label_events(connection)
    end = f"{at_sql} + INTERVAL {config.send_window_days} DAY"
    # Only sends with a record in the window can start in it; their first record may still be
    # earlier (a Sent before the cutoff, Delivered after), so each is read whole by its id.
    return f"""
WITH window_send_ids AS (
    SELECT DISTINCT send_id FROM {events}
    WHERE event IN ({send_events}) AND send_id IS NOT NULL
      AND timestamp > {at_sql} AND timestamp <= {end}
),
send_log AS (
    SELECT send_id, arg_min(label_profile_id, timestamp) AS label_profile_id,
           arg_min(channel, timestamp) AS channel, min(timestamp) AS sent_at,
           max(TRY_CAST(json_extract_string(properties, '$.send_hour_propensity') AS DOUBLE))
               AS propensity
    FROM {events}
    WHERE event IN ({send_events}) AND send_id IN (SELECT send_id FROM window_send_ids)
    GROUP BY send_id
),
sends AS (
    SELECT *, (isodow(sent_at) - 1) * 24 + hour(sent_at) AS hour_of_week
    FROM send_log
    WHERE sent_at > {at_sql} AND sent_at <= {end}
),
engagements AS (
    SELECT DISTINCT s.send_id
    FROM sends AS s JOIN {events} AS e USING (send_id)
    WHERE e.event IN ({engaged})
      AND e.timestamp > {at_sql}  -- implied by the next line; lets the scan skip the past
      AND e.timestamp >= s.sent_at
      AND e.timestamp <= s.sent_at + INTERVAL {int(ENGAGEMENT_WINDOW.total_seconds())} SECOND
)
SELECT p.profile_id, s.channel, s.hour_of_week, s.propensity, s.sent_at,
       s.send_id IN (SELECT send_id FROM engagements) AS engaged
FROM sends AS s
JOIN {source.label_profiles(connection, at)} AS p USING (label_profile_id)
ORDER BY p.profile_id, s.sent_at, s.send_id
"""


@dataclass(frozen=True)
class TimeSplit:
    train: list[datetime]
    validation: list[datetime]
    test: list[datetime]


def cutoff_schedule(first: datetime, last: datetime, stride: timedelta) -> list[datetime]:
    """Cutoffs from ``first`` to ``last`` (inclusive) every ``stride``."""
    if stride <= timedelta(0):
        raise ValueError("stride must be positive")
    cutoffs, at = [], first
    while at <= last:
        cutoffs.append(at)
        at += stride
    return cutoffs


def split_by_time(
    cutoffs: list[datetime], horizon: timedelta, validation: int = 1, test: int = 1
) -> TimeSplit:
    """The last ``test`` cutoffs test, the ``validation`` before them validate, the rest train,
    dropping cutoffs whose label window would reach the next split's first cutoff."""
    cutoffs = sorted(cutoffs)
    if len(cutoffs) < validation + test + 1:
        raise ValueError(
            f"need at least {validation + test + 1} cutoffs for a train/validation/test split, "
            f"got {len(cutoffs)}"
        )
    test_cutoffs = cutoffs[-test:]
    validation_cutoffs = [
        c for c in cutoffs[-(test + validation) : -test] if c + horizon <= test_cutoffs[0]
    ]
    first_held_out = validation_cutoffs[0] if validation_cutoffs else test_cutoffs[0]
    train_cutoffs = [c for c in cutoffs[: -(test + validation)] if c + horizon <= first_held_out]
    if not train_cutoffs or not validation_cutoffs:
        raise ValueError(
            "the cutoffs are too close together for a split with a gap of the horizon "
            f"({horizon}); use a longer range or a shorter horizon"
        )
    return TimeSplit(train_cutoffs, validation_cutoffs, test_cutoffs)


def iterate_examples(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    cutoffs: list[datetime],
    config: ExampleConfig,
) -> Iterator[CutoffExamples]:
    for cutoff in cutoffs:
        yield build_examples(connection, source, cutoff, config)
