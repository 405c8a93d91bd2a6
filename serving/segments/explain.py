"""Why a profile is (or is not) in a segment: every condition, whether it held, and the values
that decided it (counts in windows, the events of a sequence, scores against thresholds).

Explanations come from the incremental evaluator's state, so they say exactly what the
evaluators decided. ``explain`` replays a profile's events up to an instant; ``explain_state``
explains a live profile state of the real-time service.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from features.contract import parse_timestamp
from serving.segments import ir
from serving.segments.incremental import (
    ProfileState,
    SegmentEngine,
    _SequenceRunner,
    _TallyRunner,
)
from serving.segments.library import SegmentLibrary
from serving.segments.schema import WEEKDAYS, describe_duration

_OPS = {">=": "at least", "<=": "at most", ">": "above", "<": "below"}


@dataclass
class ExplainNode:
    label: str  # the condition in words
    path: str  # where it is written in the YAML
    held: bool
    detail: str = ""  # the deciding values
    children: list[ExplainNode] = field(default_factory=list)


@dataclass
class Explanation:
    profile_id: str
    segment: str
    description: str
    at: datetime
    member: bool
    entered_at: datetime | None
    next_change: datetime | None  # next change of this segment that needs no new event
    rule: str  # "when", or "fallback" (no model scores available)
    events: int  # events of the profile at or before `at`
    tree: ExplainNode

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("at", "entered_at", "next_change"):
            data[key] = _time(data[key]) if data[key] else None
        return data

    def render(self) -> str:
        """The explanation as indented text with a mark per condition."""
        status = "IS" if self.member else "is NOT"
        head = [f"{self.profile_id} {status} in {self.segment} at {_time(self.at)}"]
        if self.member and self.entered_at:
            head[0] += f" (since {_time(self.entered_at)})"
        if self.description:
            head.append(f"  {self.segment}: {self.description}")
        if self.rule == "fallback":
            head.append("  no model scores available: the fallback rule applies")
        head.append(f"  {self.events} event{'s' if self.events != 1 else ''} considered")
        lines: list[str] = []

        def visit(node: ExplainNode, depth: int) -> None:
            mark = "✓" if node.held else "✗"
            detail = f" — {node.detail}" if node.detail else ""
            lines.append(f"{'  ' * depth}{mark} {node.label}{detail}")
            for child in node.children:
                visit(child, depth + 1)

        visit(self.tree, 1)
        tail = []
        if self.next_change is not None:
            verb = "leaves" if self.member else "enters"
            tail.append(f"  with no new events, {verb} at {_time(self.next_change)}")
        return "\n".join(head + lines + tail)


def explain(
    library: SegmentLibrary,
    profile_id: str,
    segment: str,
    events: Iterable[Mapping[str, Any]],
    at: datetime,
    *,
    scores: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, float | None] | None = None,
) -> Explanation:
    """Explain ``segment`` for one profile at ``at`` from its events (time order; later ones
    are ignored) and, for score conditions, its scores and the top-percent thresholds."""
    library.segment(segment)  # unknown names fail with a suggestion
    engine = SegmentEngine(library, {k: v for k, v in (thresholds or {}).items() if v is not None})
    state = engine.new_profile(profile_id, scores)
    count = 0
    for event in events:
        if _event_time(event) > at:
            break
        engine.apply(state, event)
        count += 1
    engine.advance(state, at)
    return explain_state(engine, state, segment, at=at, events=count)


def explain_state(
    engine: SegmentEngine,
    state: ProfileState,
    segment: str,
    at: datetime | None = None,
    events: int = 0,
) -> Explanation:
    """Explain ``segment`` for a live profile state at its clock."""
    library = engine.library
    definition = library.segment(segment)
    index = engine.segment_names.index(segment)
    clock = state.clock
    member = bool(state.segment_values[index]) if clock is not None else False
    entered = state.entered[index] if member else None
    explainer = _Explainer(engine, state)
    tree = explainer.node(definition.expression)
    return Explanation(
        profile_id=state.profile_id,
        segment=segment,
        description=definition.description,
        at=at if at is not None else (ir.from_us(clock) if clock is not None else datetime.min),
        member=member,
        entered_at=ir.from_us(entered) if entered is not None else None,
        next_change=_next_change_of(engine, state, index),
        rule="fallback" if definition.uses_fallback else "when",
        events=events,
        tree=tree,
    )


def _next_change_of(engine: SegmentEngine, state: ProfileState, index: int) -> datetime | None:
    """Next instant this one segment changes with no new event."""
    if state.clock is None:
        return None
    t = state.clock
    values = list(state.test_values)
    current = state.segment_values[index]
    runners, slots = engine._runners, state.slots
    while True:
        instant = min(
            (runners[i].next_change(slots[i], t) for i in engine._timed), default=ir.NEVER
        )
        if instant >= ir.NEVER:
            return None
        for i in engine._timed:
            values[i] = runners[i].value(slots[i], instant)
        if engine._evaluate(values)[index] != current:
            return ir.from_us(instant)
        t = instant


class _Explainer:
    def __init__(self, engine: SegmentEngine, state: ProfileState):
        self.engine = engine
        self.state = state
        self.index = {test: i for i, test in enumerate(engine.tests)}
        self.expanded: set[str] = set()
        self.clock = state.clock if state.clock is not None else 0

    def node(self, node: ir.Node) -> ExplainNode:
        if isinstance(node, ir.Leaf):
            i = self.index[node.test]
            held = bool(self.state.test_values[i])
            return ExplainNode(node.label, node.path, held, self.detail(node.test, i, held))
        if isinstance(node, ir.Ref):
            position = self.engine.segment_names.index(node.name)
            held = (
                bool(self.state.segment_values[position]) if self.state.clock is not None else False
            )
            if node.name in self.expanded:
                return ExplainNode(node.label, node.path, held, "see above")
            self.expanded.add(node.name)
            return ExplainNode(node.label, node.path, held, "", [self.node(node.child)])
        if isinstance(node, ir.Not):
            child = self.node(node.child)
            if node.label == "not" and not child.children:
                label = f"not: {child.label}"
                return ExplainNode(label, node.path, not child.held, child.detail)
            return ExplainNode(node.label, node.path, not child.held, "", [child])
        if isinstance(node, ir.All | ir.Any_):
            children = [self.node(c) for c in node.children]
            held = (
                all(c.held for c in children)
                if isinstance(node, ir.All)
                else any(c.held for c in children)
            )
            return ExplainNode(node.label, node.path, held, "", children)
        return ExplainNode(node.label or str(node.value), node.path, bool(node.value))

    def detail(self, test: ir.Test, index: int, held: bool) -> str:
        slot = self.state.slots[index]
        runner = self.engine._runners[index]
        if isinstance(test, ir.Tally):
            return self._tally(test, runner, slot)
        if isinstance(test, ir.Sequence):
            return self._sequence(test, runner, slot, held)
        return self._score(test)

    def _tally(self, test: ir.Tally, runner: _TallyRunner, slot: Any) -> str:
        t = self.clock
        total = runner.total(slot, t)
        if test.measure == "revenue":
            shown = f"revenue {total / ir.REVENUE_UNITS:g}"
            need = f"{test.threshold / ir.REVENUE_UNITS:g}"
        else:
            shown = f"{total} matching event{'s' if total != 1 else ''}"
            need = str(test.threshold)
        parts = [f"{shown} (needs {_OPS[test.op]} {need})"]
        hi = _bisect(slot.times, t - test.end, slot.head)
        lo = _bisect(slot.times, t - test.start, slot.head) if test.start is not None else slot.head
        if hi > lo:
            parts.append(f"last at {_time(ir.from_us(slot.times[hi - 1]))}")
        if test.start is not None or test.end:
            window = f"{_time(ir.from_us(t - test.start))}" if test.start is not None else "-∞"
            parts.append(f"window ({window}, {_time(ir.from_us(t - test.end))}]")
        change = runner.next_change(slot, t)
        if change < ir.NEVER:
            parts.append(f"count changes at {_time(ir.from_us(change))}")
        return "; ".join(parts)

    def _sequence(self, test: ir.Sequence, runner: _SequenceRunner, slot: list, held: bool) -> str:
        t = self.clock
        first = test.first.names()
        then = test.then.names()
        if not slot:
            return f"no {first} that could still count"
        chosen = None
        for a, b in slot:
            lo, hi = runner._interval(a, b)
            if lo <= t < hi:
                chosen = (a, b, lo, hi)
        if chosen is None:
            a, b = slot[-1]
            lo, hi = runner._interval(a, b)
            chosen = (a, b, lo, hi)
        a, b, lo, hi = chosen
        text = f"{first} at {_time(ir.from_us(a))}"
        if test.negated:
            if b is not None:
                text += f", followed by {then} at {_time(ir.from_us(b))}"
            else:
                text += f", no {then} after it"
                if test.horizon is not None:
                    text += f" within {describe_duration(timedelta(microseconds=test.horizon))}"
            if held:
                until = "" if hi >= ir.NEVER else f" until {_time(ir.from_us(hi))}"
                text += f"; counts from {_time(ir.from_us(lo))}{until}"
            elif lo > t and lo < hi:
                text += f"; counts from {_time(ir.from_us(lo))} if no {then} before then"
        else:
            if b is not None:
                text += f", then {then} at {_time(ir.from_us(b))}"
                if held and hi < ir.NEVER:
                    text += f"; counts until {_time(ir.from_us(hi))}"
            else:
                text += f", no {then} after it yet"
        return text

    def _score(self, test: ir.ScoreTest) -> str:
        scores = self.state.scores
        value = scores.get(test.score)
        if value is None:
            return f"no {test.score} score for this profile"
        if test.op == "in":
            hour = int(value) % 168
            day, clock_hour = divmod(hour, 24)
            return f"best hour of week {hour} ({WEEKDAYS[day]} {clock_hour:02d}:00 UTC)"
        if test.op == "top":
            threshold = self.engine.thresholds.get(test.key)
            if threshold is None:
                return f"{test.score} = {value:.4g}; no top-{test.value:g}% threshold available"
            return f"{test.score} = {value:.4g} (top {test.value:g}% starts at {threshold:.4g})"
        if isinstance(test.value, str):
            other = scores.get(test.value)
            shown = f"{other:.4g}" if other is not None else "missing"
            return f"{test.score} = {value:.4g}, {test.value} = {shown}"
        return f"{test.score} = {value:.4g} (needs {_OPS[test.op]} {test.value:g})"


def _bisect(times: list[int], value: int, lo: int) -> int:
    return bisect_right(times, value, lo)


def _time(value: datetime) -> str:
    return (
        value.isoformat(sep=" ", timespec="seconds")
        if value.microsecond == 0
        else value.isoformat(sep=" ")
    )


def _event_time(event: Mapping[str, Any]) -> datetime:
    value = event["timestamp"]
    if isinstance(value, datetime) and value.tzinfo is None:
        return value
    return parse_timestamp(value)  # ISO text or an aware datetime -> naive UTC
