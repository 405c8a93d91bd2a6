"""Incremental segment membership for one profile at a time, as events arrive and time passes.

The real-time service keeps one ``ProfileState`` per profile and calls pure functions of a
``SegmentEngine``: ``apply`` an event, ``advance`` the clock, ``set_scores`` when a model
rescores the profile, ``next_change`` for the exact instant the next time-driven change happens
(a window running out, a wait elapsing), so a timer can fire then without any new event.

Meaning (the same as ``batch.py``, checked by a property test): membership at instant t is a
function of the profile's events with timestamp <= t, its scores and t. Every change is
reported at the exact instant it happens; ``entered_at`` is the start of the current continuous
membership (never before the profile's first event). Events are expected in time order per
profile; an event older than the profile's clock is applied as if it happened at the clock.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from features.contract import COLUMN_NAMES, parse_timestamp
from serving.segments import ir
from serving.segments.library import SegmentLibrary

logger = logging.getLogger(__name__)

NEVER = ir.NEVER
SCORE_COLUMNS = (
    "p_convert",
    "p_engage_email",
    "p_engage_sms",
    "p_engage_push",
    "best_hour_of_week",
)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    profile_id: str
    segment: str
    member: bool  # True: entered, False: left
    at: datetime  # the exact instant of the change
    entered_at: datetime | None  # entered: start of the membership (usually == at)


# --- Event access ------------------------------------------------------------------------------


class _Event:
    """One event: column access plus lazily parsed properties."""

    __slots__ = ("columns", "parsed")

    def __init__(self, columns: Mapping[str, Any]):
        self.columns = columns
        self.parsed: Any = None

    def properties(self) -> dict:
        if self.parsed is None:
            raw = self.columns.get("properties")
            if isinstance(raw, str | bytes):
                try:
                    raw = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raw = None
            self.parsed = raw if isinstance(raw, dict) else {}
        return self.parsed


def property_value(properties: Any, path: tuple[str, ...]) -> Any:
    value = properties
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(value: Any, expected: Any) -> bool:
    """Typed equality: text = text, number = number, boolean = boolean."""
    if isinstance(expected, bool):
        return isinstance(value, bool) and value is expected
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return _is_number(value) and value == expected


def compile_predicate(predicate: ir.Predicate):
    """ir.Predicate -> function(_Event) -> bool (the SQL in batch.py says the same)."""
    field, op, expected = predicate.field, predicate.op, predicate.value
    if field.startswith("properties."):
        path = tuple(field.split(".")[1:])

        def get(event: _Event) -> Any:
            return property_value(event.properties(), path)

    else:

        def get(event: _Event) -> Any:
            value = event.columns.get(field)
            if isinstance(value, float) and math.isnan(value):
                return None
            return value

    if op == "eq":
        return lambda event: _same(get(event), expected)
    if op == "ne":
        return lambda event: not _same(get(event), expected)
    if op == "in":
        return lambda event: any(_same(get(event), v) for v in expected)
    if op == "not_in":
        return lambda event: not any(_same(get(event), v) for v in expected)
    if op == "exists":
        return lambda event: (get(event) is not None) is expected
    compare = {
        "ge": lambda a, b: a >= b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "lt": lambda a, b: a < b,
    }[op]

    def number_test(event: _Event) -> bool:
        value = get(event)
        return _is_number(value) and compare(value, expected)

    return number_test


def compile_filter(event_filter: ir.EventFilter):
    """Filter minus the event-name test (names are dispatched on): function(_Event) -> bool."""
    predicates = [compile_predicate(p) for p in event_filter.predicates]
    exclude = event_filter.exclude

    if not predicates and not exclude:
        return None

    def match(event: _Event, name: str) -> bool:
        if name in exclude:
            return False
        return all(test(event) for test in predicates)

    return match


# --- Tests over a profile's events -------------------------------------------------------------


class _TallySlot:
    """Matching events still able to change the tally at t >= clock, sorted by time."""

    __slots__ = ("base", "cum", "head", "times")

    def __init__(self, revenue: bool):
        self.base = 0  # events permanently inside an unbounded window
        self.times: list[int] = []
        self.cum: list[int] | None = [0] if revenue else None  # prefix sums of amounts
        self.head = 0  # times[:head] are folded into base or out of the window for good


class _TallyRunner:
    __slots__ = ("end", "op", "revenue", "start", "threshold")

    def __init__(self, test: ir.Tally):
        self.start = test.start
        self.end = test.end
        self.revenue = test.measure == "revenue"
        self.op = test.op
        self.threshold = test.threshold

    def new(self) -> _TallySlot:
        return _TallySlot(self.revenue)

    def add(self, slot: _TallySlot, ts: int, event: _Event) -> None:
        times = slot.times
        amount = ir.revenue_units(event.columns.get("revenue")) if self.revenue else 1
        if not times or ts >= times[-1]:
            times.append(ts)
            if slot.cum is not None:
                slot.cum.append(slot.cum[-1] + amount)
            return
        index = bisect_right(times, ts, slot.head)  # out of order within the same instant
        times.insert(index, ts)
        if slot.cum is not None:
            slot.cum.insert(index + 1, slot.cum[index] + amount)
            for i in range(index + 2, len(slot.cum)):
                slot.cum[i] += amount

    def total(self, slot: _TallySlot, t: int) -> int:
        times, head = slot.times, slot.head
        hi = bisect_right(times, t - self.end, head)
        lo = bisect_right(times, t - self.start, head, hi) if self.start is not None else head
        if slot.cum is None:
            return slot.base + hi - lo
        return slot.base + slot.cum[hi] - slot.cum[lo]

    def value(self, slot: _TallySlot, t: int) -> bool:
        total = self.total(slot, t)
        return total >= self.threshold if self.op == ">=" else total <= self.threshold

    def next_change(self, slot: _TallySlot, t: int) -> int:
        """First instant after t at which an event enters or leaves the window."""
        times, head = slot.times, slot.head
        best = NEVER
        if self.end:
            i = bisect_right(times, t - self.end, head)
            if i < len(times):
                best = times[i] + self.end
        if self.start is not None:
            j = bisect_right(times, t - self.start, head)
            if j < len(times):
                best = min(best, times[j] + self.start)
        return best

    def prune(self, slot: _TallySlot, clock: int) -> None:
        times = slot.times
        if self.start is not None:  # left the window for good
            slot.head = bisect_right(times, clock - self.start, slot.head)
        else:  # inside the unbounded window for good
            hi = bisect_right(times, clock - self.end, slot.head)
            if slot.cum is None:
                slot.base += hi - slot.head
            else:
                slot.base += slot.cum[hi] - slot.cum[slot.head]
            slot.head = hi
        if slot.head > 32 and slot.head * 2 > len(times):
            del times[: slot.head]
            if slot.cum is not None:
                offset = slot.cum[slot.head]
                slot.cum = [c - offset for c in slot.cum[slot.head :]]
            slot.head = 0


class _SequenceRunner:
    """Instances [a, b]: a first event at a, and the first follow-up b in (a, a + horizon]."""

    __slots__ = ("horizon", "negated", "wait", "within")

    def __init__(self, test: ir.Sequence):
        self.within = test.within if test.within is not None else NEVER
        self.horizon = test.horizon
        self.negated = test.negated
        self.wait = test.wait

    def new(self) -> list[list]:
        return []

    def add_first(self, slot: list[list], ts: int) -> None:
        slot.append([ts, None])

    def add_then(self, slot: list[list], ts: int) -> None:
        horizon = self.horizon
        for instance in slot:
            a, b = instance
            if a < ts and (b is None or ts < b) and (horizon is None or ts <= a + horizon):
                instance[1] = ts

    def _interval(self, a: int, b: int | None) -> tuple[int, int]:
        if self.negated:
            return a + self.wait, min(a + self.within, NEVER if b is None else b)
        if b is None:
            return NEVER, NEVER
        return b, a + self.within

    def value(self, slot: list[list], t: int) -> bool:
        for a, b in slot:
            lo, hi = self._interval(a, b)
            if lo <= t < hi:
                return True
        return False

    def next_change(self, slot: list[list], t: int) -> int:
        best = NEVER
        for a, b in slot:
            lo, hi = self._interval(a, b)
            if lo >= hi:
                continue
            if t < lo < best:
                best = lo
            if t < hi < best:
                best = hi
        return best

    def prune(self, slot: list[list], clock: int) -> None:
        keep = []
        horizon = self.horizon
        for instance in slot:
            a, b = instance
            lo, hi = self._interval(a, b)
            if hi <= clock or (lo >= hi and (self.negated or b is not None)):
                continue  # can never qualify again
            if not self.negated and b is None and horizon is not None and a + horizon < clock:
                continue  # its follow-up can no longer come in time
            keep.append(instance)
        if len(keep) != len(slot):
            slot[:] = keep


# --- The engine --------------------------------------------------------------------------------


class ProfileState:
    """Everything the engine knows about one profile; owned by the caller (one per profile)."""

    __slots__ = (
        "clock",
        "entered",
        "first_seen",
        "instant_entered",
        "instant_values",
        "next_at",
        "profile_id",
        "scores",
        "segment_values",
        "slots",
        "test_values",
    )

    def __init__(self, profile_id: str, engine: SegmentEngine):
        self.profile_id = profile_id
        self.clock: int | None = None
        self.first_seen: int | None = None
        self.slots = [runner.new() if runner is not None else None for runner in engine._runners]
        self.test_values = list(engine._initial_values)
        self.next_at = [NEVER] * len(engine.tests)
        count = len(engine.segment_names)
        self.segment_values: tuple[bool, ...] = (False,) * count
        self.entered: tuple[int | None, ...] = (None,) * count
        self.instant_values = self.segment_values
        self.instant_entered = self.entered
        self.scores: dict[str, float] = {}


class SegmentEngine:
    """Pure incremental evaluator of a compiled library; holds no per-profile state itself.

    ``thresholds``: top-percent thresholds by key (``SegmentLibrary.top_tests()``), computed over
    the whole population by ``batch.score_thresholds``; a missing threshold fails its test.
    """

    def __init__(self, library: SegmentLibrary, thresholds: Mapping[str, float] | None = None):
        self.library = library
        self.thresholds = dict(thresholds or {})
        self.tests = library.tests()
        self.segment_names = list(library.segments)
        self._runners: list[Any] = []
        # event name -> [(test index, role, matcher)], role: 0 tally, 1 first, 2 then
        self._by_name: dict[str, list[tuple[int, int, Any]]] = {}
        self._any_name: list[tuple[int, int, Any, frozenset | None]] = []
        self._timed: list[int] = []  # tests whose value can change with time alone
        self._score_tests: list[int] = []
        for index, test in enumerate(self.tests):
            if isinstance(test, ir.Tally):
                self._runners.append(_TallyRunner(test))
                self._dispatch(index, 0, test.filter)
                if test.start is not None or test.end:
                    self._timed.append(index)
            elif isinstance(test, ir.Sequence):
                self._runners.append(_SequenceRunner(test))
                self._dispatch(index, 2, test.then)  # follow-ups first: b > a strictly anyway
                self._dispatch(index, 1, test.first)
                self._timed.append(index)
            else:
                self._runners.append(None)
                self._score_tests.append(index)
        self._evaluate = self._compile_segments()
        # Test values of a profile with no events: a tally of nothing is 0.
        self._initial_values = [
            (t.threshold <= 0 if t.op == ">=" else t.threshold >= 0)
            if isinstance(t, ir.Tally)
            else False
            for t in self.tests
        ]

    def _dispatch(self, index: int, role: int, event_filter: ir.EventFilter) -> None:
        matcher = compile_filter(event_filter)
        if event_filter.events is None:
            self._any_name.append((index, role, matcher, None))
        else:
            for name in sorted(event_filter.events):
                self._by_name.setdefault(name, []).append((index, role, matcher))

    def _compile_segments(self):
        """Generate one function: test values -> tuple of segment values, in dependency order."""
        test_index = {test: i for i, test in enumerate(self.tests)}
        segment_index = {name: i for i, name in enumerate(self.segment_names)}

        def expr(node: ir.Node) -> str:
            if isinstance(node, ir.Leaf):
                return f"v[{test_index[node.test]}]"
            if isinstance(node, ir.All):
                return "(" + " and ".join(expr(c) for c in node.children) + ")"
            if isinstance(node, ir.Any_):
                return "(" + " or ".join(expr(c) for c in node.children) + ")"
            if isinstance(node, ir.Not):
                return f"(not {expr(node.child)})"
            if isinstance(node, ir.Ref):
                return f"s{segment_index[node.name]}"
            return "True" if node.value else "False"

        lines = ["def evaluate(v):"]
        for i, name in enumerate(self.segment_names):
            lines.append(f"    s{i} = bool({expr(self.library.segments[name].expression)})")
        lines.append(
            "    return (" + ", ".join(f"s{i}" for i in range(len(self.segment_names))) + ",)"
        )
        namespace: dict[str, Any] = {}
        exec(compile("\n".join(lines), "<segments>", "exec"), namespace)
        return namespace["evaluate"]

    # --- Public API ------------------------------------------------------------------------

    def new_profile(self, profile_id: str, scores: Mapping[str, Any] | None = None) -> ProfileState:
        """An empty profile (member of nothing until its first event)."""
        state = ProfileState(profile_id, self)
        if scores:
            state.scores = _clean_scores(scores)
        return state

    def apply(
        self, state: ProfileState, event: Mapping[str, Any] | tuple
    ) -> list[MembershipChange]:
        """Apply one event (a mapping of event columns, or a tuple in ``COLUMN_NAMES`` order)."""
        columns = (
            event if isinstance(event, Mapping) else dict(zip(COLUMN_NAMES, event, strict=False))
        )
        ts = _timestamp_us(columns.get("timestamp"))
        name = columns.get("event")
        changes: list[MembershipChange] = []
        if state.clock is None:
            state.clock = state.first_seen = ts
            self._refresh_scores(state)
        elif ts > state.clock:
            self._run(state, ts, inclusive=False, changes=changes)
            self._new_instant(state, ts)
        elif ts < state.clock:
            logger.debug(
                "event at %s for %s is older than its clock %s: applied at the clock",
                ir.from_us(ts),
                state.profile_id,
                ir.from_us(state.clock),
            )
            ts = state.clock
        wrapped = _Event(columns)
        touched = set()
        for index, role, matcher in self._by_name.get(name, ()):
            if matcher is None or matcher(wrapped, name):
                self._add(state, index, role, ts, wrapped)
                touched.add(index)
        for index, role, matcher, _ in self._any_name:
            if matcher is None or matcher(wrapped, name):
                self._add(state, index, role, ts, wrapped)
                touched.add(index)
        clock = state.clock
        next_at = state.next_at
        for index in self._timed:
            if next_at[index] <= clock:
                touched.add(index)
        self._refresh(state, touched)
        self._settle(state, changes)
        return changes

    def advance(self, state: ProfileState, until: datetime) -> list[MembershipChange]:
        """Let time pass up to ``until`` (inclusive): every window that runs out, every wait that
        elapses, at its exact instant."""
        changes: list[MembershipChange] = []
        if state.clock is None:
            return changes
        t = ir.to_us(until)
        self._run(state, t, inclusive=True, changes=changes)
        if t > state.clock:
            self._new_instant(state, t)
        return changes

    def set_scores(
        self, state: ProfileState, scores: Mapping[str, Any] | None
    ) -> list[MembershipChange]:
        """New model scores for the profile (None: no scores), effective at its clock."""
        state.scores = _clean_scores(scores or {})
        changes: list[MembershipChange] = []
        if state.clock is not None:
            self._refresh_scores(state)
            self._settle(state, changes)
        return changes

    def members(self, state: ProfileState) -> dict[str, datetime]:
        """Segment -> entered_at for every segment the profile is in at its clock."""
        return {
            name: ir.from_us(entered)
            for name, member, entered in zip(
                self.segment_names, state.segment_values, state.entered, strict=True
            )
            if member
        }

    def next_change(self, state: ProfileState) -> datetime | None:
        """The exact instant of the next membership change that needs no new event (a window
        running out, a wait elapsing), or None when nothing will change by itself."""
        found = self._next_change(state)
        return ir.from_us(found) if found is not None else None

    def replay(
        self,
        profile_id: str,
        events: Iterable[Mapping[str, Any] | tuple],
        until: datetime | None = None,
        scores: Mapping[str, Any] | None = None,
    ) -> ProfileState:
        """A profile's state after its events (in time order) and, if given, time up to until."""
        state = self.new_profile(profile_id, scores)
        for event in events:
            self.apply(state, event)
        if until is not None:
            self.advance(state, until)
        return state

    # --- Internals -------------------------------------------------------------------------

    def _add(self, state: ProfileState, index: int, role: int, ts: int, event: _Event) -> None:
        runner = self._runners[index]
        slot = state.slots[index]
        if role == 0:
            runner.add(slot, ts, event)
        elif role == 1:
            runner.add_first(slot, ts)
        else:
            runner.add_then(slot, ts)

    def _refresh(self, state: ProfileState, indexes: Iterable[int]) -> None:
        clock = state.clock
        values, next_at, slots, runners = (
            state.test_values,
            state.next_at,
            state.slots,
            self._runners,
        )
        for index in indexes:
            runner = runners[index]
            slot = slots[index]
            runner.prune(slot, clock)
            values[index] = runner.value(slot, clock)
            next_at[index] = runner.next_change(slot, clock)

    def _refresh_scores(self, state: ProfileState) -> None:
        for index in self._score_tests:
            state.test_values[index] = self._score_value(self.tests[index], state.scores)

    def _score_value(self, test: ir.ScoreTest, scores: Mapping[str, float]) -> bool:
        value = scores.get(test.score)
        if value is None:
            return False
        if test.op == "in":
            return math.floor(value) in test.value
        if test.op == "top":
            threshold = self.thresholds.get(test.key)
            return threshold is not None and value >= threshold
        other = scores.get(test.value) if isinstance(test.value, str) else test.value
        if other is None:
            return False
        if test.op == ">":
            return value > other
        if test.op == ">=":
            return value >= other
        if test.op == "<":
            return value < other
        return value <= other

    def _new_instant(self, state: ProfileState, t: int) -> None:
        state.clock = t
        state.instant_values = state.segment_values
        state.instant_entered = state.entered

    def _run(self, state: ProfileState, until: int, inclusive: bool, changes: list) -> None:
        """Process every time-driven instant up to until, in order."""
        next_at = state.next_at
        while True:
            instant = min(next_at) if next_at else NEVER
            if instant > until or (instant == until and not inclusive):
                return
            self._new_instant(state, instant)
            due = [i for i in self._timed if next_at[i] <= instant]
            self._refresh(state, due)
            self._settle(state, changes)

    def _settle(self, state: ProfileState, changes: list[MembershipChange]) -> None:
        new = self._evaluate(state.test_values)
        old = state.segment_values
        if new == old:
            return
        clock = state.clock
        entered = list(state.entered)
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            if before == after:
                continue
            name = self.segment_names[index]
            if after:
                # Back in at the same instant it left: the membership never stopped.
                start = state.instant_entered[index] if state.instant_values[index] else clock
                entered[index] = start
                changes.append(
                    MembershipChange(
                        state.profile_id, name, True, ir.from_us(clock), ir.from_us(start)
                    )
                )
            else:
                entered[index] = None
                changes.append(
                    MembershipChange(state.profile_id, name, False, ir.from_us(clock), None)
                )
        state.segment_values = new
        state.entered = tuple(entered)

    def _next_change(self, state: ProfileState) -> int | None:
        if state.clock is None:
            return None
        t = state.clock
        values = list(state.test_values)
        current = state.segment_values
        runners, slots = self._runners, state.slots
        while True:
            instant = min((runners[i].next_change(slots[i], t) for i in self._timed), default=NEVER)
            if instant >= NEVER:
                return None
            for i in self._timed:
                values[i] = runners[i].value(slots[i], instant)
            if self._evaluate(values) != current:
                return instant
            t = instant


def _timestamp_us(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = parse_timestamp(value)
        return ir.to_us(value)
    if isinstance(value, str):
        return ir.to_us(parse_timestamp(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"event timestamp must be a datetime or ISO 8601 text, got {value!r}")


def _clean_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    clean = {}
    for key, value in scores.items():
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            clean[key] = number
    return clean
