"""Point-in-time profile aggregates: one row per profile describing it as of an instant ``at``.

Pure SQL text builders: the input is a relation of *profile events* (``profile_id`` plus the
canonical event columns of ``features.contract``), the output a relation with the columns of
:data:`AGGREGATE_COLUMNS`. Only events with ``timestamp <= at`` are read; a window "in the last
D days" at ``at`` is the half-open interval ``(at - D days, at]``, exactly, to the microsecond.
Executing the SQL is the store's job (``features.store``).
"""

from __future__ import annotations

from datetime import datetime

WINDOWS_DAYS = (1, 7, 30, 90)
MESSAGE_CHANNELS = ("email", "sms", "push")
SITE_CHANNELS = ("web", "app")

# Send events per channel; one send may be logged twice (Sent, then Delivered), so sends are
# counted as distinct send_id (or message_id when a source has no send ids).
_SENT = {
    "email": ("Email Sent", "Email Delivered", "Email Bounced"),
    "sms": ("SMS Sent", "SMS Delivered"),
    "push": ("Push Notification Sent", "Push Notification Received"),
}
_OPENED = {"email": ("Email Opened",)}
_CLICKED = {
    "email": ("Email Link Clicked",),
    "sms": ("SMS Link Clicked",),
    "push": ("Push Notification Tapped",),
}
_BROWSE = ("Product Viewed", "Product List Viewed", "Page Viewed", "Screen Viewed")
_CART = ("Product Added", "Checkout Started")
_ENGAGEMENT = ("Email Opened", "Email Link Clicked", "SMS Link Clicked", "Push Notification Tapped")

# (column, meaning). Columns generated per window or channel are listed with their pattern.
AGGREGATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("profile_id", "the profile"),
    ("first_seen_at", "first event of the profile (UTC)"),
    ("last_seen_at", "latest event at or before `at`"),
    ("events_total", "events of any kind"),
    ("orders_total", "Order Completed events"),
    ("revenue_total", "sum of order revenue"),
    ("cancellations_total", "Order Cancelled events"),
    ("last_order_at", "latest order"),
    ("days_since_last_order", "recency in days (NULL without orders)"),
    ("days_since_first_order", "tenure as a customer in days (NULL without orders)"),
    ("average_order_value", "revenue_total / orders_total (NULL without orders)"),
    ("orders_{D}d", "orders in the last D days, D in 1, 7, 30, 90"),
    ("revenue_{D}d", "order revenue in the last D days"),
    ("{C}_sent_{D}d", "messages sent on C (email, sms, push) in the last D days"),
    ("email_opened_{D}d", "email opens in the last D days"),
    ("{C}_clicked_{D}d", "clicks (email, sms) or taps (push) in the last D days"),
    ("hours_since_{C}_engagement", "hours since the last open/click on C (NULL if never)"),
    ("{C}_events_{D}d", "web or app events in the last D days"),
    ("hours_since_{C}_activity", "hours since the last web or app event (NULL if never)"),
    ("hours_since_last_engagement", "hours since the last open, click or tap on any channel"),
    ("product_views_30d", "Product Viewed events in the last 30 days"),
    ("categories_viewed_30d", "distinct categories browsed in the last 30 days"),
    ("last_viewed_category", "category of the latest browse event with a category"),
    ("cart_open", "an item was added or checkout started after the last order"),
    ("cart_value", "value of the open cart: the last checkout's value, else the added items'"),
    ("cart_age_hours", "hours since the open cart's first activity (NULL if no open cart)"),
    ("email_unsubscribed", "ever Unsubscribed"),
    ("email_hard_bounced", "ever Email Bounced"),
    ("email_complained", "ever Email Marked as Spam"),
    ("sms_opted_out", "ever SMS Opted Out"),
)


def _in(names: tuple[str, ...]) -> str:
    return "event IN (" + ", ".join(f"'{n}'" for n in names) + ")"


def _within(days: int) -> str:
    return f"timestamp > @at - INTERVAL {days} DAY"


def _hours_since(condition: str) -> str:
    return f"date_diff('microsecond', max(timestamp) FILTER ({condition}), @at) / 3.6e9"


def timestamp_literal(at: datetime) -> str:
    """A SQL TIMESTAMP literal for a naive UTC datetime (or an aware one, converted)."""
    if at.tzinfo is not None:
        from datetime import UTC

        at = at.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{at.isoformat(sep=' ')}'"


def aggregates_sql(profile_events: str, at: datetime) -> str:
    """SQL for one row per profile with an event at or before ``at``: AGGREGATE_COLUMNS."""
    columns = [
        "min(timestamp) AS first_seen_at",
        "max(timestamp) AS last_seen_at",
        "count(*) AS events_total",
        "count(*) FILTER (event = 'Order Completed') AS orders_total",
        "coalesce(sum(revenue) FILTER (event = 'Order Completed'), 0) AS revenue_total",
        "count(*) FILTER (event = 'Order Cancelled') AS cancellations_total",
        "max(timestamp) FILTER (event = 'Order Completed') AS last_order_at",
        "date_diff('microsecond', max(timestamp) FILTER (event = 'Order Completed'), @at) / 8.64e10"
        " AS days_since_last_order",
        "date_diff('microsecond', min(timestamp) FILTER (event = 'Order Completed'), @at) / 8.64e10"
        " AS days_since_first_order",
        "sum(revenue) FILTER (event = 'Order Completed')"
        " / nullif(count(*) FILTER (event = 'Order Completed'), 0) AS average_order_value",
    ]
    for days in WINDOWS_DAYS:
        recent = _within(days)
        columns += [
            f"count(*) FILTER (event = 'Order Completed' AND {recent}) AS orders_{days}d",
            f"coalesce(sum(revenue) FILTER (event = 'Order Completed' AND {recent}), 0)"
            f" AS revenue_{days}d",
        ]
    for channel in MESSAGE_CHANNELS:
        for days in WINDOWS_DAYS:
            recent = _within(days)
            columns.append(
                f"count(DISTINCT coalesce(send_id, message_id)) FILTER"
                f" ({_in(_SENT[channel])} AND {recent}) AS {channel}_sent_{days}d"
            )
            if channel in _OPENED:
                columns.append(
                    f"count(*) FILTER ({_in(_OPENED[channel])} AND {recent})"
                    f" AS {channel}_opened_{days}d"
                )
            columns.append(
                f"count(*) FILTER ({_in(_CLICKED[channel])} AND {recent})"
                f" AS {channel}_clicked_{days}d"
            )
        engaged = _OPENED.get(channel, ()) + _CLICKED[channel]
        columns.append(f"{_hours_since(_in(engaged))} AS hours_since_{channel}_engagement")
    for channel in SITE_CHANNELS:
        for days in WINDOWS_DAYS:
            columns.append(
                f"count(*) FILTER (channel = '{channel}' AND {_within(days)}"
                f" AND type IN ('track', 'page', 'screen')) AS {channel}_events_{days}d"
            )
        activity = f"channel = '{channel}' AND type IN ('track', 'page', 'screen')"
        columns.append(f"{_hours_since(activity)} AS hours_since_{channel}_activity")
    columns += [
        f"{_hours_since(_in(_ENGAGEMENT))} AS hours_since_last_engagement",
        f"count(*) FILTER (event = 'Product Viewed' AND {_within(30)}) AS product_views_30d",
        f"count(DISTINCT category) FILTER ({_in(_BROWSE)} AND {_within(30)})"
        " AS categories_viewed_30d",
        f"arg_max(category, timestamp) FILTER ({_in(_BROWSE)} AND category IS NOT NULL)"
        " AS last_viewed_category",
        "bool_or(event = 'Unsubscribed') AS email_unsubscribed",
        "bool_or(event = 'Email Bounced') AS email_hard_bounced",
        "bool_or(event = 'Email Marked as Spam') AS email_complained",
        "bool_or(event = 'SMS Opted Out') AS sms_opted_out",
    ]
    at_sql = timestamp_literal(at)
    aggregate_list = ",\n        ".join(columns).replace("@at", at_sql)
    return f"""
WITH visible AS (
    SELECT * FROM {profile_events} WHERE timestamp <= {at_sql}
),
last_orders AS (
    SELECT profile_id, max(timestamp) AS last_order_at
    FROM visible WHERE event = 'Order Completed' GROUP BY profile_id
),
carts AS (
    -- Cart activity after the profile's last order is an open cart.
    SELECT v.profile_id,
           min(v.timestamp) AS cart_started_at,
           arg_max(v.revenue, v.timestamp) FILTER (v.event = 'Checkout Started') AS checkout_value,
           sum(v.revenue) FILTER (v.event = 'Product Added') AS added_value
    FROM visible AS v LEFT JOIN last_orders AS o USING (profile_id)
    WHERE {_in(_CART).replace("event", "v.event")}
      AND (o.last_order_at IS NULL OR v.timestamp > o.last_order_at)
    GROUP BY v.profile_id
),
per_profile AS (
    SELECT profile_id,
        {aggregate_list}
    FROM visible GROUP BY profile_id
)
SELECT p.*,
       c.profile_id IS NOT NULL AS cart_open,
       coalesce(c.checkout_value, c.added_value, 0) AS cart_value,
       date_diff('microsecond', c.cart_started_at, {at_sql}) / 3.6e9 AS cart_age_hours
FROM per_profile AS p LEFT JOIN carts AS c USING (profile_id)
ORDER BY p.profile_id
"""
