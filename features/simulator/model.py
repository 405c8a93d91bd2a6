"""The behavioural equations of the simulated world, shared by the simulator and its oracle.

Everything here is a pure function of arrays, so the ground-truth helpers in
``features.simulator.truth`` compute exactly the numbers the simulator drew against.
"""

from __future__ import annotations

import numpy as np

from features.simulator.config import HOUR_TERM_LIMIT, HOURS_PER_WEEK, SimulationConfig


def quantise(values: np.ndarray) -> np.ndarray:
    """Round to float32 and back: the simulator uses exactly what truth.parquet stores."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def hour_term(preference: np.ndarray) -> np.ndarray:
    """log(168 x preference), clipped to +-HOUR_TERM_LIMIT: 0 at a flat week's average hour."""
    with np.errstate(divide="ignore"):
        term = np.log(HOURS_PER_WEEK * np.asarray(preference, dtype=np.float64))
    return np.clip(term, -HOUR_TERM_LIMIT, HOUR_TERM_LIMIT)


def engagement_probability(
    intercept: np.ndarray,
    preference: np.ndarray,
    level: np.ndarray,
    hour_preference_effect: float | np.ndarray,
    engagement_effect: float | np.ndarray,
) -> np.ndarray:
    """P(open / click / tap | message delivered) for one channel.

    logit = intercept + hour_preference_effect * hour_term(preference at the send hour)
            + engagement_effect * (level - 0.5)
    ``intercept`` is the person's channel affinity (channel base + personal offset), logit units.
    """
    logit = (
        intercept
        + hour_preference_effect * hour_term(preference)
        + engagement_effect * (np.asarray(level, dtype=np.float64) - 0.5)
    )
    return 1.0 / (1.0 + np.exp(-logit))


def complaint_probability(level: np.ndarray, base: float, disengaged: float) -> np.ndarray:
    """Unsubscribe / spam / opt-out per delivered message: rises as engagement falls."""
    return base + disengaged * (1.0 - level) ** 2


def next_engagement_level(
    level: np.ndarray,
    baseline: np.ndarray,
    engaged: np.ndarray,
    ignored: np.ndarray,
    config: SimulationConfig,
) -> np.ndarray:
    """Tomorrow's engagement level from today's and today's engaged / ignored messages."""
    updated = (
        level
        + config.engagement_recovery * (baseline - level)
        + config.engagement_boost * engaged
        - config.engagement_fatigue * ignored
    )
    return quantise(np.clip(updated, config.engagement_floor, 1.0))


def transition_thresholds(
    state: np.ndarray, intent_propensity: np.ndarray, clicked: np.ndarray, config: SimulationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative P(next state <= 0) and P(next state <= 1) for each person.

    Moves up are scaled by the person's intent propensity and by click_intent_lift the day after
    a click; each row is capped so that it stays a probability distribution.
    """
    lift = intent_propensity * np.where(clicked, config.click_intent_lift, 1.0)
    to_dormant = np.select(
        [state == 1, state == 2], [config.browsing_to_dormant, config.ready_to_dormant]
    )
    to_browsing = np.where(state == 0, config.dormant_to_browsing * lift, 0.0)
    to_ready = np.select(
        [state == 0, state == 1], [config.dormant_to_ready * lift, config.browsing_to_ready * lift]
    )
    up_total = to_browsing + to_ready
    room = 0.95 * (1.0 - to_dormant)
    scale = np.where(up_total > room, room / np.maximum(up_total, 1e-12), 1.0)
    to_browsing, to_ready = to_browsing * scale, to_ready * scale
    down_to_browsing = np.where(state == 2, config.ready_to_browsing, 0.0)
    # P(next == 0), P(next == 1); P(next == 2) is the rest.
    p0 = np.where(state == 0, 1.0 - to_browsing - to_ready, to_dormant)
    p1 = np.select(
        [state == 0, state == 1], [to_browsing, 1.0 - to_dormant - to_ready], down_to_browsing
    )
    return p0, p0 + p1


def purchase_hazard(
    state: np.ndarray, purchase_propensity: np.ndarray, config: SimulationConfig
) -> np.ndarray:
    """P(an order today | intent state), at most one order a day."""
    hazard = np.asarray(config.purchase_hazard)[state] * purchase_propensity
    return quantise(np.minimum(hazard, config.max_purchase_hazard))
