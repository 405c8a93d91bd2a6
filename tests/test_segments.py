"""Segment rules: loading and validation, exact time windows in both evaluators, explain.

Every evaluation fixture runs through the batch evaluator (membership query and timelines) and
the incremental evaluator, which must agree before the expected value is checked.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta

import duckdb
import orjson
import pyarrow as pa
import pytest
import yaml

from serving.segments.batch import (
    evaluate_batch,
    find_profile,
    profile_events_at,
    score_thresholds,
)
from serving.segments.explain import explain
from serving.segments.incremental import SegmentEngine
from serving.segments.library import (
    DEFAULT_LIBRARY,
    SegmentDefinitionError,
    load_library,
    parse_library,
)
from serving.segments.schema import json_schema, parse_duration

T = datetime(2026, 3, 2, 12, 0)  # a Monday
H = timedelta(hours=1)
D = timedelta(days=1)
US = timedelta(microseconds=1)

_SCHEMA = pa.schema(
    [
        ("profile_id", pa.string()),
        ("event", pa.string()),
        ("timestamp", pa.timestamp("us")),
        ("category", pa.string()),
        ("revenue", pa.float64()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("channel", pa.string()),
        ("properties", pa.string()),
    ]
)


def ev(name: str, at: datetime, profile: str = "p", **columns) -> dict:
    properties = columns.pop("properties", None)
    return {
        "profile_id": profile,
        "event": name,
        "timestamp": at,
        "properties": orjson.dumps(properties).decode() if properties is not None else None,
        **columns,
    }


def library_of(condition: dict, fallback: dict | None = None, scores: bool = False, **more):
    segments = {"s": {"when": condition} | ({"fallback": fallback} if fallback else {})}
    segments |= {name: {"when": c} for name, c in more.items()}
    return parse_library(
        yaml.safe_dump({"version": 1, "segments": segments}), scores_available=scores
    )


def evaluate(library, events, at, scores=None):
    """{(profile, segment): entered_at} from both evaluators, after checking they agree."""
    connection = duckdb.connect()
    rows = [{k: e.get(k) for k in _SCHEMA.names} for e in events]
    connection.register("rows", pa.Table.from_pylist(rows, schema=_SCHEMA))
    connection.execute("CREATE TABLE pe AS SELECT * FROM rows")
    scores_table = None
    if library.scores_available:
        score_rows = [{"profile_id": p, **s} for p, s in (scores or {}).items()]
        schema = pa.schema(
            [("profile_id", pa.string())]
            + [
                (n, pa.float64())
                for n in ("p_convert", "p_engage_email", "p_engage_sms", "p_engage_push")
            ]
            + [("best_hour_of_week", pa.int64())]
        )
        connection.register("score_rows", pa.Table.from_pylist(score_rows, schema=schema))
        connection.execute("CREATE TABLE sc AS SELECT * FROM score_rows")
        scores_table = "sc"
    timeline = evaluate_batch(connection, "pe", library, at, scores=scores_table)
    membership = evaluate_batch(
        connection, "pe", library, at, scores=scores_table, entered_at=False
    )
    batch = {
        (r["profile_id"], r["segment"]): r["entered_at"] for r in timeline.memberships.to_pylist()
    }
    assert {(r["profile_id"], r["segment"]) for r in membership.memberships.to_pylist()} == set(
        batch
    )
    thresholds = (
        score_thresholds(connection, "pe", library, at, scores_table) if scores_table else {}
    )
    engine = SegmentEngine(library, {k: v for k, v in thresholds.items() if v is not None})
    incremental = {}
    for profile in sorted({e["profile_id"] for e in events}):
        mine = sorted(
            (e for e in events if e["profile_id"] == profile and e["timestamp"] <= at),
            key=lambda e: e["timestamp"],
        )
        if not mine:
            continue
        state = engine.replay(profile, mine, until=at, scores=(scores or {}).get(profile))
        incremental |= {(profile, s): t for s, t in engine.members(state).items()}
    assert incremental == batch
    return batch


def entered(library, events, at, profile="p", segment="s", scores=None):
    """entered_at of the profile's membership at `at`, or None when not a member."""
    return evaluate(library.subset([segment]), events, at, scores).get((profile, segment))


# --- Durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", 7 * D),
        ("24h", 24 * H),
        ("90m", timedelta(minutes=90)),
        ("1d12h", 36 * H),
        ("2w", 14 * D),
    ],
    ids=["days", "hours", "minutes", "compound", "weeks"],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-7d", "negative"),
        ("0d", "longer than zero"),
        (7, "has no unit"),
        ("7 days", "not a duration"),
    ],
    ids=["negative", "zero", "bare-number", "words"],
)
def test_bad_durations(value, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


# --- Loading and validation --------------------------------------------------------------------


def test_default_library_loads_with_and_without_scores():
    without = load_library()
    with_scores = load_library(scores_available=True)
    public = {
        "browsed_no_purchase_7d",
        "repeat_buyers_disengaged_30d",
        "high_intent",
        "clicked_no_checkout",
        "cart_abandoners",
        "checkout_abandoners",
        "engaged",
        "active",
        "at_risk",
        "inactive",
        "sunset",
        "unsubscribed",
        "bounced",
        "complained",
        "prefers_sms_over_email",
        "new_customers_onboarding",
    }
    assert public <= set(without.names)
    assert without.warnings == ()
    assert without.segments["high_intent"].uses_fallback
    assert not with_scores.segments["high_intent"].uses_fallback
    assert with_scores.segments["high_intent"].uses_scores
    assert [t.key for t in with_scores.top_tests()] == ["segments.high_intent.when"]
    # dependency order: a referenced segment comes first
    assert without.names.index("engaged") < without.names.index("active")


def test_subset_keeps_referenced_segments():
    library = load_library()
    assert library.subset(["active"]).names == ["engaged", "active"]
    assert library.subset(["email_suppressed"]).names == [
        "unsubscribed",
        "bounced",
        "complained",
        "email_suppressed",
    ]
    with pytest.raises(KeyError, match="did you mean sunset"):
        library.subset(["sunet"])


def test_json_schema_is_exported():
    schema = json_schema()
    assert schema["properties"]["version"]["const"] == 1
    assert "segments" in schema["required"]


def _problems(text: str, **options) -> list[str]:
    with pytest.raises(SegmentDefinitionError) as error:
        parse_library(textwrap.dedent(text), **options)
    return [str(p) for p in error.value.problems]


BAD_FILES = {
    "unknown-field": (
        """
        version: 1
        segments:
          s:
            when:
              event: Order Completed
              whithin: 7d
        """,
        r"segments\.s\.when\.whithin \(line 7\): "
        r"unknown field `whithin` \(did you mean `within`\?\)",
    ),
    "negative-window": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, within: -7d}
        """,
        r"segments\.s\.when\.within \(line 5\): '-7d' is negative",
    ),
    "zero-window": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, within: 0h}
        """,
        r"segments\.s\.when\.within .*'0h' is zero: a time window must be longer than zero",
    ),
    "between-reversed": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, between: {from: 7d, to: 30d}}
        """,
        r"segments\.s\.when\.between .*must be further back than `to`",
    ),
    "counts-impossible": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, at_least: 3, at_most: 1}
        """,
        r"at_least 3 is more than at_most 1: no one could match",
    ),
    "no-kind": (
        """
        version: 1
        segments:
          s:
            when:
              all:
                - evnt: Order Completed
        """,
        r"segments\.s\.when\.all\[0\] \(line 7\): a condition needs one of .*`evnt` \(did you "
        r"mean `event`\?\)",
    ),
    "two-kinds": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, score: p_convert}
        """,
        r"one condition says both `event` and `score`",
    ),
    "unknown-reference": (
        """
        version: 1
        segments:
          engaged:
            when: {event: Email Opened, within: 30d}
          s:
            when: {not: {segment: engagd}}
        """,
        r"segments\.s\.when\.not\.segment \(line 7\): no segment named `engagd` \(did you mean "
        r"`engaged`\?\)",
    ),
    "cycle": (
        """
        version: 1
        segments:
          a:
            when: {segment: b}
          b:
            when: {any: [{segment: a}, {event: Email Opened}]}
        """,
        r"segments refer to each other in a loop \(a -> b -> a\)",
    ),
    "self-reference": (
        """
        version: 1
        segments:
          a:
            when: {not: {segment: a}}
        """,
        r"loop \(a -> a\)",
    ),
    "score-without-model": (
        """
        version: 1
        segments:
          s:
            when: {score: p_convert, above: 0.5}
        """,
        r"segments\.s\.when \(line 5\): uses the model score `p_convert`, but no model scores "
        r"are available .* add a fallback rule or supply scores",
    ),
    "fallback-uses-score": (
        """
        version: 1
        segments:
          s:
            when: {score: p_convert, above: 0.5}
            fallback: {score: p_convert, above: 0.2}
        """,
        r"segments\.s\.fallback .*cannot use model scores itself",
    ),
    "unknown-filter-field": (
        """
        version: 1
        segments:
          s:
            when: {event: Product Viewed, where: {categry: shoes}}
        """,
        r"cannot filter on `categry` \(did you mean `category`\?\).*properties\.categry",
    ),
    "revenue-as-text": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed, where: {revenue: lots}}
        """,
        r"`revenue` is a number: compare it with a number",
    ),
    "duplicate-segment": (
        """
        version: 1
        segments:
          s:
            when: {event: Order Completed}
          s:
            when: {event: Email Opened}
        """,
        r"segments\.s \(line 6\): `s` is given twice \(lines 4 and 6\)",
    ),
    "bad-name": (
        """
        version: 1
        segments:
          High Intent:
            when: {event: Order Completed}
        """,
        r"segment name 'High Intent' is not allowed",
    ),
    "version": (
        """
        version: 2
        segments:
          s:
            when: {event: Order Completed}
        """,
        r"version \(line 2\): 2 is not allowed: use 1",
    ),
    "yaml-syntax": ("version: 1\nsegments: [unclosed\n", r"line \d: not valid YAML"),
    "wait-beyond-window": (
        """
        version: 1
        segments:
          s:
            when:
              sequence:
                first: {event: Checkout Started}
                within: 1h
                then_not: {event: Order Completed, within: 2h}
        """,
        r"only counts after waiting 2h: no one could match",
    ),
    "sms-bounced": (
        """
        version: 1
        segments:
          s:
            when: {subscription: sms, state: bounced}
        """,
        r"sms has no state 'bounced'",
    ),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_are_rejected_with_path_and_reason(text, message):
    problems = _problems(text)
    assert any(__import__("re").search(message, p) for p in problems), problems


def test_all_problems_are_reported_at_once():
    problems = _problems(
        """
        version: 1
        segments:
          a:
            when: {event: Order Completed, within: -1d}
          b:
            when: {event: Order Completed, whithin: 1d}
        """
    )
    assert len(problems) == 2


def test_unknown_event_is_a_warning_with_a_suggestion_and_an_error_when_strict():
    text = "version: 1\nsegments:\n  s:\n    when: {event: Order Complete}\n"
    library = parse_library(text)
    assert [str(w) for w in library.warnings] == [
        "segments.s.when.event (line 4): no event named `Order Complete` is known (not a "
        "canonical event, not seen in the event store), so this condition may never match. "
        "Did you mean `Order Completed`?"
    ]
    with pytest.raises(SegmentDefinitionError, match="Did you mean `Order Completed`"):
        parse_library(text, strict=True)
    assert parse_library(text, known_events=["Order Complete"]).warnings == ()
    snake = parse_library("version: 1\nsegments:\n  s:\n    when: {event: order_completed}\n")
    assert "Did you mean `Order Completed`" in str(snake.warnings[0])


def test_unreadable_file():
    with pytest.raises(SegmentDefinitionError, match="cannot read"):
        load_library("/nonexistent/segments.yaml")


def test_default_file_is_the_documented_example():
    documented = (DEFAULT_LIBRARY.parents[2] / "docs" / "segments.md").read_text()
    for name in load_library().names:
        assert f"`{name}`" in documented, name


# --- Exact windows, both evaluators ------------------------------------------------------------

WINDOWS = {
    # (condition, event offsets from T, instant offset from T, expected entered_at offset or None)
    "within-inside-last-microsecond": (
        {"event": "Order Completed", "within": "7d"},
        [timedelta(0)],
        7 * D - US,
        timedelta(0),
    ),
    "within-runs-out-exactly": (
        {"event": "Order Completed", "within": "7d"},
        [timedelta(0)],
        7 * D,
        None,
    ),
    "within-at-the-event-instant": (
        {"event": "Order Completed", "within": "7d"},
        [timedelta(0)],
        timedelta(0),
        timedelta(0),
    ),
    "between-not-yet": (
        {"event": "Order Completed", "between": {"from": "30d", "to": "7d"}},
        [timedelta(0)],
        7 * D - US,
        None,
    ),
    "between-enters-at-to": (
        {"event": "Order Completed", "between": {"from": "30d", "to": "7d"}},
        [timedelta(0)],
        7 * D,
        7 * D,
    ),
    "between-leaves-at-from": (
        {"event": "Order Completed", "between": {"from": "30d", "to": "7d"}},
        [timedelta(0)],
        30 * D,
        None,
    ),
    "before-enters-after": (
        {"event": "Order Completed", "before": "30d"},
        [timedelta(0)],
        30 * D,
        30 * D,
    ),
    "did-not-since-first-event": (
        {"event": "Order Completed", "within": "7d", "at_most": 0},
        [-2 * D, timedelta(0)],
        7 * D,
        7 * D,
    ),
    "did-not-before-its-first-event": (
        {"event": "Order Completed", "within": "7d", "at_most": 0},
        [timedelta(0)],
        -US,
        None,
    ),
    "at-least-twice-from-second": (
        {"event": "Order Completed", "within": "1d", "at_least": 2},
        [timedelta(0), 2 * H, 30 * H],
        20 * H,
        2 * H,
    ),
    "at-least-twice-runs-out-with-first": (
        {"event": "Order Completed", "within": "1d", "at_least": 2},
        [timedelta(0), 2 * H],
        24 * H,
        None,
    ),
    "overlapping-windows-keep-entered-at": (
        {"event": "Order Completed", "within": "1d"},
        [timedelta(0), 20 * H, 40 * H],
        60 * H,
        timedelta(0),
    ),
    "touching-windows-keep-entered-at": (
        {"event": "Order Completed", "within": "1d"},
        [timedelta(0), 24 * H],
        30 * H,
        timedelta(0),
    ),
    "gap-restarts-entered-at": (
        {"event": "Order Completed", "within": "1d"},
        [timedelta(0), 24 * H + US],
        30 * H,
        24 * H + US,
    ),
    "exactly-between-counts": (
        {"event": "Order Completed", "within": "1d", "at_least": 1, "at_most": 1},
        [timedelta(0), 23 * H],
        24 * H,
        24 * H,
    ),
}


@pytest.mark.parametrize(
    ("condition", "offsets", "at", "expected"), WINDOWS.values(), ids=WINDOWS.keys()
)
def test_exact_windows(condition, offsets, at, expected):
    events = [ev("Order Completed", T + o) for o in offsets]
    result = entered(library_of(condition), events, T + at)
    assert result == (T + expected if expected is not None else None)


FILTERS = {
    "category": ({"category": "shoes"}, {"category": "shoes"}, True),
    "category-other": ({"category": "shoes"}, {"category": "hats"}, False),
    "category-list": ({"category": ["shoes", "hats"]}, {"category": "hats"}, True),
    "not-holds-when-missing": ({"category": {"not": "shoes"}}, {}, True),
    "not-in": ({"category": {"not_in": ["shoes"]}}, {"category": "shoes"}, False),
    "property-number": ({"properties.size": 42}, {"properties": {"size": 42}}, True),
    "property-text-is-not-a-number": (
        {"properties.size": 42},
        {"properties": {"size": "42"}},
        False,
    ),
    "property-text": ({"properties.size": "42"}, {"properties": {"size": "42"}}, True),
    "property-bool": ({"properties.gift": True}, {"properties": {"gift": True}}, True),
    "property-nested": (
        {"properties.shipping.method": "express"},
        {"properties": {"shipping": {"method": "express"}}},
        True,
    ),
    "property-bound": (
        {"properties.size": {"at_least": 40}},
        {"properties": {"size": 39.5}},
        False,
    ),
    "property-exists": (
        {"properties.coupon": {"exists": True}},
        {"properties": {"coupon": None}},
        False,
    ),
    "property-missing": ({"properties.coupon": {"exists": False}}, {"properties": {}}, True),
    "revenue-above": ({"revenue": {"above": 100}}, {"revenue": 100.5}, True),
    "revenue-missing-fails-bound": ({"revenue": {"below": 100}}, {}, False),
    "channel": ({"channel": "email"}, {"channel": "email"}, True),
}


@pytest.mark.parametrize(("where", "columns", "member"), FILTERS.values(), ids=FILTERS.keys())
def test_property_filters(where, columns, member):
    library = library_of({"event": "Order Completed", "where": where})
    result = entered(library, [ev("Order Completed", T, **columns)], T + H)
    assert (result is not None) is member


def test_lifetime_revenue_is_exact_in_both_evaluators():
    # 33.33 + 33.33 + 33.34 is 99.99999999999999 in floating point; revenue is summed exactly.
    library = library_of({"profile": "lifetime_revenue", "at_least": 100})
    events = [
        ev("Order Completed", T + i * H, revenue=r) for i, r in enumerate((33.33, 33.33, 33.34))
    ]
    assert entered(library, events, T + 3 * H) == T + 2 * H


SEQUENCES = {
    # clicked at T; order offsets; instant; expected entered_at offset
    "waits-the-full-24h": ([], 24 * H - US, None),
    "enters-after-24h": ([], 24 * H, 24 * H),
    "order-within-24h-disqualifies": ([23 * H], 30 * H, None),
    "order-exactly-at-24h-disqualifies": ([24 * H], 30 * H, None),
    "order-after-24h-does-not": ([25 * H], 30 * H, 24 * H),
    "leaves-when-click-leaves-7d": ([], 7 * D, None),
}


@pytest.mark.parametrize(("orders", "at", "expected"), SEQUENCES.values(), ids=SEQUENCES.keys())
def test_clicked_no_checkout(orders, at, expected):
    library = load_library()
    events = [ev("Email Link Clicked", T)] + [ev("Order Completed", T + o) for o in orders]
    result = entered(library, events, T + at, segment="clicked_no_checkout")
    assert result == (T + expected if expected is not None else None)


def test_positive_sequence_and_same_instant_is_not_after():
    library = library_of(
        {
            "sequence": {
                "first": {"event": "Product Viewed"},
                "within": "1d",
                "then": {"event": "Product Added", "within": "1h"},
            }
        }
    )
    same_instant = [ev("Product Viewed", T), ev("Product Added", T)]
    assert entered(library, same_instant, T + H) is None
    later = [ev("Product Viewed", T), ev("Product Added", T + H)]
    assert entered(library, later, T + 2 * H) == T + H
    assert entered(library, later, T + D) is None  # the view left its 1-day window
    too_late = [ev("Product Viewed", T), ev("Product Added", T + H + US)]
    assert entered(library, too_late, T + 2 * H) is None


def test_cart_abandoners_leave_when_they_order_any_time_later():
    library = load_library()
    events = [ev("Product Added", T), ev("Order Completed", T + 5 * H)]
    assert entered(library, events, T + 2 * H, segment="cart_abandoners") == T + H
    assert entered(library, events, T + 5 * H, segment="cart_abandoners") is None


SUBSCRIPTIONS = {
    "bounced": ([("Email Bounced", 0)], "bounced", True),
    "delivered-after-bounce-clears-it": (
        [("Email Bounced", 0), ("Email Delivered", 1)],
        "bounced",
        False,
    ),
    "unsubscribed-is-sticky": ([("Unsubscribed", 0), ("Email Delivered", 1)], "unsubscribed", True),
    "complained": ([("Email Marked as Spam", 0)], "complained", True),
    "email-subscribed": ([("Email Delivered", 0)], "subscribed", True),
    "not-subscribed-after-complaint": (
        [("Email Delivered", 0), ("Email Marked as Spam", 1)],
        "subscribed",
        False,
    ),
}


@pytest.mark.parametrize(
    ("events", "state", "member"), SUBSCRIPTIONS.values(), ids=SUBSCRIPTIONS.keys()
)
def test_email_subscription_states(events, state, member):
    library = library_of({"subscription": "email", "state": state})
    rows = [ev(name, T + k * H, email="a@x.io") for name, k in events]
    assert (entered(library, rows, T + D) is not None) is member


def test_sms_subscribed_needs_a_phone_and_no_opt_out():
    library = library_of({"subscription": "sms", "state": "subscribed"})
    assert entered(library, [ev("SMS Delivered", T)], T + H) is None
    assert entered(library, [ev("SMS Delivered", T, phone="+447911123456")], T + H) == T
    opted_out = [ev("SMS Delivered", T, phone="+447911123456"), ev("SMS Opted Out", T + H)]
    assert entered(library, opted_out, T + 2 * H) is None


PROFILE = {
    "first-seen-within": (
        {"profile": "first_seen", "within": "1d"},
        [timedelta(0)],
        23 * H,
        timedelta(0),
    ),
    "first-seen-leaves": (
        {"profile": "first_seen", "within": "1d"},
        [timedelta(0), 10 * H],
        24 * H,
        None,
    ),
    "first-seen-older": (
        {"profile": "first_seen", "older_than": "1d"},
        [timedelta(0)],
        24 * H,
        24 * H,
    ),
    "last-seen-older": (
        {"profile": "last_seen", "older_than": "1d"},
        [timedelta(0), 10 * H],
        34 * H,
        34 * H,
    ),
    "sends-are-not-seen": ({"profile": "last_seen", "within": "1d"}, ["Email Delivered"], H, None),
}


@pytest.mark.parametrize(
    ("condition", "offsets", "at", "expected"), PROFILE.values(), ids=PROFILE.keys()
)
def test_profile_recency(condition, offsets, at, expected):
    events = [ev(o, T) if isinstance(o, str) else ev("Page Viewed", T + o) for o in offsets]
    result = entered(library_of(condition), events, T + at)
    assert result == (T + expected if expected is not None else None)


def test_new_customers_onboarding_and_repeat_buyers():
    library = load_library()
    events = [ev("Order Completed", T), ev("Order Completed", T + D)]
    assert entered(library, events, T + 29 * D, segment="new_customers_onboarding") == T
    assert entered(library, events, T + 30 * D, segment="new_customers_onboarding") is None
    assert entered(library, events, T + 31 * D - US, segment="repeat_buyers_disengaged_30d") is None
    assert (
        entered(library, events, T + 31 * D, segment="repeat_buyers_disengaged_30d") == T + 31 * D
    )


def test_engagement_tiers_partition_emailed_profiles_over_time():
    library = load_library()
    events = [ev("Email Delivered", T, email="a@x.io"), ev("Email Opened", T + H, email="a@x.io")]
    tiers = ["engaged", "active", "at_risk", "inactive", "sunset"]
    library = library.subset(tiers)
    expected = [
        (10, "engaged", 0),
        (60, "active", 30),
        (100, "at_risk", 90),
        (200, "inactive", 180),
        (400, "sunset", 365),
    ]
    for days, tier, since in expected:
        result = evaluate(library, events, T + days * D)
        in_tiers = [t for t in tiers if ("p", t) in result]
        assert in_tiers == [tier], days
        assert result[("p", tier)] == T + H + since * D if since else T  # exact instants


def test_browsed_no_purchase_7d_exact_exit_and_reentry():
    library = load_library()
    events = [ev("Product Viewed", T), ev("Order Completed", T + 2 * D)]
    seg = "browsed_no_purchase_7d"
    assert entered(library, events, T + D, segment=seg) == T
    assert entered(library, events, T + 2 * D, segment=seg) is None
    assert (
        entered(library, [*events, ev("Product List Viewed", T + 10 * D)], T + 10 * D, segment=seg)
        == T + 10 * D
    )


# --- Scores ------------------------------------------------------------------------------------


def test_scores_top_percent_among_population_with_ties():
    library = library_of(
        {
            "score": "p_convert",
            "top_percent": 50,
            "among": {"event": "Order Completed", "at_most": 0},
        },
        fallback={"event": "Product Added"},
        scores=True,
    )
    events = [ev("Page Viewed", T, profile=p) for p in "abcde"] + [
        ev("Order Completed", T, profile="e")
    ]
    scores = {
        "a": {"p_convert": 0.9},
        "b": {"p_convert": 0.5},
        "c": {"p_convert": 0.5},
        "d": {"p_convert": 0.1},
        "e": {"p_convert": 0.99},  # ordered: not in the population
    }
    result = evaluate(library, events, T + H, scores)
    # population a-d: top 50% keeps 2 -> threshold 0.5 -> the tie at 0.5 is in too
    assert sorted(p for p, s in result if s == "s") == ["a", "b", "c"]


def test_score_conditions_compare_numbers_other_scores_and_windows():
    library = library_of(
        {"score": "p_engage_sms", "above": "p_engage_email"},
        scores=True,
        window={"send_window": {"days": ["mon"], "hours": [9, 11]}},
        number={"score": "p_convert", "at_least": 0.5},
    )
    events = [ev("Page Viewed", T, profile=p) for p in "abc"]
    scores = {
        "a": {
            "p_engage_sms": 0.3,
            "p_engage_email": 0.2,
            "best_hour_of_week": 10,
            "p_convert": 0.5,
        },
        "b": {"p_engage_sms": 0.2, "p_engage_email": 0.2, "best_hour_of_week": 12},
    }
    result = evaluate(library, events, T + H, scores)
    assert set(result) == {("a", "s"), ("a", "window"), ("a", "number")}


def test_fallback_is_used_without_scores():
    library = load_library()
    events = [ev("Product Added", T)]
    assert entered(library, events, T + H, segment="high_intent") == T
    with pytest.raises(ValueError, match="uses model scores but no scores were given"):
        connection = duckdb.connect()
        connection.execute(
            "CREATE TABLE pe AS SELECT 'p' AS profile_id, 'x' AS event, "
            "TIMESTAMP '2026-01-01' AS timestamp"
        )
        evaluate_batch(connection, "pe", load_library(scores_available=True), T)


# --- Incremental: time passes ------------------------------------------------------------------


def test_membership_changes_at_the_exact_instant_without_new_events():
    library = load_library()
    engine = SegmentEngine(library)
    state = engine.new_profile("p")
    changes = engine.apply(state, ev("Product Viewed", T))
    assert [(c.segment, c.member, c.at) for c in changes] == [("browsed_no_purchase_7d", True, T)]
    assert engine.next_change(state) == T + 7 * D
    assert engine.advance(state, T + 7 * D - US) == []
    left = engine.advance(state, T + 7 * D)
    assert [(c.segment, c.member, c.at) for c in left] == [
        ("browsed_no_purchase_7d", False, T + 7 * D)
    ]
    assert engine.next_change(state) is None


def test_advance_reports_every_change_in_order():
    library = library_of({"event": "Order Completed", "within": "1h"})
    engine = SegmentEngine(library)
    state = engine.new_profile("p")
    engine.apply(state, ev("Order Completed", T))
    engine.apply(state, ev("Page Viewed", T + 3 * H))  # the 1h window ran out at T + 1h
    state2 = engine.new_profile("q")
    engine.apply(state2, ev("Order Completed", T))
    changes = engine.apply(state2, ev("Order Completed", T + 2 * H))
    assert [(c.member, c.at) for c in changes] == [(False, T + H), (True, T + 2 * H)]


def test_same_instant_exit_and_reentry_keeps_entered_at():
    library = library_of(
        {"any": [{"event": "Order Completed", "at_most": 1}, {"event": "Order Cancelled"}]}
    )
    events = [
        ev("Page Viewed", T),
        ev("Order Completed", T + H),
        ev("Order Completed", T + 2 * H),  # out ...
        ev("Order Cancelled", T + 2 * H),  # ... and back in at the same instant
    ]
    engine = SegmentEngine(library)
    state = engine.replay("p", events)
    assert engine.members(state) == {"s": T}
    assert entered(library, events, T + 2 * H) == T


def test_events_as_tuples_and_iso_text():
    from features.contract import COLUMN_NAMES

    library = load_library()
    engine = SegmentEngine(library)
    state = engine.new_profile("p")
    row = tuple(
        "Product Viewed" if c == "event" else "2026-03-02T12:00:00Z" if c == "timestamp" else None
        for c in COLUMN_NAMES
    )
    engine.apply(state, row)
    assert engine.members(state) == {"browsed_no_purchase_7d": T}


def test_set_scores_rescores_at_the_clock():
    library = library_of({"score": "p_convert", "above": 0.5}, fallback={"event": "x"}, scores=True)
    engine = SegmentEngine(library)
    state = engine.new_profile("p")
    engine.apply(state, ev("Page Viewed", T))
    changes = engine.set_scores(state, {"p_convert": 0.7})
    assert [(c.segment, c.member, c.at) for c in changes] == [("s", True, T)]
    assert engine.set_scores(state, {"p_convert": float("nan")})[0].member is False


# --- Explain -----------------------------------------------------------------------------------


def test_explain_names_the_deciding_values():
    library = load_library()
    events = [
        ev("Product Viewed", T),
        ev("Product Viewed", T + H),
        ev("Order Completed", T + 2 * D),
    ]
    explanation = explain(library, "p", "browsed_no_purchase_7d", events, T + D)
    assert explanation.member and explanation.entered_at == T
    assert explanation.next_change == T + H + 7 * D  # the later view leaves the window
    text = explanation.render()
    assert (
        "p IS in browsed_no_purchase_7d at 2026-03-03 12:00:00 (since 2026-03-02 12:00:00)" in text
    )
    assert (
        "✓ Product List Viewed or Product Viewed in the last 7 days — 2 matching events "
        "(needs at least 1); last at 2026-03-02 13:00:00" in text
    )
    assert "✓ no Order Completed in the last 7 days — 0 matching events (needs at most 0)" in text
    later = explain(library, "p", "browsed_no_purchase_7d", events, T + 3 * D)
    assert not later.member
    assert (
        "✗ no Order Completed in the last 7 days — 1 matching event (needs at most 0); "
        "last at 2026-03-04 12:00:00" in later.render()
    )
    data = later.as_dict()
    assert data["member"] is False and data["tree"]["children"][1]["held"] is False


def test_explain_sequences_scores_and_references():
    library = load_library(scores_available=True)
    events = [ev("Email Link Clicked", T), ev("Email Delivered", T, email="a@x.io")]
    clicked = explain(library, "p", "clicked_no_checkout", events, T + H).render()
    assert (
        "Email Link Clicked or SMS Link Clicked at 2026-03-02 12:00:00, no Order Completed "
        "after it within 1 day; counts from 2026-03-03 12:00:00 if no Order Completed before then"
        in clicked
    )
    assert "with no new events, enters at 2026-03-03 12:00:00" in clicked
    top = explain(
        library,
        "p",
        "high_intent",
        events,
        T + H,
        scores={"p_convert": 0.4},
        thresholds={"segments.high_intent.when": 0.3},
    )
    assert top.member and "p_convert = 0.4 (top 10% starts at 0.3)" in top.render()
    sunset = explain(library, "p", "active", events, T + H).render()
    assert "✓ in segment engaged" in sunset
    with pytest.raises(KeyError, match="did you mean engaged"):
        explain(library, "p", "engagd", events, T)


def _identifier_log() -> duckdb.DuckDBPyConnection:
    """A store without an identity graph: events carry identifiers, nothing links them."""
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE events AS SELECT * FROM (VALUES "
        "('m1', 'u1', 'a@x.io', NULL, 'anon', TIMESTAMP '2026-01-01'), "
        "('m2', NULL, 'b@x.io', NULL, 'anon2', TIMESTAMP '2026-01-02'), "
        "('m3', NULL, NULL, NULL, 'anon3', TIMESTAMP '2026-01-03'), "
        "('m4', NULL, NULL, NULL, 'anon3', TIMESTAMP '2026-01-09')) "
        "t(message_id, user_id, email, phone, anonymous_id, timestamp)"
    )
    connection.execute("ALTER TABLE events ADD COLUMN device_id VARCHAR")
    return connection


def test_profile_events_without_identity_use_the_first_present_identifier():
    connection = _identifier_log()
    view = profile_events_at(connection, datetime(2026, 1, 5))
    rows = connection.sql(f"SELECT profile_id, message_id FROM {view} ORDER BY 1").fetchall()
    assert rows == [("anon3", "m3"), ("b@x.io", "m2"), ("u1", "m1")]  # m4 is after the cutoff


@pytest.mark.parametrize(
    ("query", "profile", "how"),
    [
        ("u1", "u1", ""),
        ("email:a@x.io", "u1", "identifier email:a@x.io is profile u1"),
        ("email:A@X.io ", "u1", "identifier email:A@X.io is profile u1"),
        ("anon2", "b@x.io", "identifier anon2 is profile b@x.io"),
        ("anonymous_id:anon3", "anon3", ""),
    ],
    ids=["profile-id", "typed", "email-normalised", "bare-value", "id-and-identifier"],
)
def test_find_profile_by_id_or_identifier(query, profile, how):
    connection = _identifier_log()
    view = profile_events_at(connection, datetime(2026, 1, 5))
    found = find_profile(connection, view, query, datetime(2026, 1, 5))
    assert found.profile_id == profile
    assert found.how.startswith(how)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("nobody", "no profile or identifier 'nobody' with events at or before 2026-01-05"),
        ("phone:a@x.io", "no profile or identifier"),
    ],
    ids=["unknown", "wrong-type"],
)
def test_find_profile_failures(query, message):
    connection = _identifier_log()
    view = profile_events_at(connection, datetime(2026, 1, 5))
    with pytest.raises(ValueError, match=message):
        find_profile(connection, view, query, datetime(2026, 1, 5))


def test_find_profile_by_todays_identity_profile():
    """A profile id of today's graph names the profile(s) its identifiers formed at --at."""
    connection = _identifier_log()
    connection.execute(
        "CREATE TABLE identity_identifiers AS SELECT * FROM (VALUES "
        "('today-1', 'email', 'b@x.io'), ('today-2', 'email', 'a@x.io'), "
        "('today-2', 'anonymous_id', 'anon3')) t(profile_id, identifier_type, identifier)"
    )
    at = datetime(2026, 1, 5)
    view = profile_events_at(connection, at)
    found = find_profile(connection, view, "today-1", at)
    assert (found.profile_id, found.how) == (
        "b@x.io",
        "today's profile today-1 is profile b@x.io at 2026-01-05T00:00:00",
    )
    with pytest.raises(ValueError, match=r"belongs to 2 profiles .*: anon3 \(1 events\), u1"):
        find_profile(connection, view, "today-2", at)


def test_missing_columns_are_named():
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE pe AS SELECT 'p' AS profile_id, TIMESTAMP '2026-01-01' AS timestamp"
    )
    with pytest.raises(
        ValueError, match=r"columns `event`, `phone` missing; have: profile_id, timestamp"
    ):
        evaluate_batch(connection, "pe", load_library(), T)


def test_many_segments_and_leaves_agree_with_real_time():
    """Past 62 segments (no member bit mask) and 62 tests (more than one state integer), and
    first-time rules rewritten for the timeline pass: batch entered_at == real time."""
    more = {
        f"w{i}": {"event": ["Order Completed", "Email Opened"][i % 2], "within": f"{i + 1}h"}
        for i in range(70)
    }
    more["first_email"] = {
        "all": [
            {"event": "Email Delivered", "within": "2d"},
            {"event": "Email Delivered", "before": "2d", "at_most": 0},
        ]
    }
    library = library_of({"event": "Email Opened", "within": "3h", "at_most": 0}, **more)
    events = [
        ev(name, T - timedelta(minutes=37 * k), profile=f"p{k % 3}")
        for k, name in enumerate(["Order Completed", "Email Opened", "Email Delivered"] * 9)
    ]
    first_delivery = T - timedelta(minutes=37 * 26)
    assert evaluate(library, events, T)[("p2", "first_email")] == first_delivery
    assert len(evaluate(library, events, T + 5 * H)) > 60
    assert {s for _, s in evaluate(library, events, T + 3 * D)} == {"s"}  # every window ran out
