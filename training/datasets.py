"""Training data: profiles at many cutoffs as arrays for the model, the baselines and scoring.

Every array comes from ``features.examples`` / ``features.sequences`` / ``features.aggregates``
through one :class:`~features.examples.ProfileSource` (chosen in one place,
``features.profile_source.default_profile_source``), plus two point-in-time histograms built here:

- ``activity`` (P, 4, 168): the profile's history per hour of week at the cutoff, one row per
  ``ACTIVITY_KINDS`` (see :func:`activity_sql`): events of what the person did (site, app,
  orders, identify), opens/clicks/taps at their hour, distinct active clock hours, and engaged
  messages at their send hour. They feed the send-window head and the hour heuristics.
- ``reached`` (P, 3): whether the profile was ever sent a message on email, sms, push.

``until`` bounds everything: the source never shows an event after it, labels included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from features.aggregates import timestamp_literal
from features.contract import ENGAGEMENT_EVENTS, SEND_EVENTS
from features.examples import (
    CutoffExamples,
    ExampleConfig,
    ProfileEvents,
    ProfileSource,
    TimeSplit,
    build_examples,
    profile_events_table,
)
from features.identity import tables
from features.sequences import VOCABULARY_SIZE, SequenceConfig
from training.config import DataConfig
from training.model import ACTIVITY_KINDS, CHANNELS, HOURS_PER_WEEK

logger = logging.getLogger(__name__)

SEQUENCE_ARRAYS = (
    "tokens",
    "gap_previous",
    "gap_to_cutoff",
    "hour_of_week",
    "value",
    "category",
    "mask",
)
# Messages the brand sent and complaints are not the person's own timing.
_NOT_ACTIVITY = tuple(
    sorted(SEND_EVENTS | {"Unsubscribed", "Email Marked as Spam", "SMS Opted Out"})
)
_LABEL_COLUMNS = ("ordered", "label_profile_id")


# --- cutoffs ---------------------------------------------------------------------------------


def event_range(connection: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime]:
    """First and last event timestamp in the store (UTC, naive)."""
    rows = connection.sql("SELECT min(timestamp), max(timestamp), count(*) FROM events").fetchall()
    first, last, count = rows[0]
    if not count:
        raise ValueError("the event store is empty; run `kairos ingest` first")
    return first, last


def default_until(last_event: datetime) -> datetime:
    """Midnight UTC at the start of the last event's day: the last whole day is dropped so
    that cutoffs fall on midnights, which daily simulator truth and daily reports expect."""
    return datetime(last_event.year, last_event.month, last_event.day)


def label_gap(data: DataConfig) -> timedelta:
    """How far labels look past a cutoff: the intent horizon or the send window plus 24 h."""
    return max(timedelta(days=data.horizon_days), timedelta(days=data.send_window_days + 1))


def plan_cutoffs(first_event: datetime, until: datetime, data: DataConfig) -> TimeSplit:
    """Cutoffs every ``stride_days`` ending ``label_gap`` before ``until``; the last
    ``test_cutoffs`` test, the latest ``validation_cutoffs`` whose labels end by the first test
    cutoff validate, and up to ``max_train_cutoffs`` whose labels end by the first validation
    cutoff train. No label window crosses into a later split."""
    until = _naive_utc(until)
    gap = label_gap(data)
    stride = timedelta(days=data.stride_days)
    earliest = first_event + timedelta(days=data.min_history_days)
    cutoffs, at = [], until - gap
    while at >= earliest:
        cutoffs.append(at)
        at -= stride
    cutoffs.reverse()
    if len(cutoffs) < data.test_cutoffs + 2:
        raise ValueError(
            f"events from {first_event} to {until} leave {len(cutoffs)} cutoffs every "
            f"{data.stride_days} days (labels need {gap.days} days after each); need at least "
            f"{data.test_cutoffs + 2}. Use a shorter data.stride_days, data.horizon_days or "
            "data.min_history_days, or more history."
        )
    test = cutoffs[-data.test_cutoffs :]
    earlier = cutoffs[: -data.test_cutoffs]
    validation = [c for c in earlier if c + gap <= test[0]][-data.validation_cutoffs :]
    if not validation:
        raise ValueError("no validation cutoff fits before the test cutoff; use more history")
    train = [c for c in earlier if c + gap <= validation[0]][-data.max_train_cutoffs :]
    if not train:
        raise ValueError(
            f"no training cutoff fits before the validation cutoff {validation[0]}; need "
            f"{gap.days} more days of history, or a shorter data.horizon_days / stride_days"
        )
    return TimeSplit(train, validation, test)


# --- point-in-time extras --------------------------------------------------------------------


def _names(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


def activity_sql(profile_events: str, at: datetime) -> str:
    """SQL: profile_id, kind (ACTIVITY_KINDS index), hour_of_week, events; at or before at.

    0 events of the person's own activity (site, app, orders, identify), 1 opens, clicks and
    taps, each at its own hour; 2 distinct clock hours with own activity (a session counts
    once, however many pages it has); 3 engaged messages (a send opened, clicked or tapped
    counts once) at the hour the message was sent, or at the engagement's own hour when its
    send is not in the log."""
    at_sql = timestamp_literal(at)
    own = f"event NOT IN ({_names(_NOT_ACTIVITY)}) AND event NOT IN ({_names(ENGAGEMENT_EVENTS)})"
    engaged = f"event IN ({_names(ENGAGEMENT_EVENTS)})"
    return f"""
WITH e AS (
    SELECT profile_id, event, timestamp, send_id FROM {profile_events}
    WHERE timestamp <= {at_sql}
),
sent AS (
    SELECT send_id, min(timestamp) AS sent_at FROM e
    WHERE event IN ({_names(SEND_EVENTS)}) AND send_id IS NOT NULL
    GROUP BY send_id
),
engaged_sends AS (
    SELECT profile_id, send_id, min(timestamp) AS timestamp FROM e
    WHERE {engaged} AND send_id IS NOT NULL
    GROUP BY profile_id, send_id
    UNION ALL
    SELECT profile_id, NULL AS send_id, timestamp FROM e WHERE {engaged} AND send_id IS NULL
),
marks AS (
    SELECT profile_id, CASE WHEN {engaged} THEN 1 ELSE 0 END AS kind, timestamp AS moment FROM e
    WHERE event NOT IN ({_names(_NOT_ACTIVITY)})
    UNION ALL
    SELECT DISTINCT profile_id, 2 AS kind, date_trunc('hour', timestamp) AS moment FROM e
    WHERE {own}
    UNION ALL
    SELECT g.profile_id, 3 AS kind, coalesce(s.sent_at, g.timestamp) AS moment
    FROM engaged_sends AS g LEFT JOIN sent AS s USING (send_id)
)
SELECT profile_id, kind, (isodow(moment) - 1) * 24 + hour(moment) AS hour_of_week,
       count(*) AS events
FROM marks
GROUP BY ALL
"""


def reached_sql(profile_events: str, at: datetime) -> str:
    """SQL: profile_id, channel: the channels the profile was ever sent a message on."""
    return f"""
SELECT DISTINCT profile_id, channel FROM {profile_events}
WHERE timestamp <= {timestamp_literal(at)} AND event IN ({_names(SEND_EVENTS)})
"""


def _activity_arrays(
    connection: duckdb.DuckDBPyConnection,
    events: ProfileEvents,
    at: datetime,
    profile_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    index = pd.Index(events.keys_of(connection, profile_ids))  # rows below are keyed
    activity = np.zeros((len(profile_ids), len(ACTIVITY_KINDS), HOURS_PER_WEEK), np.float32)
    rows = connection.sql(activity_sql(events.table, at)).df()
    row = index.get_indexer(rows["profile_id"])
    keep = row >= 0
    np.add.at(
        activity,
        (row[keep], rows["kind"].to_numpy()[keep], rows["hour_of_week"].to_numpy()[keep]),
        rows["events"].to_numpy(np.float32)[keep],
    )
    reached = np.zeros((len(profile_ids), len(CHANNELS)), dtype=bool)
    rows = connection.sql(reached_sql(events.table, at)).df()
    rows = rows[rows["channel"].isin(CHANNELS)]
    row = index.get_indexer(rows["profile_id"])
    channel = np.array([CHANNELS.index(c) for c in rows["channel"]], dtype=np.int64)
    reached[row[row >= 0], channel[row >= 0]] = True
    return activity, reached


# --- the example set -------------------------------------------------------------------------


@dataclass
class ExampleSet:
    """Profiles at one or more cutoffs, row-aligned arrays; sends grouped by row."""

    profiles: pd.DataFrame  # profile_id, cutoff, aggregates, ordered (labels may be absent)
    arrays: dict[str, np.ndarray]  # SEQUENCE_ARRAYS (P, T), activity (P, K, 168), reached (P, 3)
    sends: pd.DataFrame  # row, channel (index), hour_of_week, propensity, engaged; sorted by row
    send_offsets: np.ndarray = field(init=False)  # (P + 1,) sends of row i: offsets[i]:[i + 1]

    def __post_init__(self) -> None:
        counts = np.bincount(self.sends["row"].to_numpy(np.int64), minlength=len(self))
        self.send_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.profiles)

    @property
    def has_sends(self) -> bool:
        return len(self.sends) > 0

    @property
    def has_labels(self) -> bool:
        return "ordered" in self.profiles.columns

    def subset(self, rows: np.ndarray) -> ExampleSet:
        rows = np.asarray(rows, dtype=np.int64)
        new_row = np.full(len(self), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        sends = self.sends[new_row[self.sends["row"].to_numpy()] >= 0].copy()
        sends["row"] = new_row[sends["row"].to_numpy()]
        return ExampleSet(
            self.profiles.iloc[rows].reset_index(drop=True),
            {name: array[rows] for name, array in self.arrays.items()},
            sends.sort_values("row", kind="stable").reset_index(drop=True),
        )

    def batch_sends(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``rows``, index into ``sends``) of every send of the given rows."""
        starts, ends = self.send_offsets[rows], self.send_offsets[rows + 1]
        counts = ends - starts
        position = np.repeat(np.arange(len(rows)), counts)
        offsets_in = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return position, np.repeat(starts, counts) + offsets_in

    @staticmethod
    def concat(parts: list[ExampleSet]) -> ExampleSet:
        if not parts:
            raise ValueError("no examples to concatenate")
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        sends = []
        for part, offset in zip(parts, offsets, strict=True):
            s = part.sends.copy()
            s["row"] = s["row"].to_numpy() + offset
            sends.append(s)
        return ExampleSet(
            pd.concat([p.profiles for p in parts], ignore_index=True),
            {name: np.concatenate([p.arrays[name] for p in parts]) for name in parts[0].arrays},
            pd.concat(sends, ignore_index=True),
        )


def _send_frame(sends: pd.DataFrame, profile_ids: np.ndarray) -> pd.DataFrame:
    row = pd.Index(profile_ids).get_indexer(sends["profile_id"])
    keep = (row >= 0) & sends["channel"].isin(CHANNELS).to_numpy()
    frame = pd.DataFrame(
        {
            "row": row[keep].astype(np.int64),
            "channel": np.array(
                [CHANNELS.index(c) for c in sends["channel"][keep]], dtype=np.int64
            ),
            "hour_of_week": sends["hour_of_week"][keep].to_numpy(np.int64),
            "propensity": pd.to_numeric(sends["propensity"][keep]).to_numpy(np.float64),
            "engaged": sends["engaged"][keep].to_numpy(bool),
            "sent_at": sends["sent_at"][keep].to_numpy(),
        }
    )
    return frame.sort_values(["row", "sent_at"], kind="stable").reset_index(drop=True)


def examples_at(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    cutoff: datetime,
    data: DataConfig,
) -> ExampleSet:
    """Features and labels of every profile seen by ``cutoff``."""
    config = ExampleConfig(
        horizon_days=data.horizon_days,
        send_window_days=data.send_window_days,
        sequence=SequenceConfig(data.sequence_length, data.category_buckets),
    )
    with profile_events_table(connection, source, cutoff) as events:
        examples: CutoffExamples = build_examples(connection, source, cutoff, config, events)
        profile_ids = examples.sequences.profile_ids
        activity, reached = _activity_arrays(connection, events, cutoff, profile_ids)
    profiles = examples.profiles.copy()
    profiles.insert(1, "cutoff", pd.Timestamp(cutoff))
    arrays = {name: getattr(examples.sequences, name) for name in SEQUENCE_ARRAYS}
    arrays.update(activity=activity, reached=reached)
    return ExampleSet(profiles, arrays, _send_frame(examples.sends, profile_ids))


def features_at(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    at: datetime,
    sequence_length: int,
    category_buckets: int,
) -> ExampleSet:
    """Features only (no labels, nothing after ``at`` read): what scoring needs."""
    config = SequenceConfig(sequence_length, category_buckets)
    with profile_events_table(connection, source, at) as events:
        aggregates = events.aggregates(connection, at)
        sequences = events.sequences(connection, at, config)
        activity, reached = _activity_arrays(connection, events, at, sequences.profile_ids)
    order = pd.Index(aggregates["profile_id"]).get_indexer(sequences.profile_ids)
    if (order < 0).any() or len(order) != len(aggregates):
        raise RuntimeError("aggregates and sequences disagree on the profiles at the cutoff")
    profiles = aggregates.iloc[order].reset_index(drop=True)
    profiles.insert(1, "cutoff", pd.Timestamp(at))
    arrays = {name: getattr(sequences, name) for name in SEQUENCE_ARRAYS}
    arrays.update(activity=activity, reached=reached)
    empty = pd.DataFrame({"row": pd.Series([], dtype=np.int64)})
    return ExampleSet(profiles, arrays, empty)


def store_fingerprint(connection: duckdb.DuckDBPyConnection) -> str:
    """Changes whenever the stored events (count, range, ids) or the identity graph change."""
    rows = connection.sql(
        "SELECT count(*), min(timestamp), max(timestamp), sum(hash(message_id)) FROM events"
    ).fetchall()
    if tables.has_state(connection):  # merges and unmerges change the profiles
        rows += connection.sql("SELECT count(*), max(seq) FROM merge_log").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def build_split(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    cutoffs: list[datetime],
    data: DataConfig,
    seed: int = 0,
    cache_dir: Path | None = None,
    on_cutoff: Callable[[datetime], Any] | None = None,
    max_profiles_per_cutoff: int = 0,
) -> ExampleSet:
    """Examples at every cutoff in ``cutoffs``, concatenated; with ``max_profiles_per_cutoff``
    a seeded random subsample of that many profiles per cutoff (meant for training only).

    With ``cache_dir`` each cutoff's examples are kept there (keyed by the stored events, the
    source, the cutoff and the label settings), so tuning trials and re-evaluations of the same
    split do not recompute the point-in-time SQL."""
    fingerprint = store_fingerprint(connection) if cache_dir is not None else ""
    parts = []
    for index, cutoff in enumerate(cutoffs):
        if cache_dir is None:
            part = examples_at(connection, source, cutoff, data)
        else:
            key = _cache_key(fingerprint, source, cutoff, data)
            part = _read_cached(cache_dir / key, data.sequence_length)
            if part is None:
                part = examples_at(connection, source, cutoff, data)
                _write_cached(cache_dir / key, part)
        if max_profiles_per_cutoff and len(part) > max_profiles_per_cutoff:
            rng = np.random.default_rng([seed, index])
            part = part.subset(
                np.sort(rng.choice(len(part), max_profiles_per_cutoff, replace=False))
            )
        parts.append(part)
        if on_cutoff is not None:
            on_cutoff(cutoff)
    return ExampleSet.concat(parts)


def _cache_key(fingerprint: str, source: ProfileSource, cutoff: datetime, data: DataConfig) -> str:
    """The cache entry of one cutoff. The sequence length is not part of it: an entry with
    longer sequences serves shorter ones (the newest events are the last columns)."""
    settings = {
        "fingerprint": fingerprint,
        "source": type(source).__name__,
        "until": str(getattr(source, "until", None)),
        "cutoff": cutoff.isoformat(),
        "horizon_days": data.horizon_days,
        "send_window_days": data.send_window_days,
        "category_buckets": data.category_buckets,
        "version": _CACHE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    return f"{cutoff:%Y%m%dT%H%M%S}-{digest}"


_CACHE_VERSION = 3  # 2: activity has four rows (ACTIVITY_KINDS); 3: year-long order windows


def _read_cached(folder: Path, sequence_length: int) -> ExampleSet | None:
    if not (folder / "complete").exists():
        return None
    with np.load(folder / "arrays.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    if arrays["mask"].shape[1] < sequence_length:
        return None  # built with shorter sequences: rebuild
    for name in SEQUENCE_ARRAYS:
        arrays[name] = np.ascontiguousarray(arrays[name][:, -sequence_length:])
    return ExampleSet(
        pd.read_parquet(folder / "profiles.parquet"),
        arrays,
        pd.read_parquet(folder / "sends.parquet"),
    )


def _write_cached(folder: Path, part: ExampleSet) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "complete").unlink(missing_ok=True)
    part.profiles.to_parquet(folder / "profiles.parquet")
    part.sends.to_parquet(folder / "sends.parquet")
    np.savez(folder / "arrays.npz", **part.arrays)
    (folder / "complete").touch()  # written last: a half-written entry is never read


# --- static features: aggregates -> a standardised matrix -------------------------------------

_NOT_FEATURES = {"profile_id", "cutoff", "label_profile_id", "ordered", "last_viewed_category"}


@dataclass(frozen=True)
class FeatureSpec:
    """How a profile's aggregates become the model's static vector, fitted on training rows and
    stored with the model. Values: signed log1p, NULL -> 0 plus an indicator, standardised."""

    columns: tuple[str, ...]  # aggregate (and derived) columns, in order
    missing: tuple[str, ...]  # columns that get a "was NULL" indicator
    mean: tuple[float, ...]  # per output feature
    std: tuple[float, ...]
    sequence_length: int
    category_buckets: int
    vocabulary_size: int = VOCABULARY_SIZE
    horizon_days: int = 14

    @property
    def width(self) -> int:
        return len(self.columns) + len(self.missing)

    @classmethod
    def fit(cls, profiles: pd.DataFrame, data: DataConfig) -> FeatureSpec:
        raw = _raw_features(profiles)
        columns = tuple(raw.columns)
        missing = tuple(c for c in columns if raw[c].isna().any())
        matrix = _matrix(raw, columns, missing)
        mean, std = matrix.mean(axis=0), matrix.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(
            columns,
            missing,
            tuple(map(float, mean)),
            tuple(map(float, std)),
            data.sequence_length,
            data.category_buckets,
            horizon_days=data.horizon_days,
        )

    def transform(self, profiles: pd.DataFrame) -> np.ndarray:
        """(P, width) float32."""
        raw = _raw_features(profiles)
        absent = [c for c in self.columns if c not in raw.columns]
        if absent:
            raise ValueError(
                f"profiles lack feature column(s) {', '.join(absent)}; have: "
                f"{', '.join(raw.columns)}"
            )
        matrix = _matrix(raw, self.columns, self.missing)
        return ((matrix - np.array(self.mean)) / np.array(self.std)).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "missing": list(self.missing),
            "mean": list(self.mean),
            "std": list(self.std),
            "sequence_length": self.sequence_length,
            "category_buckets": self.category_buckets,
            "vocabulary_size": self.vocabulary_size,
            "horizon_days": self.horizon_days,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSpec:
        return cls(
            tuple(values["columns"]),
            tuple(values["missing"]),
            tuple(values["mean"]),
            tuple(values["std"]),
            int(values["sequence_length"]),
            int(values["category_buckets"]),
            int(values["vocabulary_size"]),
            int(values["horizon_days"]),
        )


def _raw_features(profiles: pd.DataFrame) -> pd.DataFrame:
    """Numeric aggregates plus tenure and inactivity in days at the cutoff."""
    for column in ("cutoff", "first_seen_at", "last_seen_at"):
        if column not in profiles.columns:
            raise ValueError(
                f"profiles lack column {column!r}; have: {', '.join(profiles.columns)}"
            )
    cutoff = pd.to_datetime(profiles["cutoff"])
    out = {
        "days_since_first_seen": (cutoff - pd.to_datetime(profiles["first_seen_at"]))
        / pd.Timedelta(days=1),
        "days_since_last_seen": (cutoff - pd.to_datetime(profiles["last_seen_at"]))
        / pd.Timedelta(days=1),
    }
    for column in profiles.columns:
        if column in _NOT_FEATURES or column in out:
            continue
        series = profiles[column]
        if pd.api.types.is_bool_dtype(series) or (
            pd.api.types.is_numeric_dtype(series)
            and not pd.api.types.is_datetime64_any_dtype(series)
        ):
            out[column] = pd.to_numeric(series.astype("float64"), errors="coerce")
    return pd.DataFrame(out, index=profiles.index)


def _matrix(raw: pd.DataFrame, columns: tuple[str, ...], missing: tuple[str, ...]) -> np.ndarray:
    values = raw.loc[:, list(columns)].to_numpy(np.float64)
    indicators = raw.loc[:, list(missing)].isna().to_numpy(np.float64)
    values = np.sign(values) * np.log1p(np.abs(values))
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return np.concatenate([values, indicators], axis=1)


# --- batches for the model ---------------------------------------------------------------------


def model_inputs(examples: ExampleSet, spec: FeatureSpec, rows: np.ndarray | None = None):
    """A batch dict of torch tensors for the given rows (all rows when None)."""
    import torch

    rows = np.arange(len(examples)) if rows is None else rows
    arrays = examples.arrays
    batch = {
        "tokens": torch.from_numpy(arrays["tokens"][rows].astype(np.int64)),
        "hour_of_week": torch.from_numpy(arrays["hour_of_week"][rows].astype(np.int64)),
        "category": torch.from_numpy(arrays["category"][rows].astype(np.int64)),
        "gap_previous": torch.from_numpy(arrays["gap_previous"][rows]),
        "gap_to_cutoff": torch.from_numpy(arrays["gap_to_cutoff"][rows]),
        "value": torch.from_numpy(arrays["value"][rows]),
        "mask": torch.from_numpy(arrays["mask"][rows]),
        "activity": torch.from_numpy(arrays["activity"][rows]),
    }
    static = examples.arrays.get("static")
    if static is not None:
        batch["static"] = torch.from_numpy(static[rows])
    else:
        batch["static"] = torch.from_numpy(spec.transform(examples.profiles.iloc[rows]))
    return batch


def attach_static(examples: ExampleSet, spec: FeatureSpec) -> None:
    """Compute the static matrix once for a whole set (training reads it batch by batch)."""
    examples.arrays["static"] = spec.transform(examples.profiles)


def _naive_utc(at: datetime) -> datetime:
    if at.tzinfo is not None:
        return at.astimezone(UTC).replace(tzinfo=None)
    return at


def parse_instant(text: str) -> datetime:
    """An ISO timestamp as naive UTC (an offset is converted; none means UTC)."""
    try:
        return _naive_utc(datetime.fromisoformat(text))
    except ValueError as error:
        raise ValueError(
            f"not an ISO timestamp: {text!r} (e.g. 2011-11-09 or 2026-03-01T00:00:00Z)"
        ) from error


def describe_split(split: TimeSplit) -> dict[str, str]:
    def span(cutoffs: list[datetime]) -> str:
        return f"{cutoffs[0]:%Y-%m-%d %H:%M} .. {cutoffs[-1]:%Y-%m-%d %H:%M} ({len(cutoffs)})"

    return {
        "train": span(split.train),
        "validation": span(split.validation),
        "test": span(split.test),
    }


def epochs_for_examples(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
