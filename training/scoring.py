"""Batch scoring: one row per profile at an instant, from a trained model bundle.

Columns: ``profile_id, p_convert, best_hour_of_week, p_engage_email, p_engage_sms,
p_engage_push, engagement_tier, history_events, hour_evidence, send_window_source,
model_version``. ``p_engage_<channel>`` is P(open or click within 24 h | sent on that channel at
``best_hour_of_week``), NaN for a channel the profile was never sent a message on.
``history_events`` and ``hour_evidence`` say how much history the scores rest on;
``send_window_source`` is ``engagement_model``, ``population_prior`` (no activity hours yet:
the cold-start fallback) or ``activity_hours`` (a model trained without sends).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import torch

from features.examples import ProfileSource
from training.datasets import ExampleSet, features_at
from training.model import CHANNELS
from training.train import infer

# engagement_tier from the best channel's P(engage) at the best hour
TIER_THRESHOLDS = (("high", 0.25), ("medium", 0.10), ("low", 0.0))
SCORE_COLUMNS = (
    "profile_id",
    "p_convert",
    "best_hour_of_week",
    *(f"p_engage_{c}" for c in CHANNELS),
    "engagement_tier",
    "history_events",
    "hour_evidence",
    "send_window_source",
    "model_version",
)


def score_examples(bundle, examples: ExampleSet, model_version: str) -> pd.DataFrame:
    """Score every row of ``examples`` (features only are needed)."""
    if len(examples) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in SCORE_COLUMNS})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictions = infer(bundle.model, examples, bundle.spec, bundle.calibrator)
    reached = examples.arrays["reached"]
    evidence = predictions.hour_evidence
    if bundle.engagement_trained:
        best_hour = predictions.best_hour
        p_engage = np.where(reached, predictions.p_engage_at_best, np.nan)
        source = np.where(evidence > 0, "engagement_model", "population_prior")
        best_channel = np.where(
            reached.any(axis=1), np.nanmax(np.where(reached, p_engage, -1.0), axis=1), np.nan
        )
        tier = np.full(len(examples), "unreachable", dtype=object)
        for name, threshold in reversed(TIER_THRESHOLDS):
            tier[np.isfinite(best_channel) & (best_channel >= threshold)] = name
    else:
        with torch.no_grad():
            density, _ = bundle.model.send_window.density(
                torch.from_numpy(examples.arrays["activity"])
            )
        best_hour = density.argmax(dim=1).numpy()
        p_engage = np.full((len(examples), len(CHANNELS)), np.nan)
        source = np.where(evidence > 0, "activity_hours", "population_prior")
        tier = np.full(len(examples), "unknown", dtype=object)
    history = (
        pd.to_numeric(examples.profiles["events_total"]).to_numpy(np.int64)
        if "events_total" in examples.profiles.columns
        else examples.arrays["mask"].sum(axis=1)
    )
    frame = pd.DataFrame(
        {
            "profile_id": examples.profiles["profile_id"].to_numpy(),
            "p_convert": predictions.p_intent,
            "best_hour_of_week": best_hour.astype(np.int64),
            **{f"p_engage_{c}": p_engage[:, i] for i, c in enumerate(CHANNELS)},
            "engagement_tier": tier.astype(str),
            "history_events": history,
            "hour_evidence": np.round(evidence, 3),
            "send_window_source": source.astype(str),
            "model_version": model_version,
        }
    )
    return frame


def score_at(
    connection: duckdb.DuckDBPyConnection,
    source: ProfileSource,
    at: datetime,
    bundle,
    model_version: str,
) -> pd.DataFrame:
    """Features of every profile at ``at`` (nothing later is read), then scores."""
    examples = features_at(
        connection, source, at, bundle.spec.sequence_length, bundle.spec.category_buckets
    )
    return score_examples(bundle, examples, model_version)
