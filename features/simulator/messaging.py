"""Email, SMS and push sends of one simulated day and their outcomes.

The brand runs a logged exploration policy: each day every reachable person gets a send on a
channel with a fixed probability, at an hour drawn from ``send_hour_probabilities`` (uniform by
default), and the propensity of that hour is logged on the send. Whether the person engages is
drawn from ``features.simulator.model.engagement_probability`` at the send's hour of week.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.simulator.config import SimulationConfig
from features.simulator.context import Counters, Day, People, Run
from features.simulator.model import complaint_probability, engagement_probability
from features.simulator.sessions import Landings
from features.simulator.wire import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    SHOP_URL,
    Batch,
    Stamper,
    maybe_noisy,
    noisy_email,
    noisy_phone,
    track_messages,
)
from features.simulator.world import World, sample_pairs

CHANNEL_COLUMN = {"email": 0, "sms": 1, "push": 2}  # columns of World.affinity
_OUTCOME_WINDOW_MS = 23 * HOUR_MS + 30 * MINUTE_MS  # every outcome within this of its send


@dataclass
class MessagingDay:
    batch: Batch
    engaged: np.ndarray  # (N,) messages opened / clicked / tapped, by send day
    ignored: np.ndarray  # (N,) messages delivered and not engaged with
    clicks_today: np.ndarray  # (N,) clicks and taps that happened today ...
    clicks_tomorrow: np.ndarray  # (N,) ... and those on today's sends that happen tomorrow
    landings: Landings


@dataclass
class _Sends:
    """One channel's sends of the day, one row per send."""

    person: np.ndarray  # (S,) int
    t_ms: np.ndarray  # (S,) int64
    probability: np.ndarray  # (S,) P(engage | delivered) the outcome is drawn with
    props: list[dict[str, Any]]  # send_id, campaign_id, channel: shared by every outcome
    sent_props: list[dict[str, Any]]  # the same plus send_hour_propensity, for the send
    user_ids: np.ndarray  # (S,) object, None where no userId rides along
    contexts: np.ndarray  # (S,) object
    anonymous_ids: np.ndarray | None = None  # (S,) object, push only

    def __len__(self) -> int:
        return len(self.person)


class _Outbox:
    """One day's messages, engagement counts, clicks and the sessions clicks start."""

    def __init__(self, day_start_ms: int, world: World, stamper: Stamper) -> None:
        self.day_start_ms = day_start_ms
        self.world = world
        self.stamper = stamper
        self.batches: list[Batch] = []
        self.landings: list[Landings] = []
        self.engaged = np.zeros(world.n, np.int64)
        self.ignored = np.zeros(world.n, np.int64)
        self.clicks = [np.zeros(world.n, np.int64), np.zeros(world.n, np.int64)]  # today, next

    def log(
        self,
        event: str,
        sends: _Sends,
        rows: np.ndarray | None = None,
        t_ms: np.ndarray | None = None,
        extra: Callable | None = None,
    ) -> None:
        """``event`` for the sends at boolean ``rows`` (all: the send itself) at ``t_ms``."""
        if rows is None:
            index, t_ms, props = np.arange(len(sends)), sends.t_ms, sends.sent_props
        else:
            index, t_ms = np.flatnonzero(rows), t_ms[rows]
            props = [sends.props[i] for i in index.tolist()]
            if extra is not None:
                props = [{**p, **extra(p)} for p in props]
        if len(index) == 0:
            return
        anonymous = None if sends.anonymous_ids is None else sends.anonymous_ids[index].tolist()
        message_ids, timestamps = self.stamper.stamp(t_ms)
        messages = track_messages(
            event,
            message_ids,
            timestamps,
            anonymous,
            sends.user_ids[index].tolist(),
            props,
            sends.contexts[index].tolist(),
        )
        self.batches.append(Batch.serialise(t_ms, messages))

    def count(self, sends: _Sends, engaged: np.ndarray, delivered: np.ndarray) -> None:
        np.add.at(self.engaged, sends.person[engaged], 1)
        np.add.at(self.ignored, sends.person[delivered & ~engaged], 1)

    def clicked(
        self,
        channel: str,
        sends: _Sends,
        rows: np.ndarray,
        t_ms: np.ndarray,
        pair: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Count clicks by the day they happen; each starts a session (on ``pair`` if >= 0)."""
        person, t_ms, pair = sends.person[rows], t_ms[rows], pair[rows]
        after = (t_ms - self.day_start_ms) // DAY_MS  # 0 today, 1 tomorrow
        for offset in (0, 1):
            np.add.at(self.clicks[offset], person[after == offset], 1)
        w = self.world
        own = sample_pairs(person, w.own_cdf, w.pair_table, rng.random(len(person)))
        campaign = [sends.props[i]["campaign_id"] for i in np.flatnonzero(rows).tolist()]
        self.landings.append(
            Landings(
                person,
                np.where(pair >= 0, pair, own),
                t_ms,
                np.full(len(person), channel, dtype=object),
                np.array(campaign, dtype=object),
            )
        )

    def day(self) -> MessagingDay:
        return MessagingDay(
            batch=Batch.concat(self.batches) if self.batches else Batch.empty(),
            engaged=self.engaged,
            ignored=self.ignored,
            clicks_today=self.clicks[0],
            clicks_tomorrow=self.clicks[1],
            landings=Landings.concat(self.landings) if self.landings else Landings.empty(),
        )


def simulate_messaging(day: Day, people: People, run: Run) -> MessagingDay:
    """Draw today's sends and outcomes; sets the stop days of people who leave a channel."""
    world, config, rng = run.world, run.config, run.rng
    engagement = people.engagement
    outbox = _Outbox(day.start_ms, world, run.stamper)
    # The ESP learns a new account's userId the day after signup.
    has_user = world.account_created_day < day.index
    noise = config.identifier_format_noise_share

    def plan(channel: str, reachable: np.ndarray, per_week: float) -> _Sends:
        """Who gets a send today (probability per_week / 7), when, and their P(engage)."""
        person = np.flatnonzero(reachable & (rng.random(world.n) < per_week / 7.0))
        hour, propensity = _send_hours(len(person), rng, config)
        jitter = rng.integers(0, int(config.send_jitter_minutes * MINUTE_MS) + 1, len(person))
        probability = engagement_probability(
            world.affinity[person, CHANNEL_COLUMN[channel]],
            world.preference[person, day.day_of_week * 24 + hour],
            engagement[person],
            config.hour_preference_effect,
            config.engagement_effect,
        )
        campaign = rng.integers(config.campaigns_per_channel_per_day, size=len(person))
        campaign_ids = [
            f"cmp-{channel}-{day.index:03d}-{k}"
            for k in range(config.campaigns_per_channel_per_day)
        ]
        props, sent_props = [], []
        for send_id, k, p in zip(
            _send_ids(len(person), run.counters),
            campaign.tolist(),
            propensity.tolist(),
            strict=True,
        ):
            shared = {"send_id": send_id, "campaign_id": campaign_ids[k], "channel": channel}
            props.append(shared)
            sent_props.append({**shared, "send_hour_propensity": p})
        user_ids = np.where(has_user[person], world.user_ids[person], None)
        return _Sends(
            person,
            day.start_ms + hour * HOUR_MS + jitter,
            probability,
            props,
            sent_props,
            user_ids,
            np.empty(len(person), dtype=object),
        )

    # --- email: delivered or hard-bounced, opened, clicked, unsubscribed / complained ---------
    sends = plan(
        "email",
        world.email_subscribed & (people.email_stop_day < 0),
        config.email_sends_per_week,
    )
    person, n = sends.person, len(sends)
    emails = maybe_noisy(world.emails[person], rng, noise, noisy_email)
    sends.contexts[:] = [{"traits": {"email": e}} for e in emails.tolist()]
    delivered = world.email_valid[person]
    t_delivered = sends.t_ms + rng.integers(1_000, 60_000, size=n)
    opened = delivered & (rng.random(n) < sends.probability)
    t_opened = _delay(t_delivered, 30_000, config.email_open_delay_minutes, sends.t_ms, rng)
    clicked = opened & (rng.random(n) < world.click_given_open[person])
    t_clicked = _delay(t_opened, 3_000, config.email_click_delay_minutes, sends.t_ms, rng)
    level, u = engagement[person], rng.random(n)
    p_unsubscribe = complaint_probability(
        level, config.unsubscribe_base, config.unsubscribe_disengaged
    )
    p_spam = complaint_probability(level, config.spam_base, config.spam_disengaged)
    unsubscribed = delivered & (u < p_unsubscribe)
    spam = delivered & ~unsubscribed & (u < p_unsubscribe + p_spam)
    t_complaint = np.where(
        opened,
        _delay(t_opened, 20_000, 2.0, sends.t_ms, rng),  # the unsubscribe link in the email
        _delay(t_delivered, 60_000, config.complaint_delay_minutes, sends.t_ms, rng),
    )
    outbox.log("Email Sent", sends)
    outbox.log("Email Bounced", sends, ~delivered, t_delivered, lambda p: {"bounce_type": "hard"})
    outbox.log("Email Delivered", sends, delivered, t_delivered)
    outbox.log("Email Opened", sends, opened, t_opened)
    outbox.log("Email Link Clicked", sends, clicked, t_clicked, _link)
    outbox.log("Unsubscribed", sends, unsubscribed, t_complaint)
    outbox.log("Email Marked as Spam", sends, spam, t_complaint)
    people.email_stop_day[person[~delivered | unsubscribed | spam]] = day.index
    outbox.count(sends, opened, delivered)
    outbox.clicked("email", sends, clicked, t_clicked, np.full(n, -1), rng)

    # --- SMS: delivered, clicked, opted out ------------------------------------------------------
    sends = plan("sms", world.has_phone & (people.sms_stop_day < 0), config.sms_sends_per_week)
    person, n = sends.person, len(sends)
    phones = maybe_noisy(world.phones[person], rng, noise, noisy_phone)
    sends.contexts[:] = [{"traits": {"phone": p}} for p in phones.tolist()]
    t_delivered = sends.t_ms + rng.integers(1_000, 10_000, size=n)
    clicked = rng.random(n) < sends.probability
    t_clicked = _delay(t_delivered, 5_000, config.sms_click_delay_minutes, sends.t_ms, rng)
    p_opt_out = complaint_probability(
        engagement[person], config.sms_opt_out_base, config.sms_opt_out_disengaged
    )
    opted_out = rng.random(n) < p_opt_out
    t_opted_out = _delay(t_delivered, 10_000, config.complaint_delay_minutes / 6, sends.t_ms, rng)
    outbox.log("SMS Sent", sends)
    outbox.log("SMS Delivered", sends, np.ones(n, bool), t_delivered)
    outbox.log("SMS Link Clicked", sends, clicked, t_clicked, _link)
    outbox.log("SMS Opted Out", sends, opted_out, t_opted_out)
    people.sms_stop_day[person[opted_out]] = day.index
    outbox.count(sends, clicked, np.ones(n, bool))
    outbox.clicked("sms", sends, clicked, t_clicked, np.full(n, -1), rng)

    # --- push: to the app device, received, tapped ---------------------------------------------
    sends = plan("push", world.push_pair >= 0, config.push_sends_per_week)
    person, n = sends.person, len(sends)
    pair = world.push_pair[person]
    device = world.pair_device[pair]
    sends.anonymous_ids = world.device_anonymous_ids[device]
    sends.user_ids = np.where(people.pair_logged_in[pair], world.user_ids[person], None)
    sends.contexts = run.wire.device_context[device]
    received = rng.random(n) < config.push_receive_probability
    t_received = sends.t_ms + rng.integers(500, 5_000, size=n)
    tapped = received & (rng.random(n) < sends.probability)
    t_tapped = _delay(t_received, 2_000, config.push_tap_delay_minutes, sends.t_ms, rng)
    outbox.log("Push Notification Sent", sends)
    outbox.log("Push Notification Received", sends, received, t_received)
    outbox.log("Push Notification Tapped", sends, tapped, t_tapped)
    outbox.count(sends, tapped, received)
    outbox.clicked("push", sends, tapped, t_tapped, pair, rng)
    return outbox.day()


def _send_ids(n: int, counters: Counters) -> list[str]:
    first = counters.sends
    counters.sends += n
    return [f"send-{i:09d}" for i in range(first, first + n)]


def _send_hours(
    n: int, rng: np.random.Generator, config: SimulationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Hours picked by the logged policy and the propensity of each pick."""
    probabilities = np.asarray(config.send_hour_probabilities)
    if config.send_hour_weights is None:
        hour = rng.integers(24, size=n)
    else:
        hour = rng.choice(24, p=probabilities, size=n)
    return hour, probabilities[hour]


def _delay(
    t_from: np.ndarray,
    minimum_ms: int,
    mean_minutes: float,
    t_send: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """t_from + minimum + Exponential(mean), capped to stay within 23.5 h of the send."""
    delay = minimum_ms + (rng.exponential(size=len(t_from)) * mean_minutes * MINUTE_MS)
    return np.minimum(t_from + delay.astype(np.int64), t_send + _OUTCOME_WINDOW_MS)


def _link(props: dict[str, Any]) -> dict[str, Any]:
    campaign, channel = props["campaign_id"], props["channel"]
    return {"url": f"{SHOP_URL}/?utm_source={channel}&utm_medium={channel}&utm_campaign={campaign}"}
