"""The compiled form of segment definitions, shared by the batch, incremental and explain code.

Every condition of the YAML schema compiles to a boolean expression (``All``, ``Any``, ``Not``,
``Ref``, ``Const``) over three kinds of time-varying tests (``Leaf.test``):

- ``Tally``     the count (or revenue) of matching events with ``t - start < timestamp <=
                t - end`` compared with a threshold; ``start`` None means no lower edge;
- ``Sequence``  a matching first event A in ``(t - within, t]`` that qualifies on
                ``[a + wait, min(a + within, b))`` (``then_not``: b is the first B in
                ``(a, a + horizon]``) or on ``[b, a + within)`` (``then``);
- ``ScoreTest`` a model score compared with a number, another score, a set of hours of the week
                or a top-k-percent threshold (scores are a snapshot and do not vary with time).

Times are integer microseconds since the Unix epoch (naive UTC), so windows are exact. Profile
aggregates and subscription states compile to these tests (see ``docs/segments.md``), which is
what lets two evaluators share one meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from features.contract import SEND_EVENTS

US_PER_SECOND = 1_000_000
REVENUE_UNITS = 10_000  # revenue is summed as integer 1/10000ths so both evaluators agree exactly
EPOCH = datetime(1970, 1, 1)
NEVER = 1 << 62  # "no instant" in microseconds, after any real time

# Events that are messages sent or delivered *to* the person, not something the person did;
# first / last seen ignore them. "... Sent" are common custom names for the send itself.
NOT_ACTIVITY = frozenset(
    SEND_EVENTS | {"Alias", "Email Sent", "SMS Sent", "Push Notification Sent"}
)
ORDER = "Order Completed"


def to_us(value: datetime) -> int:
    """Naive UTC datetime -> microseconds since the epoch."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def duration_us(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * US_PER_SECOND + value.microseconds


def revenue_units(value: float | None) -> int:
    """Revenue -> integer 1/10000ths, rounded half up (the same arithmetic as the SQL)."""
    if value is None or math.isnan(value):
        return 0
    return math.floor(value * REVENUE_UNITS + 0.5)


# --- Event filters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Predicate:
    """One `where` test on an event column or a property (``properties.a.b``).

    ``op``: eq, ne, in, not_in (value: scalar or tuple), ge, le, gt, lt (number), exists (bool).
    Values are typed: text matches text, a number matches a number, true matches true; a
    property sent as "42" (text) is not the number 42. ne / not_in hold when the field is
    missing; number comparisons do not.
    """

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class EventFilter:
    events: frozenset[str] | None = None  # any of these names; None: any event
    exclude: frozenset[str] = frozenset()  # none of these names
    predicates: tuple[Predicate, ...] = ()

    def names(self) -> str:
        if self.events is None:
            return "any event" if not self.exclude else "any activity"
        return " or ".join(sorted(self.events))


# --- Tests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """Count (or revenue sum) of matching events with t - start < timestamp <= t - end."""

    filter: EventFilter
    start: int | None  # microseconds; None: no lower edge (ever)
    end: int  # microseconds >= 0
    measure: str  # "count" or "revenue" (in REVENUE_UNITS)
    op: str  # ">=" or "<="
    threshold: int


@dataclass(frozen=True)
class Sequence:
    """A then (not) B: see the module docstring for the qualifying interval."""

    first: EventFilter
    within: int | None  # microseconds; None: the first event may be any time ago
    then: EventFilter
    horizon: int | None  # B is looked for in (a, a + horizon]; None: any time after a
    negated: bool  # then_not
    wait: int  # microseconds, then_not only


@dataclass(frozen=True)
class ScoreTest:
    """A score compared with a number / another score (op > >= < <=), a set of hours of the
    week (op "in") or the top-percent threshold of ``population`` (op "top")."""

    score: str
    op: str
    value: Any  # float, a score name, frozenset of hours, or the percent for "top"
    key: str | None = None  # "top": the threshold's name (segment.path)
    population: Node | None = None  # "top": who is ranked; None: every scored profile


Test = Tally | Sequence | ScoreTest

# --- Expressions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    test: Test
    label: str = field(default="", compare=False)
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class All:
    children: tuple[Node, ...]
    label: str = field(default="all of", compare=False)
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class Any_:
    children: tuple[Node, ...]
    label: str = field(default="any of", compare=False)
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class Not:
    child: Node
    label: str = field(default="not", compare=False)
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class Ref:
    """Membership of another segment (evaluated as that segment's expression)."""

    name: str
    child: Node = field(compare=False)
    path: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"in segment {self.name}"


@dataclass(frozen=True)
class Const:
    value: bool
    label: str = field(default="", compare=False)
    path: str = field(default="", compare=False)


Node = Leaf | All | Any_ | Not | Ref | Const


def strip_refs(node: Node) -> Node:
    """The same expression with references replaced by the referenced expression."""
    if isinstance(node, Ref):
        return strip_refs(node.child)
    if isinstance(node, All | Any_):
        return type(node)(tuple(strip_refs(c) for c in node.children), node.label, node.path)
    if isinstance(node, Not):
        return Not(strip_refs(node.child), node.label, node.path)
    return node


def walk(node: Node):
    """Every node of an expression, references followed, parents first."""
    yield node
    if isinstance(node, All | Any_):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not | Ref):
        yield from walk(node.child)
    elif isinstance(node, Leaf) and isinstance(node.test, ScoreTest) and node.test.population:
        yield from walk(node.test.population)


def tests_of(node: Node) -> list[Test]:
    """Distinct tests an expression reads, in first-use order (populations included)."""
    seen: dict[Test, None] = {}
    for item in walk(node):
        if isinstance(item, Leaf):
            seen.setdefault(item.test, None)
    return list(seen)


def uses_scores(node: Node) -> bool:
    return any(isinstance(test, ScoreTest) for test in tests_of(node))
