"""Event sequences at a cutoff: the last N events of each profile as padded arrays for PyTorch.

Each event becomes a token for (event name x channel) plus four numbers: the log time gap to
the previous event and to the cutoff, the hour of the week, the order value and a hashed
category. Sequences are left-padded: the most recent event is always in the last position, and
``mask`` marks real events. Only events with ``timestamp <= at`` are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.aggregates import timestamp_literal
from features.contract import CANONICAL_EVENTS, CHANNELS

# Every event name the model distinguishes; anything else is "other".
EVENT_VOCABULARY: tuple[str, ...] = (*CANONICAL_EVENTS, "Identify", "Alias", "other")
PADDING_TOKEN = 0
VOCABULARY_SIZE = 1 + len(EVENT_VOCABULARY) * len(CHANNELS)  # tokens 1.. plus padding


@dataclass(frozen=True)
class SequenceConfig:
    length: int = 64  # events kept per profile (the most recent ones)
    category_buckets: int = 1024  # hashed category ids 1..buckets; 0 means no category

    def __post_init__(self) -> None:
        if self.length < 1 or self.category_buckets < 1:
            raise ValueError("sequence length and category_buckets must be at least 1")


@dataclass(frozen=True)
class Sequences:
    """Arrays of shape (profiles, length) aligned with ``profile_ids``."""

    profile_ids: np.ndarray  # (P,) profile ids, sorted
    tokens: np.ndarray  # (P, N) int32, 0 = padding
    gap_previous: np.ndarray  # (P, N) float32, log1p(hours since the profile's previous event)
    gap_to_cutoff: np.ndarray  # (P, N) float32, log1p(hours from the event to the cutoff)
    hour_of_week: np.ndarray  # (P, N) int32, 0 = Monday 00:00 UTC .. 167
    value: np.ndarray  # (P, N) float32, sign(revenue) * log1p(|revenue|), 0 without revenue
    category: np.ndarray  # (P, N) int32, hashed category 1..buckets, 0 = none
    mask: np.ndarray  # (P, N) bool, True where there is an event

    def __len__(self) -> int:
        return len(self.profile_ids)


def token_of(event: str, channel: str) -> int:
    """The token of an (event, channel) pair, as the SQL below computes it."""
    event_index = (
        EVENT_VOCABULARY.index(event) if event in EVENT_VOCABULARY else len(EVENT_VOCABULARY) - 1
    )
    return 1 + event_index * len(CHANNELS) + CHANNELS.index(channel)


def _values(column: str, values: tuple[str, ...]) -> str:
    """A VALUES relation (column, index) of ``values`` in order."""
    rows = ", ".join(f"('{v}', {i})" for i, v in enumerate(values))
    return f"(VALUES {rows}) AS t({column}, {column}_index)"


def sequences_sql(profile_events: str, at: datetime, config: SequenceConfig) -> str:
    """SQL: one row per (profile, one of its last N events), with ``slot`` = position from
    the end (0 = most recent)."""
    at_sql = timestamp_literal(at)
    other = len(EVENT_VOCABULARY) - 1
    return f"""
WITH visible AS (
    SELECT profile_id, message_id, timestamp, event, channel, revenue, category
    FROM {profile_events} WHERE timestamp <= {at_sql}
),
recent AS (
    -- Only the newest N + 1 events of a profile (ties included) can be among its last N or
    -- the one before them; sorting just those is much cheaper than sorting every event.
    SELECT v.* FROM visible AS v
    JOIN (
        SELECT profile_id, list_min(max(timestamp, {config.length + 1})) AS oldest_needed
        FROM visible GROUP BY profile_id
    ) AS t USING (profile_id)
    WHERE v.timestamp >= t.oldest_needed
),
ranked AS (
    -- One ordering, newest first: the previous event in time is the next row.
    SELECT *,
        lead(timestamp) OVER newest_first AS previous_at,
        row_number() OVER newest_first - 1 AS slot
    FROM recent
    WINDOW newest_first AS (PARTITION BY profile_id ORDER BY timestamp DESC, message_id DESC)
    QUALIFY slot < {config.length}
),
-- Names and categories are looked up once per distinct value, not once per event.
event_names AS (SELECT * FROM {_values("event", EVENT_VOCABULARY)}),
channel_names AS (SELECT * FROM {_values("channel", CHANNELS)}),
categories AS (
    SELECT category, (md5_number(category) % {config.category_buckets}) + 1 AS category_id
    FROM (SELECT DISTINCT category FROM ranked WHERE category IS NOT NULL)
)
SELECT r.profile_id, r.slot,
    1 + coalesce(e.event_index, {other}) * {len(CHANNELS)} + coalesce(c.channel_index, 0)
        AS token,
    ln(1 + coalesce(date_diff('microsecond', r.previous_at, r.timestamp), 0) / 3.6e9)
        AS gap_previous,
    ln(1 + date_diff('microsecond', r.timestamp, {at_sql}) / 3.6e9) AS gap_to_cutoff,
    (isodow(r.timestamp) - 1) * 24 + hour(r.timestamp) AS hour_of_week,
    sign(coalesce(r.revenue, 0)) * ln(1 + abs(coalesce(r.revenue, 0))) AS value,
    coalesce(k.category_id, 0) AS category
FROM ranked AS r
LEFT JOIN event_names AS e USING (event)
LEFT JOIN channel_names AS c USING (channel)
LEFT JOIN categories AS k USING (category)
ORDER BY r.profile_id, r.slot
"""


def to_sequences(rows: pa.Table, config: SequenceConfig) -> Sequences:
    """Pack the rows of :func:`sequences_sql` into left-padded arrays."""
    # Rows come sorted by profile: a profile's row index counts the changes of profile id.
    profiles = rows.column("profile_id").combine_chunks()
    starts = np.ones(len(profiles), dtype=bool)
    if len(profiles) > 1:
        starts[1:] = pc.not_equal(profiles[1:], profiles[:-1]).to_numpy(zero_copy_only=False)
    row_index = np.cumsum(starts) - 1
    profile_ids = profiles.filter(pa.array(starts)).to_numpy(zero_copy_only=False)
    length = config.length
    column_index = length - 1 - rows.column("slot").to_numpy().astype(np.int64)
    shape = (len(profile_ids), length)

    def packed(name: str, dtype: type) -> np.ndarray:
        array = np.zeros(shape, dtype=dtype)
        array[row_index, column_index] = rows.column(name).to_numpy()
        return array

    mask = np.zeros(shape, dtype=bool)
    mask[row_index, column_index] = True
    return Sequences(
        profile_ids=profile_ids,
        tokens=packed("token", np.int32),
        gap_previous=packed("gap_previous", np.float32),
        gap_to_cutoff=packed("gap_to_cutoff", np.float32),
        hour_of_week=packed("hour_of_week", np.int32),
        value=packed("value", np.float32),
        category=packed("category", np.int32),
        mask=mask,
    )
