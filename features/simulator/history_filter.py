"""The best prediction of a person's orders that their observable past allows.

``present_conversion_probability`` knows each person's intent state and propensities, which no
model sees. ``history_conversion_probability`` knows only what the events show, per person and
day: browsing sessions, products viewed and added in them, orders and clicks, across every
device of the person (perfect identity). It runs a forward filter over the simulator's own
intent chain and integrates over the unknown propensities with their lognormal priors, on a
Gauss-Hermite grid. So it is the ceiling of a model that reads a person's whole history: what
is missing from ``present`` to ``history`` is missing from the data, not from the model.

Approximations: products viewed per session are capped at the session's slots in the
simulator (a cap reached about once in 700 sessions) and are treated here as uncapped; the grid
has ``grid_points`` values per propensity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.simulator.config import SimulationConfig
from features.simulator.model import purchase_hazard, transition_thresholds
from features.simulator.truth import _check_window, _matrix, _require_columns

OBSERVED_COLUMNS = (
    "daily_sessions",
    "daily_product_views",
    "daily_products_added",
    "daily_orders",
    "daily_clicks",
)
_CHUNK = 4096  # people filtered at once: (chunk, K, K, K, 3) floats per array


def history_conversion_probability(
    truth: pd.DataFrame,
    day_from: int,
    horizon_days: int,
    config: SimulationConfig,
    grid_points: int = 5,
) -> np.ndarray:
    """P(at least one order on days [day_from, day_from + horizon_days)) given each person's
    observed shopping on days [0, day_from), per person. No clicks are assumed in the window
    (the clicks of day ``day_from - 1`` lift the first move, as in the simulator)."""
    _require_columns(truth, OBSERVED_COLUMNS)
    observed = {c: _matrix(truth[c], np.int64) for c in OBSERVED_COLUMNS}
    _check_window(day_from, horizon_days, 1, observed["daily_orders"].shape[1])
    observed = {c: m[:, :day_from] for c, m in observed.items()}
    if grid_points < 1:
        raise ValueError(f"grid_points must be at least 1, got {grid_points}")
    model = _FilterModel(config, grid_points)
    return np.concatenate(
        [
            model.predict({c: m[first : first + _CHUNK] for c, m in observed.items()}, horizon_days)
            for first in range(0, len(truth), _CHUNK)
        ]
    )


class _FilterModel:
    """The simulator's intent chain and emissions on a grid of the three propensities.

    Belief arrays are (n, a, b, c, s): person, intent propensity, purchase propensity, browse
    activity (each on the grid) and intent state (0 dormant, 1 browsing, 2 ready)."""

    def __init__(self, config: SimulationConfig, grid_points: int):
        nodes, weights = np.polynomial.hermite_e.hermegauss(grid_points)
        weights = weights / weights.sum()  # probabilists' Hermite: a standard normal's weights

        def mean_one_lognormal(sigma: float) -> np.ndarray:  # as world._mean_one_lognormal
            return np.exp(-0.5 * sigma**2 + sigma * nodes)

        intent = mean_one_lognormal(config.intent_propensity_sd)
        purchase = mean_one_lognormal(config.purchase_propensity_sd)
        activity = mean_one_lognormal(config.browse_activity_sd)
        states = np.arange(3)
        self.moves = {clicked: self._moves(intent, clicked, config) for clicked in (False, True)}
        # (b, s): the daily purchase hazard exactly as the simulator computes it
        self.hazard = np.stack(
            [purchase_hazard(np.full(grid_points, s), purchase, config) for s in states], axis=1
        )
        self.session_rate = activity[:, None] * np.asarray(config.session_rate)[None, :]  # (c, s)
        self.views_mean = np.asarray(config.product_views_mean)  # (s,) beyond the first
        self.add_to_cart = np.asarray(config.add_to_cart)  # (s,) per product viewed
        w = weights
        self.prior = (
            w[:, None, None, None]
            * w[None, :, None, None]
            * w[None, None, :, None]
            * np.asarray(config.initial_state_mix)[None, None, None, :]
        )

    @staticmethod
    def _moves(intent: np.ndarray, clicked: bool, config: SimulationConfig) -> np.ndarray:
        """(a, s from, s to) daily transition matrices."""
        k = len(intent)
        rows = []
        for state in range(3):
            stay_low, stay_mid = transition_thresholds(
                np.full(k, state), intent, np.full(k, clicked), config
            )
            rows.append(np.stack([stay_low, stay_mid - stay_low, 1.0 - stay_mid], axis=1))
        return np.stack(rows, axis=1)

    def _log_likelihood(
        self, sessions: np.ndarray, views: np.ndarray, added: np.ndarray, orders: np.ndarray
    ) -> np.ndarray:
        """(n, 1, b, c, s) log P(one day's observations | propensities, state), up to terms
        that do not depend on them."""
        # sessions ~ Poisson(activity x rate[s])
        rate = self.session_rate[None]  # (1, c, s)
        log_sessions = sessions[:, None, None] * _log(rate) - rate  # (n, c, s)
        # views beyond the first of each session ~ Poisson(sessions x views_mean[s]);
        # each viewed product is added with probability add_to_cart[s]
        extra = (views - sessions)[:, None]
        mean = sessions[:, None] * self.views_mean[None, :]
        log_views = extra * _log(mean) - mean
        log_added = (
            added[:, None] * _log(self.add_to_cart)[None, :]
            + (views - added)[:, None] * _log(1.0 - self.add_to_cart)[None, :]
        )
        log_orders = np.where(
            orders[:, None, None] > 0, _log(self.hazard)[None], _log(1.0 - self.hazard)[None]
        )  # (n, b, s)
        return (
            log_orders[:, None, :, None, :]
            + log_sessions[:, None, None, :, :]
            + (log_views + log_added)[:, None, None, None, :]
        )

    def _step(self, belief: np.ndarray, clicked: np.ndarray) -> np.ndarray:
        """Overnight: every person's state moves, faster up after a click."""
        moved = np.empty_like(belief)
        for flag in (False, True):
            rows = clicked == flag
            moved[rows] = np.einsum("nabcs,ast->nabct", belief[rows], self.moves[flag])
        return moved

    def predict(self, observed: dict[str, np.ndarray], horizon_days: int) -> np.ndarray:
        n, days = observed["daily_orders"].shape
        belief = np.broadcast_to(self.prior, (n, *self.prior.shape)).copy()
        for day in range(days):
            log_likelihood = self._log_likelihood(
                observed["daily_sessions"][:, day],
                observed["daily_product_views"][:, day],
                observed["daily_products_added"][:, day],
                observed["daily_orders"][:, day],
            )
            log_likelihood -= log_likelihood.max(axis=(1, 2, 3, 4), keepdims=True)
            belief = belief * np.exp(log_likelihood)
            belief /= belief.sum(axis=(1, 2, 3, 4), keepdims=True)
            belief = self._step(belief, observed["daily_clicks"][:, day] > 0)
        # belief is over the first day of the window: P(no order on any of its days)
        no_order = (1.0 - self.hazard)[None, None, :, None, :]
        alive = belief
        for day in range(horizon_days):
            alive = alive * no_order
            if day < horizon_days - 1:
                alive = np.einsum("nabcs,ast->nabct", alive, self.moves[False])
        return 1.0 - alive.sum(axis=(1, 2, 3, 4))


def _log(x: np.ndarray) -> np.ndarray:
    """log that maps 0 to a very negative finite number: a rate of 0 rules a state out without
    turning 0 x log 0 into NaN."""
    return np.log(np.maximum(x, 1e-300))
