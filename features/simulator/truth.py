"""truth.parquet: one row per true person, and the oracle functions computed from it.

The columns are documented in ``features.simulate``. ``true_engagement_probability`` and
``true_conversion_probability`` are pure functions of the table that reproduce the exact
probabilities the simulator drew against. ``present_conversion_probability`` is the ceiling of a
predictor that knows each person's past, latent state included, but not their future.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from features.simulator.config import CHANNELS, DEVICE_TYPES, HOURS_PER_WEEK, SimulationConfig
from features.simulator.model import (
    engagement_probability,
    purchase_hazard,
    transition_thresholds,
)
from features.simulator.world import NO_ACCOUNT, World

if TYPE_CHECKING:
    from features.simulator.sessions import ShoppingDay


@dataclass
class History:
    """What the simulator recorded per person and day, (N, days) unless noted."""

    state: np.ndarray  # int8: 0 dormant, 1 browsing, 2 ready
    purchase_hazard: np.ndarray  # float32
    engagement: np.ndarray  # float32, level at the start of the day
    orders: np.ndarray  # int8
    clicks: np.ndarray  # int16, clicks and taps that happened that day
    sessions: np.ndarray  # int16, browsing sessions (not order sessions or landings)
    product_views: np.ndarray  # int16, products viewed in them
    products_added: np.ndarray  # int16, products added to the cart in them
    engagement_final: np.ndarray  # (N,) float32, level after the last day

    def record_day(
        self, day: int, state: np.ndarray, hazard: np.ndarray, engagement: np.ndarray
    ) -> None:
        """The values the day's draws use, recorded before the day is simulated."""
        self.state[:, day] = state
        self.purchase_hazard[:, day] = hazard
        self.engagement[:, day] = engagement

    def record_shopping(self, day: int, shopping: ShoppingDay) -> None:
        """What the day's browsing sessions showed (see ``ShoppingDay``)."""
        limit = np.iinfo(np.int16).max
        self.sessions[:, day] = np.minimum(shopping.browse_sessions, limit)
        self.product_views[:, day] = np.minimum(shopping.product_views, limit)
        self.products_added[:, day] = np.minimum(shopping.products_added, limit)

    @staticmethod
    def allocate(n: int, days: int) -> History:
        return History(
            state=np.zeros((n, days), np.int8),
            purchase_hazard=np.zeros((n, days), np.float32),
            engagement=np.zeros((n, days), np.float32),
            orders=np.zeros((n, days), np.int8),
            clicks=np.zeros((n, days), np.int16),
            sessions=np.zeros((n, days), np.int16),
            product_views=np.zeros((n, days), np.int16),
            products_added=np.zeros((n, days), np.int16),
            engagement_final=np.zeros(n, np.float32),
        )


def truth_table(
    world: World,
    history: History,
    email_stop_day: np.ndarray,
    sms_stop_day: np.ndarray,
    config: SimulationConfig,
    metadata: dict[bytes, bytes],
) -> pa.Table:
    """The truth table (see ``features.simulate`` for the columns)."""
    n = world.n
    pair_offsets = np.concatenate([[0], np.cumsum(world.pair_count)])
    pair_device = world.pair_device
    shared_pair = world.device_shared[pair_device]
    shared_count = np.bincount(world.pair_person[shared_pair], minlength=n) * 2
    shared_values = np.stack(
        [
            world.device_anonymous_ids[pair_device[shared_pair]],
            world.device_ids[pair_device[shared_pair]],
        ],
        axis=1,
    ).ravel()
    has_account = world.account_created_day < NO_ACCOUNT
    push_device = np.where(
        world.push_pair >= 0,
        world.device_ids[world.pair_device[np.maximum(world.push_pair, 0)]],
        None,
    )

    emails = [
        [e] if s is None else [e, s]
        for e, s in zip(world.emails.tolist(), world.second_emails.tolist(), strict=True)
    ]
    phones = [[] if p is None else [p] for p in world.phones.tolist()]
    names = world.catalogue.category_names
    columns = {
        "person_id": pa.array(world.person_ids.tolist(), pa.string()),
        "user_id": pa.array(world.user_ids.tolist(), pa.string()),
        "account_created_day": pa.array(
            np.where(has_account, world.account_created_day, 0), pa.int32(), mask=~has_account
        ),
        "emails": pa.array(emails, pa.list_(pa.string())),
        "phones": pa.array(phones, pa.list_(pa.string())),
        "anonymous_ids": _lists(world.device_anonymous_ids[pair_device], pair_offsets, pa.string()),
        "device_ids": _lists(world.device_ids[pair_device], pair_offsets, pa.string()),
        "device_types": _lists(
            np.array(DEVICE_TYPES, dtype=object)[world.device_types[pair_device]],
            pair_offsets,
            pa.string(),
        ),
        "shared_device_ids": _lists(
            shared_values, np.concatenate([[0], np.cumsum(shared_count)]), pa.string()
        ),
        "household_id": pa.array(world.household_id, pa.int32(), mask=world.household_id < 0),
        "push_device_id": pa.array(push_device.tolist(), pa.string()),
        "email_subscribed": pa.array(world.email_subscribed),
        "email_valid": pa.array(world.email_valid),
        "sms_subscribed": pa.array(world.has_phone.astype(bool)),
        "email_stop_day": pa.array(email_stop_day, pa.int32(), mask=email_stop_day < 0),
        "sms_stop_day": pa.array(sms_stop_day, pa.int32(), mask=sms_stop_day < 0),
        "hour_of_week_preference": _fixed_lists(world.preference.astype(np.float32)),
        "affinity_email": pa.array(world.affinity[:, 0]),
        "affinity_sms": pa.array(world.affinity[:, 1]),
        "affinity_push": pa.array(world.affinity[:, 2]),
        "hour_preference_effect": pa.array(np.full(n, config.hour_preference_effect)),
        "engagement_effect": pa.array(np.full(n, config.engagement_effect)),
        "engagement_baseline": pa.array(world.engagement_baseline.astype(np.float32)),
        "email_click_given_open": pa.array(world.click_given_open),
        "push_receive_probability": pa.array(np.full(n, config.push_receive_probability)),
        "intent_propensity": pa.array(world.intent_propensity),
        "purchase_propensity": pa.array(world.purchase_propensity),
        "browse_activity": pa.array(world.browse_activity),
        "favourite_categories": pa.array(
            [[names[a], names[b]] for a, b in world.favourite_categories.tolist()],
            pa.list_(pa.string()),
        ),
        "daily_state": _fixed_lists(history.state),
        "daily_purchase_hazard": _fixed_lists(history.purchase_hazard),
        "daily_engagement": _fixed_lists(history.engagement),
        "engagement_final": pa.array(history.engagement_final),
        "daily_orders": _fixed_lists(history.orders),
        "daily_clicks": _fixed_lists(history.clicks),
        "daily_sessions": _fixed_lists(history.sessions),
        "daily_product_views": _fixed_lists(history.product_views),
        "daily_products_added": _fixed_lists(history.products_added),
    }
    table = pa.table(columns)
    return table.replace_schema_metadata(metadata)


def _lists(values: np.ndarray, offsets: np.ndarray, kind: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(np.asarray(values).tolist(), kind)
    )


def _fixed_lists(matrix: np.ndarray) -> pa.Array:
    """(N, k) -> a list column of N lists of k values, keeping the dtype."""
    n, k = matrix.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).ravel()))


# --- the oracle ------------------------------------------------------------------------------

_ENGAGEMENT_COLUMNS = (
    "hour_of_week_preference",
    "hour_preference_effect",
    "engagement_effect",
    "daily_engagement",
    "engagement_final",
    "email_valid",
    "push_receive_probability",
    "phones",
    "push_device_id",
)


def true_engagement_probability(
    truth: pd.DataFrame,
    channel: str,
    hour_of_week: np.ndarray | int,
    day: int | None = None,
    *,
    given: str = "sent",
) -> np.ndarray:
    """P(open or click within 24 h | message sent on ``channel`` at ``hour_of_week``), per person.

    ``hour_of_week``: 0 = Monday 00:00 UTC .. 167; a scalar (same hour for everyone), shape (n,)
    (one hour per person) or (n, k) (k hours per person; ``np.arange(168)`` broadcast to
    (n, 168) gives the full weekly curve). ``day``: the simulated day whose engagement level to
    use; None uses the level after the last day. ``given="delivered"`` leaves out delivery
    (hard bounces, push not received). NaN where the person cannot be reached on the channel
    (no phone for SMS, no push-enabled app for push). Matches the simulator's draws exactly.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    _require_columns(truth, (*_ENGAGEMENT_COLUMNS, f"affinity_{channel}"))
    if given not in ("sent", "delivered"):
        raise ValueError(f"given must be 'sent' or 'delivered', got {given!r}")
    n = len(truth)
    hours = np.asarray(hour_of_week)
    if not np.issubdtype(hours.dtype, np.integer):
        raise ValueError(f"hour_of_week must be integers 0..167, got dtype {hours.dtype}")
    if hours.size and (hours.min() < 0 or hours.max() >= HOURS_PER_WEEK):
        raise ValueError(f"hour_of_week must be in 0..167, got {hours.min()}..{hours.max()}")
    if hours.ndim == 0:
        hours = np.full(n, int(hours))
    if hours.ndim > 2 or hours.shape[0] != n:
        raise ValueError(
            f"hour_of_week must be a scalar, shape ({n},) or ({n}, k); got shape {hours.shape}"
        )

    preference = _matrix(truth["hour_of_week_preference"], np.float64)
    if day is None:
        level = truth["engagement_final"].to_numpy(np.float64)
    else:
        daily = _matrix(truth["daily_engagement"], np.float64)
        if not 0 <= day < daily.shape[1]:
            raise ValueError(f"day must be in 0..{daily.shape[1] - 1} or None, got {day}")
        level = daily[:, day]
    if hours.ndim == 2:
        at_hour = np.take_along_axis(preference, hours, axis=1)
    else:
        at_hour = preference[np.arange(n), hours]

    def per_person(values: pd.Series | np.ndarray) -> np.ndarray:  # (n,) -> broadcasts to hours
        values = np.asarray(values)
        return values[:, None] if hours.ndim == 2 else values

    probability = engagement_probability(
        per_person(truth[f"affinity_{channel}"].to_numpy(np.float64)),
        at_hour,
        per_person(level),
        per_person(truth["hour_preference_effect"].to_numpy(np.float64)),
        per_person(truth["engagement_effect"].to_numpy(np.float64)),
    )
    if channel == "email":
        delivery = truth["email_valid"].to_numpy(bool).astype(np.float64)
        reachable = np.ones(n, dtype=bool)
    elif channel == "sms":
        delivery = np.ones(n)
        reachable = truth["phones"].map(len).to_numpy() > 0
    else:
        delivery = truth["push_receive_probability"].to_numpy(np.float64)
        reachable = truth["push_device_id"].notna().to_numpy()
    if given == "sent":
        probability = probability * per_person(delivery)
    return np.where(per_person(reachable), probability, np.nan)


def true_conversion_probability(
    truth: pd.DataFrame, day_from: int, horizon_days: int
) -> np.ndarray:
    """P(at least one order on days [day_from, day_from + horizon_days)), per person.

    Orders are drawn independently each day with ``daily_purchase_hazard`` (the intent path
    does not depend on orders), so this is 1 - prod(1 - hazard) over the window, exactly.
    Days count from the simulation start (day 0).
    """
    _require_columns(truth, ("daily_purchase_hazard",))
    hazard = _matrix(truth["daily_purchase_hazard"], np.float64)
    _check_window(day_from, horizon_days, 0, hazard.shape[1])
    return 1.0 - np.prod(1.0 - hazard[:, day_from : day_from + horizon_days], axis=1)


def present_conversion_probability(
    truth: pd.DataFrame, day_from: int, horizon_days: int, config: SimulationConfig
) -> np.ndarray:
    """P(at least one order on days [day_from, day_from + horizon_days)) knowing each person's
    intent state and clicks up to day ``day_from - 1``, but not what follows.

    ``true_conversion_probability`` multiplies the hazards of the intent path that was drawn, so
    it also knows every future move of the chain (a browser who turns ready on day 3 of the
    window). Here the chain is run forward from the state of the last day before the window:
    the probability that no order happens is propagated over (state, no order yet). The day
    before's clicks lift the first move up as in the simulator; later clicks answer sends not
    drawn yet, so their lift is left out, which makes this slightly low for people about to
    click. ``config`` is the simulation's (``kairos.simulation`` in the truth file's metadata).
    """
    _require_columns(
        truth, ("daily_state", "daily_clicks", "intent_propensity", "purchase_propensity")
    )
    states = _matrix(truth["daily_state"], np.int64)
    # (day 0 has no day before it to start from)
    _check_window(day_from, horizon_days, 1, states.shape[1])
    n = len(truth)
    intent_propensity = truth["intent_propensity"].to_numpy(np.float64)
    purchase_propensity = truth["purchase_propensity"].to_numpy(np.float64)
    every_state = [np.full(n, state, dtype=np.int8) for state in range(3)]
    no_order = np.stack(
        [1.0 - purchase_hazard(state, purchase_propensity, config) for state in every_state],
        axis=1,
    )  # (N, 3): P(no order on a day spent in each state)

    def moves(clicked: np.ndarray) -> np.ndarray:  # (N, 3 from, 3 to)
        rows = []
        for state in every_state:
            stay_low, stay_mid = transition_thresholds(state, intent_propensity, clicked, config)
            rows.append(np.stack([stay_low, stay_mid - stay_low, 1.0 - stay_mid], axis=1))
        return np.stack(rows, axis=1)

    # P(in state k on the day, no order before it), starting from the known state of the day
    # before the window.
    alive = np.zeros((n, 3))
    alive[np.arange(n), states[:, day_from - 1]] = 1.0
    clicked = _matrix(truth["daily_clicks"], np.int64)[:, day_from - 1] > 0
    step = moves(clicked)
    for day in range(horizon_days):
        alive = np.einsum("nk,nkj->nj", alive, step) * no_order
        if day == 0:
            step = moves(np.zeros(n, dtype=bool))
    return 1.0 - alive.sum(axis=1)


def _check_window(day_from: int, horizon_days: int, first_day: int, days: int) -> None:
    """Days [day_from, day_from + horizon_days) must lie within [first_day, days)."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    if day_from < first_day or day_from + horizon_days > days:
        raise ValueError(
            f"window [{day_from}, {day_from + horizon_days}) must lie within the simulated "
            f"days [{first_day}, {days})"
        )


def _matrix(column: pd.Series, dtype: type) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 0), dtype=dtype)
    return np.stack(column.to_numpy()).astype(dtype)


def _require_columns(truth: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in truth.columns]
    if missing:
        raise ValueError(
            f"truth table lacks column(s) {', '.join(missing)}; have: {', '.join(truth.columns)}"
        )
