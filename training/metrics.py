"""Evaluation metrics with bootstrap confidence intervals, and probability calibration.

Every intent metric is reported as a point estimate with a percentile bootstrap interval over
profiles, so two models can be compared honestly. Pure functions on NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

_EPSILON = 1e-7


@dataclass(frozen=True)
class Estimate:
    """A metric with its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _EPSILON, 1 - _EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Mean |observed rate - predicted probability| over equal-mass bins, weighted by size."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(total / len(y))


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the top 10% by score, divided by the overall positive rate."""
    base = y.mean()
    if base == 0:
        return float("nan")
    top = np.argsort(-p, kind="stable")[: max(1, len(p) // 10)]
    return float(y[top].mean() / base)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney form (ties count one half): equals sklearn's roc_auc_score, without its
    per-call validation overhead, which dominates thousands of bootstrap calls."""
    y = np.asarray(y, dtype=bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (sklearn's definition: sum over thresholds of precision times the
    recall gained), computed directly."""
    y = np.asarray(y, dtype=np.float64)
    total = y.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="mergesort")
    scores, hits = np.asarray(p)[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(hits)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0.0, true_positives]) / total
    return float(np.sum(precision * recall_gain))


INTENT_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": roc_auc,
    "pr_auc": pr_auc,
    "log_loss": log_loss,
    "brier": brier,
    "ece": expected_calibration_error,
    "top_decile_lift": top_decile_lift,
}


def bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    resamples: int = 200,
    seed: int = 0,
) -> Estimate:
    """Point estimate and 95% percentile interval over ``resamples`` bootstrap samples."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        value = metric(y[index], p[index])
        if np.isfinite(value):
            samples.append(value)
    low, high = np.percentile(samples, [2.5, 97.5]) if samples else (np.nan, np.nan)
    return Estimate(metric(y, p), float(low), float(high))


def intent_report(
    y: np.ndarray, p: np.ndarray, resamples: int = 200, seed: int = 0
) -> dict[str, Estimate]:
    """All intent metrics with intervals (the same resamples for every metric)."""
    return {
        name: bootstrap(metric, y, p, resamples=resamples, seed=seed)
        for name, metric in INTENT_METRICS.items()
    }


def paired_difference(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p_model: np.ndarray,
    p_baseline: np.ndarray,
    resamples: int = 200,
    seed: int = 0,
) -> Estimate:
    """metric(model) - metric(baseline), bootstrapped on the same resamples (paired)."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        differences.append(metric(y[index], p_model[index]) - metric(y[index], p_baseline[index]))
    differences = np.array(differences)
    differences = differences[np.isfinite(differences)]
    point = metric(y, p_model) - metric(y, p_baseline)
    if differences.size == 0:  # e.g. a single class in every resample: no interval exists
        return Estimate(point, math.nan, math.nan)
    low, high = np.percentile(differences, [2.5, 97.5])
    return Estimate(point, float(low), float(high))


@dataclass(frozen=True)
class PlattCalibrator:
    """p = sigmoid(scale * logit(raw) + shift), fitted on validation by maximum likelihood.

    Temperature scaling (Guo et al., 2017) with a bias term; it keeps the ranking, so AUC is
    unchanged, and fixes over- or under-confidence.
    """

    scale: float = 1.0
    shift: float = 0.0

    @classmethod
    def fit(cls, y: np.ndarray, raw: np.ndarray) -> PlattCalibrator:
        logits = _logit(raw)
        y = np.asarray(y, dtype=np.float64)

        def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
            z = params[0] * logits + params[1]
            # log(1 + e^z) - y z, written to stay finite for large |z|
            loss = np.sum(np.logaddexp(0, z) - y * z)
            residual = _sigmoid(z) - y
            return float(loss), np.array([np.sum(residual * logits), np.sum(residual)])

        result = minimize(loss_and_gradient, x0=[1.0, 0.0], jac=True, method="L-BFGS-B")
        return cls(float(result.x[0]), float(result.x[1]))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return _sigmoid(self.scale * _logit(raw) + self.shift)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x))
