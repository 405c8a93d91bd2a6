"""The simulator's ground truth as an oracle for the evaluation (simulated data only).

A profile is mapped to the true person its identifier belongs to (an identifier shared by
several people maps to none). The oracle then gives the exact probabilities the simulator drew
against: P(order within the horizon) and P(engage | send on channel c at hour h). For intent
there are three, each knowing less: the realised one knows the person's future intent path;
the present one their intent state and propensities before the cutoff, but not the future; the
history one only what the person's events before the cutoff show, all devices together (the
ceiling of any model that reads the past, with perfect identity).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.simulator.config import SimulationConfig
from features.simulator.history_filter import OBSERVED_COLUMNS
from training.model import CHANNELS, HOURS_PER_WEEK

_IDENTIFIER_COLUMNS = ("user_id", "emails", "phones", "anonymous_ids", "device_ids")
_TRUTH_COLUMNS = (
    "daily_state",
    "daily_clicks",
    "intent_propensity",
    "purchase_propensity",
    "person_id",
    *_IDENTIFIER_COLUMNS,
    "hour_of_week_preference",
    "hour_preference_effect",
    "engagement_effect",
    "daily_engagement",
    "engagement_final",
    "email_valid",
    "push_receive_probability",
    "push_device_id",
    "affinity_email",
    "affinity_sms",
    "affinity_push",
    "daily_purchase_hazard",
)


@dataclass
class SimulatorTruth:
    truth: pd.DataFrame  # one row per true person
    start: datetime  # naive UTC midnight of simulated day 0
    days: int
    identifier_person: dict[str, int]  # identifier value -> row of ``truth`` (unique only)
    identifier_type: dict[str, str]  # identifier value -> its truth column
    config: SimulationConfig  # the simulation's rates
    # (oracle, day, horizon) -> its probability for every person: the history filter takes
    # about a minute for 20,000 people, and one window may be asked for more than once.
    _computed: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> SimulatorTruth:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"truth file {path} not found (kairos simulate writes it)")
        # Truth files written before the browsing columns existed lack what the history filter
        # reads; everything else still works with them.
        names = set(pq.read_schema(path).names)
        optional = [c for c in OBSERVED_COLUMNS if c in names and c not in _TRUTH_COLUMNS]
        table = pq.read_table(path, columns=[*_TRUTH_COLUMNS, *optional])
        metadata = json.loads((table.schema.metadata or {}).get(b"kairos.simulation", b"{}"))
        if "start" not in metadata:
            raise ValueError(f"{path} lacks the kairos.simulation metadata; is it a truth file?")
        start = datetime.fromisoformat(metadata["start"]).astimezone(UTC).replace(tzinfo=None)
        truth = table.to_pandas()
        owners: dict[str, set[int]] = {}
        kinds: dict[str, str] = {}
        for column in _IDENTIFIER_COLUMNS:
            values = truth[column]
            for row, value in enumerate(values.tolist()):
                if isinstance(value, str):
                    items = [value]
                elif value is None or isinstance(value, float):
                    items = []  # a missing user id
                else:
                    items = list(value)
                for item in items:
                    if isinstance(item, str):
                        owners.setdefault(item, set()).add(row)
                        kinds[item] = column
        unique = {value: next(iter(rows)) for value, rows in owners.items() if len(rows) == 1}
        config = SimulationConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in metadata["config"].items()}
        )
        return cls(truth, start, int(metadata["days"]), unique, kinds, config)

    def add_profiles(self, identifiers: pd.DataFrame) -> None:
        """Map identity-resolved profiles to true people too, from (profile_id, identifier) rows:
        a profile is the person owning most of its identifiers, of the kind of its strongest
        identifier (user id, then email, phone, anonymous id, device)."""
        frame = identifiers.assign(
            person=identifiers["identifier"].map(self.identifier_person),
            kind=identifiers["identifier"].map(self.identifier_type),
        ).dropna(subset=["person", "profile_id"])
        if frame.empty:
            return
        person = frame.groupby("profile_id")["person"].agg(lambda people: people.mode().iat[0])
        rank = {kind: r for r, kind in enumerate(_IDENTIFIER_COLUMNS)}
        kind = frame.groupby("profile_id")["kind"].agg(lambda kinds: min(kinds, key=rank.get))
        self.identifier_person.update({p: int(row) for p, row in person.items()})
        self.identifier_type.update(kind.to_dict())

    def person_rows(self, profile_ids: np.ndarray) -> np.ndarray:
        """(P,) row of the true person behind each profile id, -1 when unknown or shared."""
        return np.array([self.identifier_person.get(p, -1) for p in profile_ids], dtype=np.int64)

    def identifier_kinds(self, profile_ids: np.ndarray) -> np.ndarray:
        return np.array([self.identifier_type.get(p, "") for p in profile_ids], dtype=object)

    def day_of(self, at: datetime) -> int:
        """Simulated day index of an instant (day 0 starts at ``start``)."""
        return int((at - self.start) // timedelta(days=1))

    def conversion_probability(
        self, rows: np.ndarray, cutoff: datetime, horizon_days: int
    ) -> np.ndarray:
        """P(an order in (cutoff, cutoff + horizon]) of each person (NaN for row -1).

        Exact when the cutoff is a simulated midnight: the window is days [d, d + horizon)."""
        from features.simulate import true_conversion_probability

        return self._per_person(
            rows,
            cutoff,
            horizon_days,
            "path",
            lambda day, h: true_conversion_probability(self.truth, day, h),
        )

    def present_conversion_probability(
        self, rows: np.ndarray, cutoff: datetime, horizon_days: int
    ) -> np.ndarray:
        """Like ``conversion_probability``, knowing each person's intent state and clicks
        before the cutoff but not their future path (NaN for row -1)."""
        from features.simulate import present_conversion_probability

        return self._per_person(
            rows,
            cutoff,
            horizon_days,
            "present",
            lambda day, h: present_conversion_probability(self.truth, day, h, self.config),
        )

    @property
    def has_observed_history(self) -> bool:
        return set(OBSERVED_COLUMNS) <= set(self.truth.columns)

    def history_conversion_probability(
        self, rows: np.ndarray, cutoff: datetime, horizon_days: int
    ) -> np.ndarray:
        """Like ``conversion_probability``, knowing only what each person's events show before
        the cutoff, all their devices together (NaN for row -1)."""
        from features.simulate import history_conversion_probability

        return self._per_person(
            rows,
            cutoff,
            horizon_days,
            "history",
            lambda day, h: history_conversion_probability(self.truth, day, h, self.config),
        )

    def _per_person(
        self,
        rows: np.ndarray,
        cutoff: datetime,
        horizon_days: int,
        oracle: str,
        probability: Callable[[int, int], np.ndarray],
    ) -> np.ndarray:
        """``probability(day, horizon)`` of every true person, for the window after ``cutoff``
        (cut at the last simulated day), picked by ``rows`` (NaN for -1); computed once per
        ``oracle`` and window."""
        day = self.day_of(cutoff)
        key = (oracle, day, min(horizon_days, self.days - day))
        if key not in self._computed:
            self._computed[key] = probability(*key[1:])
        p = self._computed[key]
        return np.where(rows >= 0, p[np.maximum(rows, 0)], np.nan)

    def engagement_curves(self, rows: np.ndarray, cutoff: datetime) -> np.ndarray:
        """(P, C, 168) true P(engage | sent on c at hour h) at the cutoff's engagement level;
        NaN for unknown people and unreachable channels."""
        from features.simulate import true_engagement_probability

        day = min(max(self.day_of(cutoff), 0), self.days - 1)
        known = rows >= 0
        people = self.truth.iloc[rows[known]].reset_index(drop=True)
        hours = np.broadcast_to(np.arange(HOURS_PER_WEEK), (len(people), HOURS_PER_WEEK))
        out = np.full((len(rows), len(CHANNELS), HOURS_PER_WEEK), np.nan)
        for c, channel in enumerate(CHANNELS):
            out[known, c] = true_engagement_probability(people, channel, hours, day=day)
        return out
