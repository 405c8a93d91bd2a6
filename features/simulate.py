"""Simulate a brand's cross-channel world: Segment Spec events plus the ground truth behind them.

``simulate(out_dir, customers, days, seed)`` writes two files, byte-identical for the same
arguments:

``events.jsonl``
    One Segment Spec message per line (``track``, ``identify``, ``page``, ``screen``,
    ``alias``), in time order. Timestamps are ISO 8601 in ms, mostly ``Z``; about 3% carry
    another offset (``+01:00``, ``-05:00`` ...) naming the same instant. About 2% of emails
    and phones are written as a person would type them (mixed case, spaces). With
    ``bad_record_rate`` r > 0, about r dirty lines per clean line are mixed in (exact
    duplicates, malformed JSON, no timestamp, unknown type, no identifier, unparseable
    timestamp); the clean lines and the truth do not change with r.
``truth.parquet``
    One row per true person; columns below.

The world (rates in ``SimulationConfig``, every one commented in units)
------------------------------------------------------------------------
People own 1-4 devices (ios, android, desktop, mobile_web), each with its own anonymousId
and ``context.device.id``. About 6% of people share a household device (2-4 people) and one
shop kiosk per 2,000 customers is used by 20-40 people. About 60% have an account (userId);
a quarter of those sign up during the simulation. A device browses anonymously until its
person logs in there (``identify`` with anonymousId + userId + traits; at signup sometimes
also ``alias`` previousId -> userId); logins stick per person and device (not on kiosks) until
a random logout. People without an account, or not logged in, check out as guests: Order
Completed with anonymousId and ``context.traits.email`` and no userId. 5% have a second
email (used at some checkouts and logins), 30% a UK mobile (E.164) and receive SMS.

Sends follow a logged exploration policy: each day every reachable person gets an email with
probability 3/7 (subscribed, not bounced / unsubscribed / complained), an SMS with 1/7
(phone, not opted out), a push with 2/7 (push-enabled app), each at an hour drawn uniformly
(``send_hour_propensity`` = 1/24 is logged on the send). Sends are logged as ``Email Sent``,
``SMS Sent``, ``Push Notification Sent`` with properties ``send_id, campaign_id, channel,
send_hour_propensity``; every outcome carries the same ``send_id``/``campaign_id`` and lands
within 24 h: ``Email Delivered`` | ``Email Bounced`` (hard: address invalid), ``Email
Opened``, ``Email Link Clicked`` (only after an open), ``Unsubscribed``, ``Email Marked as
Spam``; ``SMS Delivered``, ``SMS Link Clicked``, ``SMS Opted Out``; ``Push Notification
Received`` (92%), ``Push Notification Tapped``. Email events carry ``context.traits.email``
(and userId once the account exists), SMS events ``context.traits.phone``, push events the
app device's anonymousId and ``context.device`` (and userId if logged in there).

Engagement (the oracle: ``true_engagement_probability``). For person i, channel c, a send at
hour of week h on day d::

    P(engage | delivered) = sigmoid(affinity_c[i]
                                    + hour_preference_effect * clip(log(168 * w_i[h]), -3, 3)
                                    + engagement_effect * (e_i[d] - 0.5))
    P(engage | sent) = P(engage | delivered) * (email_valid | 1 for SMS | 0.92 for push)

where engage = email open (a click needs an open, P(click | open) = email_click_given_open),
SMS click, push tap; w_i = hour_of_week_preference; e_i[d] = daily_engagement. Tonight's
level: e <- clip(e + 0.05 (baseline - e) + 0.06 engaged - 0.03 ignored, 0.02, 1), counting
today's engaged and delivered-but-ignored messages. Per delivered message, unsubscribe =
0.001 + 0.01 (1 - e)^2, spam = 0.0003 + 0.003 (1 - e)^2, SMS opt-out = 0.003 + 0.03 (1 - e)^2:
mailing disengaged people costs subscribers. Any of them, or a hard bounce, ends that channel
from the next day on.

Shopping intent (the oracle: ``true_conversion_probability``). A daily Markov chain over
dormant (0) / browsing (1) / ready (2): up moves (0->1 0.04, 0->2 0.004, 1->2 0.10 a day) are
multiplied by the person's intent_propensity and by 4 the night after any click or tap; down
moves are 1->0 0.25, 2->0 0.20, 2->1 0.30. One order a day at most, with
``hazard = min(0.9, (0.0005, 0.01, 0.15)[state] * purchase_propensity)``; orders do not feed
back into the chain, so P(order in [a, a+H)) = 1 - prod(1 - hazard[a:a+H]) exactly, given the
path the chain took (``present_conversion_probability`` runs the chain forward from the state
of day a - 1 instead: what can be known at the cutoff). Sessions
(0.015 / 0.25 / 0.7 a day by state, times browse_activity) start at an hour drawn from the same
hour-of-week preference, so purchase-only logs carry timing signal, and produce page/screen
views, ``Product List Viewed``, ``Product Viewed`` (product_id, category, price), ``Product
Added``, ``Cart Viewed``, abandoned ``Checkout Started`` (value) and, on order days, ``Order
Completed`` (order_id, revenue, currency GBP, products with product_id, category, price,
quantity). A click lands in a session with UTM parameters; an email click identifies an
anonymous browser by email half the time.

truth.parquet columns
---------------------
Days count from ``start`` (day 0); every ``daily_*`` list has one value per simulated day.

- ``person_id`` str: the true person, ``p0000000``...
- ``user_id`` str or null: the account's userId (null without an account).
- ``account_created_day`` int or null: -1 created before day 0, else the signup day.
- ``emails`` list[str]: canonical (lower-case) addresses, primary first.
- ``phones`` list[str]: E.164 numbers (0 or 1).
- ``anonymous_ids`` list[str] / ``device_ids`` list[str] / ``device_types`` list[str]: every
  device the person uses (own, household, kiosk), aligned.
- ``shared_device_ids`` list[str]: the anonymousIds and device ids among those that other
  people use too. Every other identifier belongs to exactly one person.
- ``household_id`` int or null; ``push_device_id`` str or null: the push-enabled app device.
- ``email_subscribed``, ``email_valid``, ``sms_subscribed`` bool: list status at day 0.
- ``email_stop_day`` / ``sms_stop_day`` int or null: day of the bounce, unsubscribe, spam
  complaint / SMS opt-out (no sends on that channel after that day).
- ``hour_of_week_preference`` list[float32] x 168: w_i, Monday 00:00 UTC first, sums to 1.
- ``affinity_email``, ``affinity_sms``, ``affinity_push`` float: channel logit intercepts
  (channel base + personal offset).
- ``hour_preference_effect``, ``engagement_effect``, ``push_receive_probability`` float:
  the model constants above, repeated per row so that the table is self-contained.
- ``engagement_baseline`` float: resting engagement level; ``email_click_given_open`` float.
- ``intent_propensity``, ``purchase_propensity``, ``browse_activity`` float: multipliers.
- ``favourite_categories`` list[str]: two categories most product views come from.
- ``daily_state`` list[int8]: intent state each day (0 dormant, 1 browsing, 2 ready).
- ``daily_purchase_hazard`` list[float32]: P(order that day).
- ``daily_engagement`` list[float32]: e_i[d], the level every send of day d was drawn with.
- ``engagement_final`` float32: the level after the last day (``day=None`` in the oracle).
- ``daily_orders`` list[int8]: orders that day (0/1), as in the events.
- ``daily_clicks`` list[int16]: email clicks, SMS clicks and push taps that happened that day.
- ``daily_sessions`` list[int16]: browsing sessions that day (order sessions, signups and
  sessions landing from a message are left out: their number does not depend on intent).
- ``daily_product_views`` / ``daily_products_added`` list[int16]: products viewed / added to
  the cart in those sessions. With the orders and clicks, these are what the events show of a
  person's intent, read by ``history_conversion_probability``.

The parquet schema metadata ``kairos.simulation`` holds the arguments and the full config.
"""

from features.simulator.config import SimulationConfig
from features.simulator.history_filter import history_conversion_probability
from features.simulator.run import DEFAULT_START, SimulationSummary, simulate
from features.simulator.truth import (
    present_conversion_probability,
    true_conversion_probability,
    true_engagement_probability,
)

__all__ = [
    "DEFAULT_START",
    "SimulationConfig",
    "SimulationSummary",
    "history_conversion_probability",
    "present_conversion_probability",
    "simulate",
    "true_conversion_probability",
    "true_engagement_probability",
]
