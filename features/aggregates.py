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
# Orders are also counted over longer windows: buying is seasonal and many customers order a few
# times a year (on the Online Retail split these and the year-ago month below lifted test ROC-AUC
# from 0.8057 to 0.8093 for LightGBM and from 0.8047 to 0.8089 for the sequence model).
ORDER_WINDOWS_DAYS = (*WINDOWS_DAYS, 180, 365)
# "The same month last year": the 30 days that followed this instant a year (365 days) earlier,
# (at - 365 days, at - 335 days]. A window of its own, not one of the nested ones.
YEAR_AGO_DAYS, YEAR_AGO_LENGTH_DAYS = 365, 30
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
    ("orders_{D}d", "orders in the last D days, D in 1, 7, 30, 90, 180, 365"),
    ("revenue_{D}d", "order revenue in the last D days"),
    ("orders_year_ago_next_30d", "orders in the 30 days after this instant a year earlier"),
    ("revenue_year_ago_next_30d", "their revenue"),
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


# The wide per-profile aggregate reads ``condensed``: one row per profile, event, channel, type
# and the smallest window holding the events (``window_days``; NULL when older than them all).
# Each window is a union of those buckets, so counting rows of buckets is exact, and it reads
# a fraction of the rows the events have. The year-ago month is the bucket between 335 and 365
# days ago (``window_days = 365``), split off the 365-day window for that purpose.
_BUCKETS_DAYS = tuple(sorted({*ORDER_WINDOWS_DAYS, YEAR_AGO_DAYS - YEAR_AGO_LENGTH_DAYS}))


def _within(days: int) -> str:
    return f"window_days <= {days}"


def _count(condition: str) -> str:
    return f"coalesce(sum(n) FILTER ({condition}), 0)::BIGINT"


def _from_per_profile(expression: str) -> str:
    """``"... AS name"`` -> ``"p.name"``: the column as the final SELECT reads it."""
    return "p." + expression.rsplit(" AS ", 1)[1]


def _hours_since(condition: str) -> str:
    return f"date_diff('microsecond', max(last_at) FILTER ({condition}), @at) / 3.6e9"


def timestamp_literal(at: datetime) -> str:
    """A SQL TIMESTAMP literal for a naive UTC datetime (or an aware one, converted)."""
    if at.tzinfo is not None:
        from datetime import UTC

        at = at.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{at.isoformat(sep=' ')}'"


def aggregates_sql(profile_events: str, at: datetime) -> str:
    """SQL for one row per profile with an event at or before ``at``: AGGREGATE_COLUMNS."""
    ordered = "event = 'Order Completed'"
    columns = [
        "min(first_at) AS first_seen_at",
        "max(last_at) AS last_seen_at",
        "sum(n)::BIGINT AS events_total",
        f"{_count(ordered)} AS orders_total",
        f"coalesce(sum(revenue) FILTER ({ordered}), 0) AS revenue_total",
        _count("event = 'Order Cancelled'") + " AS cancellations_total",
        f"max(last_at) FILTER ({ordered}) AS last_order_at",
        f"date_diff('microsecond', max(last_at) FILTER ({ordered}), @at) / 8.64e10"
        " AS days_since_last_order",
        f"date_diff('microsecond', min(first_at) FILTER ({ordered}), @at) / 8.64e10"
        " AS days_since_first_order",
        f"sum(revenue) FILTER ({ordered}) / nullif(sum(n) FILTER ({ordered}), 0)"
        " AS average_order_value",
    ]
    for days in ORDER_WINDOWS_DAYS:
        recent = _within(days)
        columns += [
            f"{_count(f'{ordered} AND {recent}')} AS orders_{days}d",
            f"coalesce(sum(revenue) FILTER ({ordered} AND {recent}), 0) AS revenue_{days}d",
        ]
    year_ago = f"window_days = {YEAR_AGO_DAYS}"
    columns += [
        f"{_count(f'{ordered} AND {year_ago}')} AS orders_year_ago_next_30d",
        f"coalesce(sum(revenue) FILTER ({ordered} AND {year_ago}), 0) AS revenue_year_ago_next_30d",
    ]
    output = ["p.profile_id"]  # the final column order, which AGGREGATE_COLUMNS documents
    output += [_from_per_profile(c) for c in columns]
    send_columns = []  # counted over the sends CTE, one row per send
    for channel in MESSAGE_CHANNELS:
        for days in WINDOWS_DAYS:
            recent = _within(days)
            name = f"{channel}_sent_{days}d"
            send_columns.append(f"count(*) FILTER (channel = '{channel}' AND {recent}) AS {name}")
            output.append(f"coalesce(s.{name}, 0) AS {name}")
            if channel in _OPENED:
                columns.append(
                    f"{_count(f'{_in(_OPENED[channel])} AND {recent}')} AS {channel}_opened_{days}d"
                )
                output.append(f"p.{channel}_opened_{days}d")
            columns.append(
                f"{_count(f'{_in(_CLICKED[channel])} AND {recent}')} AS {channel}_clicked_{days}d"
            )
            output.append(f"p.{channel}_clicked_{days}d")
        engaged = _OPENED.get(channel, ()) + _CLICKED[channel]
        columns.append(f"{_hours_since(_in(engaged))} AS hours_since_{channel}_engagement")
        output.append(f"p.hours_since_{channel}_engagement")
    tail = []
    for channel in SITE_CHANNELS:
        activity = f"channel = '{channel}' AND type IN ('track', 'page', 'screen')"
        for days in WINDOWS_DAYS:
            tail.append(f"{_count(f'{activity} AND {_within(days)}')} AS {channel}_events_{days}d")
        tail.append(f"{_hours_since(activity)} AS hours_since_{channel}_activity")
    tail += [
        f"{_hours_since(_in(_ENGAGEMENT))} AS hours_since_last_engagement",
        _count(f"event = 'Product Viewed' AND {_within(30)}") + " AS product_views_30d",
    ]
    columns += tail
    output += [_from_per_profile(c) for c in tail]
    output += ["coalesce(b.categories_viewed_30d, 0) AS categories_viewed_30d"]
    output += ["b.last_viewed_category"]
    flags = [
        "bool_or(event = 'Unsubscribed') AS email_unsubscribed",
        "bool_or(event = 'Email Bounced') AS email_hard_bounced",
        "bool_or(event = 'Email Marked as Spam') AS email_complained",
        "bool_or(event = 'SMS Opted Out') AS sms_opted_out",
    ]
    columns += flags
    output += [_from_per_profile(c) for c in flags]

    at_sql = timestamp_literal(at)
    aggregate_list = ",\n        ".join(columns).replace("@at", at_sql)
    output_list = ",\n       ".join(output)
    send_list = ",\n        ".join(send_columns)
    send_channel = " ".join(
        f"WHEN {_in(_SENT[channel])} THEN '{channel}'" for channel in MESSAGE_CHANNELS
    )
    send_names = tuple(name for channel in MESSAGE_CHANNELS for name in _SENT[channel])
    buckets = " ".join(
        f"WHEN timestamp > {at_sql} - INTERVAL {days} DAY THEN {days}" for days in _BUCKETS_DAYS
    )
    return f"""
WITH visible AS (
    SELECT * FROM {profile_events} WHERE timestamp <= {at_sql}
),
condensed AS (
    SELECT profile_id, event, channel, type, CASE {buckets} END AS window_days,
           count(*) AS n, sum(revenue) AS revenue,
           min(timestamp) AS first_at, max(timestamp) AS last_at
    FROM visible GROUP BY ALL
),
browsing AS (
    SELECT profile_id,
           count(DISTINCT category) FILTER (timestamp > {at_sql} - INTERVAL 30 DAY)
               AS categories_viewed_30d,
           arg_max(category, timestamp) FILTER (category IS NOT NULL) AS last_viewed_category
    FROM visible WHERE {_in(_BROWSE)} GROUP BY profile_id
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
sends AS (
    -- One row per send: it may be logged twice (Sent, then Delivered) under one send_id. A
    -- send is in a window when its latest record is, which is when any of its records is.
    SELECT profile_id, channel, CASE {buckets} END AS window_days
    FROM (
        SELECT profile_id, CASE {send_channel} END AS channel, max(timestamp) AS timestamp
        FROM visible WHERE {_in(send_names)}
        GROUP BY profile_id, coalesce(send_id, message_id), 2
    )
),
send_counts AS (
    SELECT profile_id,
        {send_list}
    FROM sends GROUP BY profile_id
),
per_profile AS (
    SELECT profile_id,
        {aggregate_list}
    FROM condensed GROUP BY profile_id
)
SELECT {output_list},
       c.profile_id IS NOT NULL AS cart_open,
       coalesce(c.checkout_value, c.added_value, 0) AS cart_value,
       date_diff('microsecond', c.cart_started_at, {at_sql}) / 3.6e9 AS cart_age_hours
FROM per_profile AS p
LEFT JOIN carts AS c USING (profile_id)
LEFT JOIN send_counts AS s USING (profile_id)
LEFT JOIN browsing AS b USING (profile_id)
ORDER BY p.profile_id
"""
