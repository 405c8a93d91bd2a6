"""Baselines the sequence model must beat, fitted on the same split as the model.

Intent (P(order within H days)):
- ``lightgbm``: gradient-boosted trees on the point-in-time aggregates, early-stopped on
  validation;
- ``recency_frequency``: a fixed rule, log1p(orders) - log1p(days since the last order);
- ``recency``: days since the last order alone (lower = more likely);
- ``bg_nbd``: the BG/NBD buy-till-you-die model (Fader, Hardie & Lee, 2005), fitted by maximum
  likelihood on the last training cutoff; the score is the expected number of orders in the
  horizon.
Every score is turned into a probability by a Platt calibrator fitted on validation.

Send time (the hour of the week to send at):
- ``global_best_hour``: the hour of the week (or, per day, hour of the day) with the highest
  engagement rate over all training sends;
- ``most_frequent_engagement_hour``: each profile's most frequent past open/click hour (the
  heuristic the commercial tools use), else the global best hour;
- ``most_frequent_activity_hour``: each profile's most frequent past activity hour, else the
  global best hour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

from training.datasets import ExampleSet, _raw_features
from training.metrics import PlattCalibrator
from training.model import CHANNELS, HOURS_PER_WEEK

logger = logging.getLogger(__name__)


# --- intent ----------------------------------------------------------------------------------


@dataclass
class IntentBaseline:
    """A fitted intent baseline: ``predict`` gives calibrated probabilities."""

    name: str
    score: object  # callable: profiles DataFrame -> raw score (higher = more likely)
    calibrator: PlattCalibrator

    def predict(self, examples: ExampleSet) -> np.ndarray:
        return self.calibrator(_as_probability(self.score(examples.profiles)))


def _as_probability(score: np.ndarray) -> np.ndarray:
    """Map any real score monotonically into (0, 1) so the Platt calibrator can take logits."""
    score = np.asarray(score, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(score, -30, 30)))


def _calibrated(name: str, score, validation: ExampleSet) -> IntentBaseline:
    raw = _as_probability(score(validation.profiles))
    calibrator = PlattCalibrator.fit(validation.profiles["ordered"].to_numpy(float), raw)
    return IntentBaseline(name, score, calibrator)


def fit_lightgbm(train: ExampleSet, validation: ExampleSet, seed: int = 7) -> IntentBaseline:
    import lightgbm

    columns = list(_raw_features(train.profiles).columns)
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 50,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "verbose": -1,
        "num_threads": 2,
    }
    train_set = lightgbm.Dataset(
        _raw_features(train.profiles)[columns], train.profiles["ordered"].astype(int)
    )
    valid_set = lightgbm.Dataset(
        _raw_features(validation.profiles)[columns],
        validation.profiles["ordered"].astype(int),
        reference=train_set,
    )
    booster = lightgbm.train(
        params,
        train_set,
        num_boost_round=2000,
        valid_sets=[valid_set],
        callbacks=[lightgbm.early_stopping(50, verbose=False)],
    )

    def score(profiles: pd.DataFrame) -> np.ndarray:
        p = booster.predict(_raw_features(profiles)[columns], num_iteration=booster.best_iteration)
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    baseline = _calibrated("lightgbm", score, validation)
    baseline.booster = booster  # type: ignore[attr-defined]
    return baseline


def _recency_days(profiles: pd.DataFrame) -> np.ndarray:
    """Days since the last order; profiles that never ordered count as one year beyond their
    inactivity."""
    since_order = pd.to_numeric(profiles["days_since_last_order"]).to_numpy(np.float64)
    seen = _raw_features(profiles)["days_since_last_seen"].to_numpy(np.float64)
    return np.where(np.isnan(since_order), 365.0 + np.nan_to_num(seen), since_order)


def recency_frequency_score(profiles: pd.DataFrame) -> np.ndarray:
    orders = pd.to_numeric(profiles["orders_total"]).to_numpy(np.float64)
    return np.log1p(orders) - np.log1p(_recency_days(profiles))


def recency_score(profiles: pd.DataFrame) -> np.ndarray:
    return -np.log1p(_recency_days(profiles))


def fit_rules(validation: ExampleSet) -> list[IntentBaseline]:
    return [
        _calibrated("recency_frequency", recency_frequency_score, validation),
        _calibrated("recency", recency_score, validation),
    ]


@dataclass(frozen=True)
class BetaGeometricNBD:
    """BG/NBD parameters (time unit: weeks)."""

    r: float
    alpha: float
    a: float
    b: float

    @staticmethod
    def summaries(profiles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x repeat orders, t_x and T in weeks since the first order (zeros without orders)."""
        orders = pd.to_numeric(profiles["orders_total"]).to_numpy(np.float64)
        first = pd.to_numeric(profiles["days_since_first_order"]).to_numpy(np.float64)
        last = pd.to_numeric(profiles["days_since_last_order"]).to_numpy(np.float64)
        has = orders > 0
        x = np.where(has, orders - 1, 0.0)
        age = np.where(has, np.nan_to_num(first) / 7.0, 0.0)
        t_x = np.where(has, np.nan_to_num(first - last) / 7.0, 0.0)
        return x, t_x, age

    @classmethod
    def fit(cls, profiles: pd.DataFrame) -> BetaGeometricNBD:
        x, t_x, age = cls.summaries(profiles)
        customers = pd.to_numeric(profiles["orders_total"]).to_numpy() > 0
        x, t_x, age = x[customers], t_x[customers], age[customers]
        if len(x) < 10:
            raise ValueError(f"BG/NBD needs at least 10 customers with orders, got {len(x)}")

        def negative_log_likelihood(log_params: np.ndarray) -> float:
            r, alpha, a, b = np.exp(log_params)
            common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
            first = common + betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + age)
            second = (
                common
                + betaln(a + 1, b + x - 1 + (x == 0))
                - betaln(a, b)
                - (r + x) * np.log(alpha + t_x)
            )
            total = np.where(x > 0, np.logaddexp(first, second), first)
            return -float(np.sum(total))

        with np.errstate(all="ignore"):
            result = minimize(
                negative_log_likelihood,
                x0=np.log([0.5, 5.0, 0.5, 2.0]),
                method="Nelder-Mead",
                options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6},
            )
        r, alpha, a, b = np.exp(result.x)
        if abs(a - 1.0) < 1e-6:  # eq. 10 divides by a - 1
            a = 1.0 + 1e-6
        return cls(float(r), float(alpha), float(a), float(b))

    def expected_orders(self, profiles: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """E[orders in the next horizon | history] (Fader, Hardie & Lee 2005, eq. 10)."""
        x, t_x, age = self.summaries(profiles)
        t = horizon_days / 7.0
        with np.errstate(all="ignore"):
            return self._expected(x, t_x, age, t)

    def _expected(self, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, t: float) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + age + t)
        hyper = hyp2f1(r + x, b + x, a + b + x - 1, z)
        numerator = (
            (a + b + x - 1) / (a - 1) * (1 - ((alpha + age) / (alpha + age + t)) ** (r + x) * hyper)
        )
        alive_odds = np.where(
            x > 0, a / np.maximum(b + x - 1, 1e-9) * ((alpha + age) / (alpha + t_x)) ** (r + x), 0
        )
        return np.nan_to_num(numerator / (1 + alive_odds), nan=0.0, posinf=0.0, neginf=0.0)


def fit_bg_nbd(train: ExampleSet, validation: ExampleSet, horizon_days: int) -> IntentBaseline:
    last_cutoff = train.profiles["cutoff"].max()
    model = BetaGeometricNBD.fit(train.profiles[train.profiles["cutoff"] == last_cutoff])
    logger.info("BG/NBD parameters: %s", model)

    def score(profiles: pd.DataFrame) -> np.ndarray:
        expected = model.expected_orders(profiles, horizon_days)
        return np.log(np.maximum(expected, 1e-9))

    baseline = _calibrated("bg_nbd", score, validation)
    baseline.parameters = model  # type: ignore[attr-defined]
    return baseline


def fit_intent_baselines(
    train: ExampleSet, validation: ExampleSet, horizon_days: int, seed: int = 7
) -> list[IntentBaseline]:
    baselines = [fit_lightgbm(train, validation, seed), *fit_rules(validation)]
    try:
        baselines.append(fit_bg_nbd(train, validation, horizon_days))
    except (ValueError, FloatingPointError) as error:
        logger.warning("BG/NBD baseline skipped: %s", error)
    return baselines


# --- send time -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalHours:
    """Engagement rates over all training sends, by channel and hour of week."""

    rate: np.ndarray  # (C, 168) smoothed engagement rate
    best_hour: int  # argmax of the send-weighted mean rate over channels
    best_hour_by_day: np.ndarray  # (7,) hour of week with the best rate within each day

    @classmethod
    def fit(cls, sends: pd.DataFrame, prior_strength: float = 20.0) -> GlobalHours:
        channel = sends["channel"].to_numpy(np.int64)
        hour = sends["hour_of_week"].to_numpy(np.int64)
        engaged = sends["engaged"].to_numpy(np.float64)
        shape = (len(CHANNELS), HOURS_PER_WEEK)
        count, hits = np.zeros(shape), np.zeros(shape)
        np.add.at(count, (channel, hour), 1.0)
        np.add.at(hits, (channel, hour), engaged)
        channel_rate = (hits.sum(1) + 1) / (count.sum(1) + 2)
        rate = (hits + prior_strength * channel_rate[:, None]) / (count + prior_strength)
        pooled = (hits.sum(0) + prior_strength * engaged.mean()) / (count.sum(0) + prior_strength)
        best_by_day = pooled.reshape(7, 24).argmax(axis=1) + 24 * np.arange(7)
        return cls(rate, int(pooled.argmax()), best_by_day)

    def probability(self, channel: np.ndarray, hour: np.ndarray) -> np.ndarray:
        return self.rate[channel, hour]


def most_frequent_hour(
    activity: np.ndarray, kind: int, fallback: int, fallback_by_day: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per profile: the most frequent past hour of week of events of ``kind`` (0 activity,
    1 engagement) and the most frequent hour within each day; the fallback where there are
    none. Ties go to the earliest hour."""
    counts = activity[:, kind, :]  # (P, 168)
    has = counts.sum(axis=1) > 0
    best = np.where(has, counts.argmax(axis=1), fallback)
    by_day = counts.reshape(-1, 7, 24)
    day_has = by_day.sum(axis=2) > 0
    best_by_day = np.where(
        day_has, by_day.argmax(axis=2) + 24 * np.arange(7), fallback_by_day[None, :]
    )
    return best, best_by_day
