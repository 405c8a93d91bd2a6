"""Property: for random event streams and random segment definitions, the incremental
evaluator's membership at any instant equals the batch evaluator's at that instant, and so does
entered_at; the batch membership-only query agrees too; the whole log of membership changes
(every entry and exit, at its exact instant) is the same from both evaluators. Also:
next_change is the exact instant of the next time-driven change."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import duckdb
import orjson
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from serving.segments.batch import evaluate_batch, membership_history, score_thresholds
from serving.segments.incremental import SegmentEngine
from serving.segments.library import SegmentDefinitionError, parse_library

BASE = datetime(2026, 3, 2)
EVENTS = [
    "Product Viewed",
    "Order Completed",
    "Email Delivered",
    "Email Opened",
    "Email Bounced",
    "Checkout Started",
    "Unsubscribed",
    "SMS Opted Out",
]
# Common names more often than rare ones, so sequences and windows meet on the same events.
COMMON = ["Product Viewed", "Order Completed", "Email Opened", "Email Delivered"]
WEIGHTED = COMMON * 3 + EVENTS
DURATIONS = ["1h", "2h", "3h", "5h", "1d"]
SCORES = ["p_convert", "p_engage_email", "p_engage_sms"]

# --- Random segment definitions ----------------------------------------------------------------

event_names = st.one_of(
    st.none(),
    st.sampled_from(WEIGHTED),
    st.lists(st.sampled_from(EVENTS), min_size=1, max_size=3, unique=True),
)
where = st.fixed_dictionaries(
    {},
    optional={
        "category": st.sampled_from(["x", ["x", "y"], {"not": "x"}, {"exists": True}]),
        "properties.n": st.sampled_from(
            [1, 2, "1", True, {"at_least": 2}, {"exists": False}, {"not_in": [1, "1"]}]
        ),
        "revenue": st.sampled_from([5.0, {"at_least": 10}, {"exists": True}]),
        "email": st.sampled_from([{"exists": True}, "a@x.io"]),
    },
).map(lambda d: d or None)


@st.composite
def event_condition(draw):
    condition = {"event": draw(event_names)}
    if draw(st.integers(0, 2)) == 0 and (w := draw(where)) is not None:
        condition["where"] = w
    window = draw(st.sampled_from(["ever", "within", "between", "before"]))
    if window == "within":
        condition["within"] = draw(st.sampled_from(DURATIONS))
    elif window == "before":
        condition["before"] = draw(st.sampled_from(DURATIONS))
    elif window == "between":
        a, b = draw(
            st.lists(st.sampled_from([1, 2, 3, 5, 24]), min_size=2, max_size=2, unique=True)
        )
        condition["between"] = {"from": f"{max(a, b)}h", "to": f"{min(a, b)}h"}
    counts = draw(st.sampled_from(["none", "at_least", "at_most", "both"]))
    low, high = sorted(draw(st.lists(st.integers(0, 3), min_size=2, max_size=2)))
    if counts == "at_least":
        condition["at_least"] = max(low, 1)
    elif counts == "at_most":
        condition["at_most"] = high
    elif counts == "both":
        condition["at_least"], condition["at_most"] = max(low, 1), max(high, 1)
    return condition


@st.composite
def sequence_condition(draw):
    first = {"event": draw(event_names)}
    if draw(st.integers(0, 2)) == 0 and (w := draw(where)) is not None:
        first["where"] = w
    follow = {"event": draw(event_names)}
    if draw(st.booleans()):
        follow["within"] = draw(st.sampled_from(DURATIONS))
    sequence = {"first": first}
    if draw(st.booleans()):
        sequence["within"] = draw(st.sampled_from(["3h", "5h", "1d", "2d"]))
    if draw(st.booleans()):
        sequence["then"] = follow
    else:
        sequence["then_not"] = follow
        if draw(st.booleans()):
            sequence["wait"] = draw(st.sampled_from(["0s", "30m", "1h", "2h"]))
    return {"sequence": sequence}


profile_condition = st.one_of(
    st.fixed_dictionaries({"profile": st.just("lifetime_orders"), "at_least": st.integers(1, 3)}),
    st.fixed_dictionaries({"profile": st.just("lifetime_orders"), "at_most": st.integers(0, 2)}),
    st.fixed_dictionaries(
        {"profile": st.just("lifetime_revenue"), "at_least": st.sampled_from([5, 12.5, 20])}
    ),
    st.fixed_dictionaries(
        {
            "profile": st.sampled_from(["first_seen", "last_seen", "first_order", "last_order"]),
            "within": st.sampled_from(DURATIONS),
        }
    ),
    st.fixed_dictionaries(
        {
            "profile": st.sampled_from(["first_seen", "last_seen", "first_order", "last_order"]),
            "older_than": st.sampled_from(DURATIONS),
        }
    ),
)
subscription_condition = st.sampled_from(
    [
        {"subscription": "email", "state": s}
        for s in ("subscribed", "unsubscribed", "bounced", "complained")
    ]
    + [{"subscription": "sms", "state": s} for s in ("subscribed", "unsubscribed")]
)


def score_condition(inner):
    plain = st.builds(
        lambda score, op, bound: {"score": score, op: bound},
        st.sampled_from(SCORES),
        st.sampled_from(["above", "at_least", "below", "at_most"]),
        st.sampled_from([0.1, 0.5, 0.9, *SCORES]),
    )
    top = st.builds(
        lambda score, percent, among: (
            {"score": score, "top_percent": percent}
            | ({"among": among} if among is not None else {})
        ),
        st.sampled_from(SCORES),
        st.sampled_from([10, 33.3, 50, 100]),
        st.one_of(st.none(), inner),
    )
    window = st.fixed_dictionaries(
        {
            "send_window": st.fixed_dictionaries(
                {"days": st.just(["mon", "tue"]), "hours": st.just([9, 12])}
            )
        }
    )
    return st.one_of(plain, top, window)


@functools.cache  # building strategies is slow; there are few (references, scores) variants
def conditions(references: tuple[str, ...], with_scores: bool):
    leaves = [event_condition(), sequence_condition(), profile_condition, subscription_condition]
    if references:
        leaves.append(st.sampled_from([{"segment": name} for name in references]))
    base = st.one_of(*leaves)

    def extend(children):
        options = [
            st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
            st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
            children.map(lambda c: {"not": c}),
        ]
        if with_scores:
            options.append(score_condition(children))
        return st.one_of(*options)

    return st.recursive(base, extend, max_leaves=5)


@st.composite
def libraries(draw):
    with_scores = draw(st.booleans())
    segments = {}
    for index in range(draw(st.integers(1, 4))):
        definition = {"when": draw(conditions(tuple(segments), with_scores))}
        if draw(st.integers(0, 3)) == 0:
            definition["fallback"] = draw(conditions(tuple(segments), False))
        segments[f"s{index}"] = definition
    text = yaml.safe_dump({"version": 1, "segments": segments}, sort_keys=False)
    try:
        library = parse_library(text, scores_available=with_scores)
    except SegmentDefinitionError:
        assume(False)  # e.g. a wait longer than its window: rejected at load, by design
    return library


# --- Random event streams ----------------------------------------------------------------------


@st.composite
def profile_events(draw):
    profiles = {}
    for index in range(draw(st.integers(1, 3))):
        # Whole hours, windows of whole hours: events meet window edges exactly, often.
        hours = sorted(draw(st.lists(st.integers(0, 30), min_size=1, max_size=14)))
        events = []
        for hour in hours:
            properties = draw(st.sampled_from([None, {"n": 1}, {"n": "1"}, {"n": 2}, {"n": True}]))
            events.append(
                {
                    "profile_id": f"p{index}",
                    "event": draw(st.sampled_from(WEIGHTED)),
                    "timestamp": BASE + timedelta(hours=hour),
                    "category": draw(st.sampled_from([None, "x", "y"])),
                    "revenue": draw(st.sampled_from([None, 5.0, 12.5])),
                    "email": draw(st.sampled_from([None, "a@x.io"])),
                    "phone": draw(st.sampled_from([None, "+441234567890"])),
                    "properties": orjson.dumps(properties).decode() if properties else None,
                }
            )
        profiles[f"p{index}"] = events
    return profiles


scores_by_profile = st.dictionaries(
    st.sampled_from(["p0", "p1", "p2", "p3"]),
    st.fixed_dictionaries(
        {name: st.sampled_from([None, 0.1, 0.5, 0.9]) for name in SCORES}
        | {"p_engage_push": st.none(), "best_hour_of_week": st.sampled_from([None, 9, 33, 100])}
    ),
)

_SCHEMA = pa.schema(
    [
        ("profile_id", pa.string()),
        ("event", pa.string()),
        ("timestamp", pa.timestamp("us")),
        ("category", pa.string()),
        ("revenue", pa.float64()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("properties", pa.string()),
    ]
)
_SCORE_SCHEMA = pa.schema(
    [("profile_id", pa.string())]
    + [(n, pa.float64()) for n in ("p_convert", "p_engage_email", "p_engage_sms", "p_engage_push")]
    + [("best_hour_of_week", pa.int64())]
)


@pytest.fixture(scope="module")
def connection():
    con = duckdb.connect()
    yield con
    con.close()


def _load(connection, profiles, scores):
    rows = [event for events in profiles.values() for event in events]
    connection.register("arrow_events", pa.Table.from_pylist(rows, schema=_SCHEMA))
    connection.execute("CREATE OR REPLACE TABLE pe AS SELECT * FROM arrow_events")
    connection.unregister("arrow_events")
    score_rows = [{"profile_id": p, **s} for p, s in scores.items()]
    connection.register("arrow_scores", pa.Table.from_pylist(score_rows, schema=_SCORE_SCHEMA))
    connection.execute("CREATE OR REPLACE TABLE sc AS SELECT * FROM arrow_scores")
    connection.unregister("arrow_scores")


def _check(connection, library, profiles, scores, instants):
    scores_table = "sc" if library.scores_available else None
    for at in instants:
        timeline = evaluate_batch(connection, "pe", library, at, scores=scores_table)
        aggregate = evaluate_batch(
            connection, "pe", library, at, scores=scores_table, entered_at=False
        )
        batch = {
            (r["profile_id"], r["segment"]): r["entered_at"]
            for r in timeline.memberships.to_pylist()
        }
        assert set(batch) == {
            (r["profile_id"], r["segment"]) for r in aggregate.memberships.to_pylist()
        }, f"aggregate and timeline disagree at {at}"
        thresholds = (
            score_thresholds(connection, "pe", library, at, scores_table) if scores_table else {}
        )
        assert thresholds == timeline.thresholds
        engine = SegmentEngine(library, {k: v for k, v in thresholds.items() if v is not None})
        incremental = {}
        for profile, events in profiles.items():
            seen = [e for e in events if e["timestamp"] <= at]
            if not seen:
                continue
            state = engine.replay(
                profile, seen, until=at, scores=scores.get(profile) if scores_table else None
            )
            for segment, entered in engine.members(state).items():
                incremental[(profile, segment)] = entered
        assert incremental == batch, f"at {at}"


UNTIL = BASE + timedelta(days=4)  # every window of the random rules has run out by then


def _check_history(connection, library, profiles, scores) -> None:
    """Batch timelines and a streaming incremental pass report the same changes."""
    scores_table = "sc" if library.scores_available else None
    batch = membership_history(connection, "pe", library, UNTIL, scores=scores_table)
    thresholds = (
        score_thresholds(connection, "pe", library, UNTIL, scores_table) if scores_table else {}
    )
    engine = SegmentEngine(library, {k: v for k, v in thresholds.items() if v is not None})
    last_word: dict[tuple, bool] = {}  # (profile, segment, instant) -> state after the instant
    for profile, events in profiles.items():
        state = engine.new_profile(profile, scores.get(profile) if scores_table else None)
        changes = [c for event in events for c in engine.apply(state, event)]
        changes += engine.advance(state, UNTIL)
        for change in changes:
            last_word[(change.profile_id, change.segment, change.at)] = change.member
    incremental, previous = [], {}
    for (profile, segment, at), member in sorted(last_word.items()):
        if member != previous.get((profile, segment), False):
            incremental.append((profile, segment, at, member))
            previous[(profile, segment)] = member
    assert [tuple(r.values()) for r in batch.to_pylist()] == incremental


def _change_instants(library, profiles, scores) -> list[datetime]:
    """Every instant at which some profile's membership changes, from one streaming pass of
    the incremental evaluator: where an off-by-one at a window edge would show."""
    engine = SegmentEngine(library)
    instants = set()
    for profile, events in profiles.items():
        state = engine.new_profile(
            profile, scores.get(profile) if library.scores_available else None
        )
        for event in events:
            instants.update(c.at for c in engine.apply(state, event))
        instants.update(c.at for c in engine.advance(state, BASE + timedelta(days=4)))
    return sorted(instants)


def _instants(data, library, profiles, scores, random_count: int, edge_count: int):
    offsets = data.draw(st.lists(st.integers(0, 2 * 40), min_size=1, max_size=random_count))
    instants = [BASE + timedelta(minutes=30 * k) for k in offsets]
    if not library.top_tests():  # thresholds depend on the instant: no single streaming pass
        edges = _change_instants(library, profiles, scores)
        if edges:
            picks = data.draw(st.lists(st.sampled_from(edges), max_size=edge_count, unique=True))
            instants += picks + [t - timedelta(microseconds=1) for t in picks]
    return instants


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(library=libraries(), profiles=profile_events(), scores=scores_by_profile, data=st.data())
def test_incremental_equals_batch_at_any_instant(connection, library, profiles, scores, data):
    _load(connection, profiles, scores)
    _check_history(connection, library, profiles, scores)
    _check(connection, library, profiles, scores, _instants(data, library, profiles, scores, 1, 1))


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(library=libraries(), profiles=profile_events(), scores=scores_by_profile, data=st.data())
def test_incremental_equals_batch_many_examples(connection, library, profiles, scores, data):
    _load(connection, profiles, scores)
    _check_history(connection, library, profiles, scores)
    _check(connection, library, profiles, scores, _instants(data, library, profiles, scores, 2, 2))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(library=libraries(), profiles=profile_events(), offset=st.integers(0, 2 * 40))
def test_next_change_is_the_exact_instant_membership_changes(library, profiles, offset):
    """Between the clock and next_change nothing changes; at next_change something does."""
    at = BASE + timedelta(minutes=30 * offset)
    engine = SegmentEngine(library)
    for profile, events in profiles.items():
        seen = [e for e in events if e["timestamp"] <= at]
        if not seen:
            continue
        state = engine.replay(profile, seen, until=at)
        now = engine.members(state)
        change = engine.next_change(state)
        if change is None:
            later = engine.replay(profile, seen, until=at + timedelta(days=30))
            assert engine.members(later) == now
            continue
        assert change > at
        just_before = engine.replay(profile, seen, until=change - timedelta(microseconds=1))
        assert engine.members(just_before) == now
        at_change = engine.replay(profile, seen, until=change)
        assert engine.members(at_change) != now
