"""Every rate of the simulated world in one typed, validated config object."""

from __future__ import annotations

from dataclasses import dataclass, fields

CHANNELS = ("email", "sms", "push")
INTENT_STATES = ("dormant", "browsing", "ready")  # daily_state codes 0, 1, 2
DEVICE_TYPES = ("ios", "android", "desktop", "mobile_web")  # device type codes 0..3
APP_DEVICE_TYPES = (0, 1)  # ios, android: screens and push; the others send pages
HOURS_PER_WEEK = 168
# Hour terms are clipped so that a near-zero preference cannot drive a probability to zero.
HOUR_TERM_LIMIT = 3.0  # |log(168 * preference)| at most this, in nats


@dataclass(frozen=True)
class SimulationConfig:
    """Rates of the simulated world. Probabilities are per person unless the comment says."""

    # --- people and identifiers ---------------------------------------------------------------
    account_share: float = 0.60  # people with an account (userId)
    account_pre_existing_share: float = 0.75  # of accounts: created before day 0; rest sign up
    second_email_share: float = 0.05  # people with a second email address
    phone_share: float = 0.30  # people with a phone number, all SMS subscribers
    # Own devices per person: P(1), P(2), P(3), P(4).
    devices_per_person: tuple[float, float, float, float] = (0.35, 0.35, 0.20, 0.10)
    # Type of an own device: P(ios), P(android), P(desktop), P(mobile_web).
    device_type_mix: tuple[float, float, float, float] = (0.25, 0.20, 0.30, 0.25)
    household_share: float = 0.06  # people in a 2-4 person household sharing one device
    customers_per_kiosk: int = 2000  # one shop kiosk per this many customers (at least one)
    kiosk_users: tuple[int, int] = (20, 40)  # people using one kiosk, inclusive range
    email_subscribed_share_account: float = 0.85  # account holders on the email list
    email_subscribed_share_guest: float = 0.50  # people without an account on the list
    email_invalid_share: float = 0.03  # list addresses that hard-bounce
    push_opt_in_share: float = 0.60  # people with an app device who allow push
    logged_in_at_start_share: float = 0.30  # own devices of existing accounts logged in at day 0

    # --- wire format noise (the store must normalise these) ---------------------------------
    non_utc_timestamp_share: float = 0.03  # timestamps written with an offset, same instant
    identifier_format_noise_share: float = 0.02  # emails in mixed case, phones with spaces

    # --- logged exploration send policy -------------------------------------------------------
    email_sends_per_week: float = 3.0  # per subscribed person
    sms_sends_per_week: float = 1.0  # per phone subscriber
    push_sends_per_week: float = 2.0  # per push-enabled app user
    campaigns_per_channel_per_day: int = 2  # distinct campaign_ids a day's sends are split over
    # Relative weights of the 24 send hours; None = uniform (propensity 1/24). Logged per send.
    send_hour_weights: tuple[float, ...] | None = None
    send_jitter_minutes: float = 10.0  # sends leave within this many minutes after the hour

    # --- engagement: P(engage | delivered) = sigmoid(logit), see features.simulator.model ----
    email_open_logit: float = -1.6  # channel intercept: about 17% opens at neutral hour/level
    sms_click_logit: float = -2.4  # about 8% clicks
    push_tap_logit: float = -2.2  # about 10% taps
    affinity_sd: float = 0.7  # person x channel intercept spread, logit units
    hour_preference_effect: float = 0.5  # logit per nat of log(168 * hour-of-week preference)
    engagement_effect: float = 2.0  # logit per unit of engagement level above 0.5
    engagement_baseline_beta: tuple[float, float] = (5.0, 3.0)  # Beta(a, b) of resting level
    engagement_recovery: float = 0.05  # per day, fraction of the gap to the resting level closed
    engagement_boost: float = 0.06  # level gained per engaged message
    engagement_fatigue: float = 0.03  # level lost per delivered message ignored
    engagement_floor: float = 0.02  # lowest engagement level
    click_given_open_beta: tuple[float, float] = (2.0, 8.0)  # Beta(a, b): P(email click | open)
    push_receive_probability: float = 0.92  # push sends that reach the device
    # Complaints and opt-outs per delivered message: base + disengaged * (1 - level)^2.
    unsubscribe_base: float = 0.001
    unsubscribe_disengaged: float = 0.01
    spam_base: float = 0.0003
    spam_disengaged: float = 0.003
    sms_opt_out_base: float = 0.003
    sms_opt_out_disengaged: float = 0.03
    # Delays after delivery, exponential means in minutes; every outcome lands within 24 h.
    email_open_delay_minutes: float = 120.0
    email_click_delay_minutes: float = 1.5  # after the open
    sms_click_delay_minutes: float = 15.0
    push_tap_delay_minutes: float = 6.0
    complaint_delay_minutes: float = 180.0  # unsubscribe / spam / opt-out without an open

    # --- latent shopping intent (Markov chain per day) -----------------------------------------
    initial_state_mix: tuple[float, float, float] = (0.75, 0.20, 0.05)
    # Daily transition probabilities. Moves up are scaled by intent_propensity and, the day
    # after a click on any channel, by click_intent_lift.
    dormant_to_browsing: float = 0.04
    dormant_to_ready: float = 0.004
    browsing_to_ready: float = 0.10
    browsing_to_dormant: float = 0.25
    ready_to_dormant: float = 0.20
    ready_to_browsing: float = 0.30
    intent_propensity_sd: float = 0.5  # lognormal sigma of the person's up-move multiplier
    click_intent_lift: float = 4.0  # multiplier on moves up the day after a click
    purchase_hazard: tuple[float, float, float] = (0.0005, 0.01, 0.15)  # per day, by state
    purchase_propensity_sd: float = 0.5  # lognormal sigma of the person's hazard multiplier
    max_purchase_hazard: float = 0.9  # per day
    session_rate: tuple[float, float, float] = (0.015, 0.25, 0.70)  # sessions per day, by state
    browse_activity_sd: float = 0.5  # lognormal sigma of the person's session-rate multiplier
    product_views_mean: tuple[float, float, float] = (0.3, 0.8, 1.2)  # beyond the first, by state
    add_to_cart: tuple[float, float, float] = (0.02, 0.06, 0.20)  # per product viewed, by state
    cart_view_given_added: float = 0.6  # browsing sessions with an add that open the cart
    checkout_given_cart: float = 0.4  # of those, abandoned checkouts
    home_page_share: float = 0.5  # sessions entering through the home page
    category_list_share: float = 0.5  # sessions viewing a category list (a second: half again)
    favourite_category_share: float = 0.7  # product views in the person's favourite categories
    login_per_session: tuple[float, float, float] = (0.30, 0.15, 0.10)  # own, household, kiosk
    login_at_checkout: float = 0.85  # account holders not logged in who log in to order
    daily_logout: float = 0.02  # logged-in own/household devices that log out, per day
    alias_at_signup: float = 0.30  # signups that also send alias(previousId -> userId)
    email_identify_on_click: float = 0.50  # email clicks that identify the browser by email
    second_email_at_checkout: float = 0.5  # guest orders of two-address people using the second

    # --- catalogue -------------------------------------------------------------------------------
    categories: int = 10
    products_per_category: int = 60
    price_median: float = 30.0  # GBP
    price_sd: float = 0.6  # lognormal sigma

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_logit"):
                continue  # logits may be any real number
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(v is not None and v < 0 for v in numbers):
                raise ValueError(f"simulation config {f.name} must not be negative, got {value}")
        for name in ("devices_per_person", "device_type_mix", "initial_state_mix"):
            total = sum(getattr(self, name))
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"simulation config {name} must sum to 1, got {total}")
        if self.send_hour_weights is not None and (
            len(self.send_hour_weights) != 24 or sum(self.send_hour_weights) <= 0
        ):
            raise ValueError("simulation config send_hour_weights needs 24 weights, not all zero")
        if self.kiosk_users[0] > self.kiosk_users[1]:
            raise ValueError(
                f"simulation config kiosk_users must be (low, high): {self.kiosk_users}"
            )

    @property
    def send_hour_probabilities(self) -> tuple[float, ...]:
        """Probability the logged policy picks each hour of the day (its propensity)."""
        weights = self.send_hour_weights or (1.0,) * 24
        total = sum(weights)
        return tuple(w / total for w in weights)
