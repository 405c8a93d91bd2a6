"""The evaluation table: the model against every baseline on the same held-out cutoffs.

Intent: ROC-AUC, PR-AUC, log loss, Brier, ECE and top-decile lift, each with a bootstrap
interval over profiles, plus the paired ROC-AUC difference to LightGBM. Engagement: log loss
and AUC of P(engage | the send's actual channel and hour) on held-out sends; the off-policy
value of each send-time policy (self-normalised inverse propensity weighting over the logged,
randomised send hours); and on simulated data the true engagement probability at each
policy's chosen hour against the oracle's. Plots go to a folder for MLflow.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.baselines import GlobalHours, IntentBaseline, most_frequent_hour
from training.datasets import ExampleSet
from training.metrics import (
    Estimate,
    bootstrap,
    intent_report,
    log_loss,
    paired_difference,
    roc_auc,
)
from training.model import CHANNELS, HOURS_PER_WEEK
from training.oracle import SimulatorTruth
from training.train import Predictions

logger = logging.getLogger(__name__)

MODEL = "sequence_model"


@dataclass
class Evaluation:
    """Rows of (section, model, metric, value, low, high, n) plus plots and notes."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: dict[str, Any] = field(default_factory=dict)  # inputs of the plots

    def add(
        self, section: str, model: str, metric: str, estimate: Estimate | float, n: int
    ) -> None:
        if isinstance(estimate, Estimate):
            value, low, high = estimate.value, estimate.low, estimate.high
        else:
            value, low, high = float(estimate), float("nan"), float("nan")
        self.rows.append(
            {
                "section": section,
                "model": model,
                "metric": metric,
                "value": value,
                "low": low,
                "high": high,
                "n": n,
            }
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.rows, columns=["section", "model", "metric", "value", "low", "high", "n"]
        )

    def value(self, section: str, model: str, metric: str) -> float:
        for row in self.rows:
            if (row["section"], row["model"], row["metric"]) == (section, model, metric):
                return row["value"]
        return float("nan")

    def as_json(self) -> dict[str, Any]:
        return {"metrics": self.rows, "notes": self.notes}

    def mlflow_metrics(self) -> dict[str, float]:
        """Flat names: ``test.intent.sequence_model.roc_auc`` and ``..._low`` / ``_high``."""
        out = {}
        for row in self.rows:
            name = f"test.{row['section']}.{row['model']}.{row['metric']}"
            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                if np.isfinite(row[key]):
                    out[name + suffix] = float(row[key])
        return out


def evaluate(
    test: ExampleSet,
    predictions: Predictions,
    intent_baselines: list[IntentBaseline],
    train_sends: pd.DataFrame,
    horizon_days: int,
    truth: SimulatorTruth | None = None,
    engagement_trained: bool = True,
    resamples: int = 200,
    seed: int = 0,
) -> Evaluation:
    """Everything the issue's evaluation table asks for, on the test cutoffs."""
    result = Evaluation()
    y = test.profiles["ordered"].to_numpy(np.float64)
    scores: dict[str, np.ndarray] = {MODEL: predictions.p_intent}
    for baseline in intent_baselines:
        scores[baseline.name] = baseline.predict(test)
    rows = None
    if truth is not None:
        rows = truth.person_rows(test.profiles["label_profile_id"].to_numpy())
        # "oracle" knows each person's future intent path, "oracle_present" their state and
        # propensities before the cutoff, "oracle_history" only what their events show (all
        # their devices together): the ceiling of a model that reads the past.
        oracles = {
            "oracle": truth.conversion_probability,
            "oracle_present": truth.present_conversion_probability,
        }
        if truth.has_observed_history:
            oracles["oracle_history"] = truth.history_conversion_probability
        for name, probability in oracles.items():
            scores[name] = per_cutoff(probability, test, rows, horizon_days)
    _intent_section(result, "intent", y, scores, resamples, seed)
    if truth is not None and rows is not None:
        comparable, fragments = addressable_profiles(test, truth, rows)
        result.notes.append(
            f"intent_addressable: the {int(comparable.sum()):,} of {len(test):,} test profiles "
            "keyed by a user id or email of one true person and not merged into another "
            "profile later, where orders are logged and the oracles' person-level "
            "probabilities are comparable to the profile's label; left out: "
            f"{int(fragments.sum()):,} profiles merged into such a profile after the cutoff, "
            f"{y[fragments].mean() if fragments.any() else 0:.1%} of them with an order"
        )
        subset = {name: s[comparable] for name, s in scores.items()}
        _intent_section(result, "intent_addressable", y[comparable], subset, resamples, seed)
    result.curves["intent"] = {
        "y": y,
        "scores": {k: v for k, v in scores.items() if np.isfinite(v).all()},
    }
    if test.has_sends and engagement_trained:
        _engagement_section(result, test, predictions, train_sends, rows, truth, resamples, seed)
    elif not engagement_trained:
        result.notes.append(
            "engagement: no logged sends in the data; the engagement head is untrained and "
            "the send window is each profile's most likely activity hour"
        )
    return result


def per_cutoff(
    probability: Callable[[np.ndarray, datetime, int], np.ndarray],
    examples: ExampleSet,
    rows: np.ndarray,
    horizon_days: int,
) -> np.ndarray:
    """An oracle's ``probability(rows, cutoff, horizon_days)`` for every example, each at its
    own cutoff (``rows``: the examples' truth rows)."""
    cutoffs = examples.profiles["cutoff"].to_numpy()
    out = np.full(len(examples), np.nan)
    for cutoff in np.unique(cutoffs):
        where = cutoffs == cutoff
        out[where] = probability(rows[where], pd.Timestamp(cutoff).to_pydatetime(), horizon_days)
    return out


def addressable_profiles(
    test: ExampleSet, truth: SimulatorTruth, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(addressable, merged later): masks over ``test``'s profiles. Addressable profiles are
    keyed by a user id or email of one true person (``rows``: their truth rows) and are not
    merged into another profile after the cutoff. Merged later are profiles merged into such a
    profile after the cutoff (a device that logs in to check out): they carry that profile's
    later orders, a part of the label that no history shows."""
    labels = test.profiles["label_profile_id"].to_numpy()
    keyed = (rows >= 0) & np.isin(truth.identifier_kinds(labels), ["user_id", "emails"])
    whole = test.profiles["profile_id"].to_numpy() == labels
    return keyed & whole, keyed & ~whole


def _intent_section(
    result: Evaluation,
    section: str,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    resamples: int,
    seed: int,
) -> None:
    for name, p in scores.items():
        finite = np.isfinite(p)
        if not finite.any():
            continue
        for metric, estimate in intent_report(y[finite], p[finite], resamples, seed).items():
            result.add(section, name, metric, estimate, int(finite.sum()))
    if "lightgbm" in scores:
        for name, p in scores.items():
            if name in ("lightgbm",) or not np.isfinite(p).all():
                continue
            difference = paired_difference(roc_auc, y, p, scores["lightgbm"], resamples, seed)
            result.add(section, name, "roc_auc_minus_lightgbm", difference, len(y))
    for ceiling in ("oracle_present", "oracle_history"):  # how far below what can be known
        if ceiling not in scores or MODEL not in scores:
            continue
        known = np.isfinite(scores[ceiling])
        difference = paired_difference(
            roc_auc, y[known], scores[MODEL][known], scores[ceiling][known], resamples, seed
        )
        result.add(section, MODEL, f"roc_auc_minus_{ceiling}", difference, int(known.sum()))


def _engagement_section(
    result: Evaluation,
    test: ExampleSet,
    predictions: Predictions,
    train_sends: pd.DataFrame,
    rows: np.ndarray | None,
    truth: SimulatorTruth | None,
    resamples: int,
    seed: int,
) -> None:
    sends = test.sends
    engaged = sends["engaged"].to_numpy(np.float64)
    channel = sends["channel"].to_numpy(np.int64)
    hour = sends["hour_of_week"].to_numpy(np.int64)
    global_hours = GlobalHours.fit(train_sends)
    probabilities = {
        MODEL: predictions.send_probability,
        "global_hour_rates": global_hours.probability(channel, hour),
    }
    for name, p in probabilities.items():
        result.add(
            "engagement",
            name,
            "log_loss",
            bootstrap(log_loss, engaged, p, resamples, seed),
            len(engaged),
        )
        result.add(
            "engagement",
            name,
            "roc_auc",
            bootstrap(roc_auc, engaged, p, resamples, seed),
            len(engaged),
        )
    result.curves["engagement"] = {
        "engaged": engaged,
        "channel": channel,
        "probabilities": probabilities,
    }

    # Send-time policies: one hour per profile and day of the week.
    activity = test.arrays["activity"]
    policies_by_day = {
        MODEL: predictions.best_hour_by_day,
        "global_best_hour": np.broadcast_to(global_hours.best_hour_by_day, (len(test), 7)),
        "most_frequent_engagement_hour": most_frequent_hour(
            activity, 1, global_hours.best_hour, global_hours.best_hour_by_day
        )[1],
        "most_frequent_activity_hour": most_frequent_hour(
            activity, 0, global_hours.best_hour, global_hours.best_hour_by_day
        )[1],
    }
    weekly = {
        MODEL: predictions.best_hour,
        "global_best_hour": np.full(len(test), global_hours.best_hour),
        "most_frequent_engagement_hour": most_frequent_hour(
            activity, 1, global_hours.best_hour, global_hours.best_hour_by_day
        )[0],
        "most_frequent_activity_hour": most_frequent_hour(
            activity, 0, global_hours.best_hour, global_hours.best_hour_by_day
        )[0],
    }
    oracle_curves = None
    if truth is not None and rows is not None:
        oracle_curves = _oracle_curves(test, rows, truth)  # (P, C, 168)
        with warnings.catch_warnings():  # unreachable people: all-NaN rows are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_curve = np.nanmean(oracle_curves, axis=1)  # channels share the hour ranking
        valid = np.isfinite(mean_curve).any(axis=1)
        filled = np.where(np.isfinite(mean_curve), mean_curve, -1.0)
        weekly["oracle"] = np.where(valid, filled.argmax(axis=1), global_hours.best_hour)
        policies_by_day["oracle"] = np.where(
            valid[:, None],
            filled.reshape(-1, 7, 24).argmax(axis=2) + 24 * np.arange(7),
            global_hours.best_hour_by_day[None, :],
        )
    _off_policy(result, sends, policies_by_day, resamples, seed)
    if oracle_curves is not None:
        _true_value(result, oracle_curves, weekly, resamples, seed)
    result.curves["send_window"] = {"weekly": weekly}


def _off_policy(
    result: Evaluation,
    sends: pd.DataFrame,
    policies_by_day: dict[str, np.ndarray],
    resamples: int,
    seed: int,
) -> None:
    """Self-normalised IPS: among held-out sends, those the policy would also have sent at the
    same hour of that day, weighted by 1 / the logged propensity of the hour."""
    propensity = sends["propensity"].to_numpy(np.float64)
    usable = np.isfinite(propensity) & (propensity > 0)
    if not usable.any():
        result.notes.append("off-policy value: the sends carry no logged propensity; skipped")
        return
    if not usable.all():
        result.notes.append(
            f"off-policy value: {int((~usable).sum()):,} sends without a logged propensity left out"
        )
    s = sends[usable]
    row = s["row"].to_numpy(np.int64)
    hour = s["hour_of_week"].to_numpy(np.int64)
    engaged = s["engaged"].to_numpy(np.float64)
    weight = 1.0 / propensity[usable]
    day = hour // 24
    logged = _ratio_estimate(engaged * weight, weight, resamples, seed)
    result.add("send_time_ips", "logged_random_policy", "engagement_rate", logged, len(s))
    for name, by_day in policies_by_day.items():
        match = by_day[row, day] == hour
        estimate = _ratio_estimate(engaged * weight * match, weight * match, resamples, seed)
        result.add("send_time_ips", name, "engagement_rate", estimate, int(match.sum()))


def _ratio_estimate(
    numerator: np.ndarray, denominator: np.ndarray, resamples: int, seed: int
) -> Estimate:
    """sum(numerator) / sum(denominator) with a bootstrap interval over the rows."""
    if denominator.sum() <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        index = rng.integers(0, len(numerator), len(numerator))
        d = denominator[index].sum()
        if d > 0:
            samples.append(numerator[index].sum() / d)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(float(numerator.sum() / denominator.sum()), float(low), float(high))


def _oracle_curves(test: ExampleSet, rows: np.ndarray, truth: SimulatorTruth) -> np.ndarray:
    cutoffs = test.profiles["cutoff"].to_numpy()
    curves = np.full((len(test), len(CHANNELS), HOURS_PER_WEEK), np.nan)
    for cutoff in np.unique(cutoffs):
        where = np.flatnonzero(cutoffs == cutoff)
        curves[where] = truth.engagement_curves(rows[where], pd.Timestamp(cutoff).to_pydatetime())
    # Only channels the profile was actually sent on: the decision is "when", not "whether".
    reached = test.arrays["reached"]
    curves[~reached] = np.nan
    return curves


def _true_value(
    result: Evaluation,
    curves: np.ndarray,
    weekly: dict[str, np.ndarray],
    resamples: int,
    seed: int,
) -> None:
    """Mean true P(engage) when each reachable (profile, channel) gets the policy's hour, and
    the share of the oracle's gain over the global best hour each policy captures."""
    has = np.isfinite(curves).any(axis=2)  # (P, C) reachable pairs of known people
    profiles = np.flatnonzero(has.any(axis=1))
    values = {}
    for name, hours in weekly.items():
        at = np.take_along_axis(curves, hours[:, None, None].repeat(len(CHANNELS), 1), axis=2)
        values[name] = np.where(has, at[:, :, 0], 0.0)[profiles].sum(axis=1)  # (P',)
    pairs = has[profiles].sum(axis=1).astype(np.float64)
    for name, value in values.items():
        estimate = _ratio_estimate(value, pairs, resamples, seed)
        result.add(
            "send_time_truth", name, "true_engagement_probability", estimate, int(pairs.sum())
        )
    oracle, base = values["oracle"], values["global_best_hour"]
    rng = np.random.default_rng(seed)
    index_sets = [rng.integers(0, len(profiles), len(profiles)) for _ in range(resamples)]
    for name, value in values.items():
        if name in ("oracle", "global_best_hour"):
            continue

        def capture(index: np.ndarray | None, v: np.ndarray = value) -> float:
            sl = slice(None) if index is None else index
            gain = oracle[sl].sum() - base[sl].sum()
            return float((v[sl].sum() - base[sl].sum()) / gain) if gain > 0 else float("nan")

        samples = [capture(i) for i in index_sets]
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        result.add(
            "send_time_truth",
            name,
            "share_of_oracle_gain_over_global",
            Estimate(capture(None), float(low), float(high)),
            len(profiles),
        )


# --- plots -----------------------------------------------------------------------------------


def write_plots(
    result: Evaluation,
    predictions: Predictions,
    test: ExampleSet,
    out: Path,
    example_profiles: int = 4,
) -> list[Path]:
    """ROC and PR curves, calibration, cumulative gain, send-window heatmaps and per-channel
    engagement, as PNG files in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(figure: Any, name: str) -> None:
        path = out / name
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    intent = result.curves.get("intent")
    if intent and 0 < intent["y"].sum() < len(intent["y"]):
        y, scores = intent["y"], intent["scores"]
        figure, (roc_axis, pr_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
        for name, p in scores.items():
            fpr, tpr, _ = roc_curve(y, p)
            roc_axis.plot(fpr, tpr, label=f"{name} ({roc_auc(y, p):.3f})")
            precision, recall, _ = precision_recall_curve(y, p)
            pr_axis.plot(recall, precision, label=name)
        roc_axis.plot([0, 1], [0, 1], "k:", lw=0.8)
        roc_axis.set(
            xlabel="false positive rate", ylabel="true positive rate", title="Intent ROC (test)"
        )
        pr_axis.set(xlabel="recall", ylabel="precision", title="Intent precision-recall")
        roc_axis.legend(fontsize=7)
        pr_axis.legend(fontsize=7)
        save(figure, "intent_roc_pr.png")

        figure, axis = plt.subplots(figsize=(5.5, 5))
        for name, p in scores.items():
            observed, predicted = _reliability(y, p)
            axis.plot(predicted, observed, marker="o", ms=3, label=name)
        limit = max(0.05, float(max(np.max(p) for p in scores.values())))
        axis.plot([0, limit], [0, limit], "k:", lw=0.8)
        axis.set(
            xlabel="predicted P(order)",
            ylabel="observed order rate",
            title="Calibration (15 equal-mass bins)",
        )
        axis.legend(fontsize=7)
        save(figure, "intent_calibration.png")

        figure, axis = plt.subplots(figsize=(5.5, 5))
        for name, p in scores.items():
            order = np.argsort(-p, kind="stable")
            gains = np.cumsum(y[order]) / y.sum()
            axis.plot(np.arange(1, len(y) + 1) / len(y), gains, label=name)
        axis.plot([0, 1], [0, 1], "k:", lw=0.8)
        axis.set(
            xlabel="share of profiles targeted (by score)",
            ylabel="share of orders",
            title="Cumulative gain",
        )
        axis.legend(fontsize=7)
        save(figure, "intent_gain.png")

    if predictions.curves is not None and len(test):
        evidence = predictions.hour_evidence
        chosen = np.unique(
            np.quantile(np.arange(len(test)), np.linspace(0, 1, example_profiles)).astype(int)
        )
        chosen = np.argsort(evidence, kind="stable")[chosen]  # from cold start to rich history
        figure, axes = plt.subplots(len(chosen), 1, figsize=(9, 2.2 * len(chosen)), squeeze=False)
        for axis, row in zip(axes[:, 0], chosen, strict=True):
            grid = predictions.curves[row].astype(np.float64).max(axis=0).reshape(7, 24)
            image = axis.imshow(grid, aspect="auto", cmap="viridis")
            axis.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
            axis.set_title(
                f"profile {test.profiles['profile_id'].iloc[row]!s:.24} — "
                f"{evidence[row]:.0f} weighted events",
                fontsize=8,
            )
            figure.colorbar(image, ax=axis, label="P(engage)")
        axes[-1, 0].set_xlabel("hour of day (UTC)")
        save(figure, "send_window_heatmaps.png")

    engagement = result.curves.get("engagement")
    if engagement:
        figure, axis = plt.subplots(figsize=(6, 4))
        width = 0.35
        observed = [
            engagement["engaged"][engagement["channel"] == c].mean()
            if (engagement["channel"] == c).any()
            else np.nan
            for c in range(len(CHANNELS))
        ]
        at_best = np.nanmean(predictions.p_engage_at_best, axis=0)
        x = np.arange(len(CHANNELS))
        axis.bar(x - width / 2, observed, width, label="observed rate (random hours)")
        axis.bar(x + width / 2, at_best, width, label="model at each profile's best hour")
        axis.set_xticks(x, CHANNELS)
        axis.set(ylabel="P(open or click within 24 h)", title="Engagement by channel (test)")
        axis.legend(fontsize=8)
        save(figure, "engagement_by_channel.png")
    return written


def _reliability(y: np.ndarray, p: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if len(c)]
    return (np.array([y[c].mean() for c in chunks]), np.array([p[c].mean() for c in chunks]))


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """value [low, high] strings, one row per (section, model), one column per metric."""

    def cell(row: pd.Series) -> str:
        if np.isfinite(row["low"]):
            return f"{row['value']:.4f} [{row['low']:.4f}, {row['high']:.4f}]"
        return f"{row['value']:.4f}"

    shown = table.assign(cell=table.apply(cell, axis=1))
    return shown.pivot_table(
        index=["section", "model"], columns="metric", values="cell", aggfunc="first", sort=False
    )


def cutoff_label(cutoffs: list[datetime]) -> str:
    return ", ".join(f"{c:%Y-%m-%d %H:%M}" for c in cutoffs)


SummaryFn = Callable[[Evaluation], dict[str, float]]
