"""Metrics and calibration: exact values on tiny inputs, behaviour on simulated scores."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    PlattCalibrator,
    bootstrap,
    brier,
    expected_calibration_error,
    intent_report,
    log_loss,
    paired_difference,
    roc_auc,
    top_decile_lift,
)

Y = np.array([0, 0, 1, 1, 0, 1, 0, 0, 0, 1], dtype=float)
P = np.array([0.1, 0.2, 0.8, 0.7, 0.3, 0.9, 0.2, 0.1, 0.4, 0.6])


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (roc_auc, 1.0),
        (brier, np.mean((P - Y) ** 2)),
        (log_loss, -np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P))),
        (top_decile_lift, 1.0 / 0.4),  # the top score is a positive; base rate 0.4
    ],
    ids=["auc", "brier", "log-loss", "lift"],
)
def test_exact(metric, expected: float) -> None:
    assert metric(Y, P) == pytest.approx(expected)


def test_ece_is_zero_when_rates_match_predictions() -> None:
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(8, 0.9), bins=1) == pytest.approx(0.4)


def test_platt_fixes_overconfidence_and_keeps_ranking() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(truth.size) < truth).astype(float)
    logits = np.log(truth / (1 - truth))
    overconfident = 1 / (1 + np.exp(-3 * logits))
    calibrator = PlattCalibrator.fit(y, overconfident)
    assert calibrator.scale == pytest.approx(1 / 3, rel=0.05)
    calibrated = calibrator(overconfident)
    assert expected_calibration_error(y, calibrated) < 0.015
    assert expected_calibration_error(y, overconfident) > 0.05
    assert roc_auc(y, calibrated) == pytest.approx(roc_auc(y, overconfident))


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_data() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int):
        score = rng.random(n)
        return (rng.random(n) < score).astype(float), score

    small = bootstrap(roc_auc, *sample(300), resamples=100)
    large = bootstrap(roc_auc, *sample(10_000), resamples=100)
    assert small.low <= small.value <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 2.5


def test_report_and_paired_difference() -> None:
    rng = np.random.default_rng(2)
    score = rng.random(5_000)
    y = (rng.random(5_000) < score).astype(float)
    report = intent_report(y, score, resamples=50)
    assert set(report) == {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"}
    better = paired_difference(roc_auc, y, score, rng.random(5_000), resamples=50)
    assert better.low > 0.2
