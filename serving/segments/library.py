"""Load a segments YAML file: validate it, report problems by YAML path, compile it.

``load_library`` is the one entry point: it parses the YAML, checks the schema
(``schema.py``), checks what needs the whole file (references to unknown segments, reference
cycles, model-score conditions when no scores are available, event names nobody sends) and
compiles every segment to the expression form of ``ir.py``. Problems are collected, not stopped
at the first, and each names its YAML path and line. Unknown event names are warnings (a brand
may send custom events) unless ``strict``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from features.contract import CANONICAL_EVENTS
from serving.segments import ir
from serving.segments.schema import (
    ALL_FIELD_NAMES,
    CONDITION_KINDS,
    NUMBER_FILTER_COLUMNS,
    SCORE_NAMES,
    TEXT_FILTER_COLUMNS,
    AllCondition,
    AnyCondition,
    EventCondition,
    FilterOperators,
    NotCondition,
    ProfileCondition,
    ScoreCondition,
    SegmentFile,
    SegmentReference,
    SendWindowCondition,
    SequenceCondition,
    SubscriptionCondition,
    describe_duration,
)

logger = logging.getLogger(__name__)

DEFAULT_LIBRARY = Path(__file__).with_name("default.yaml")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: same result
KNOWN_EVENTS = frozenset(CANONICAL_EVENTS) | {"Identify", "Alias"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a segments file."""

    path: str  # e.g. segments.high_intent.when.all[1].event
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        if not self.path:
            where = f"line {self.line}" if self.line else ""
        return f"{where}: {self.message}" if where else self.message


class SegmentDefinitionError(ValueError):
    """A segments file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}\n{lines}")


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    tags: tuple[str, ...]
    expression: ir.Node  # the rule in force: `when`, or `fallback` when no scores are available
    uses_fallback: bool
    uses_scores: bool


@dataclass(frozen=True)
class SegmentLibrary:
    """A validated, compiled set of segments. ``segments`` is in dependency order (a segment
    comes after every segment it refers to)."""

    source: str
    document: SegmentFile
    segments: dict[str, Segment]
    scores_available: bool
    warnings: tuple[Problem, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self.segments)

    def tests(self) -> list[ir.Test]:
        """Every distinct test the library reads, in first-use order."""
        seen: dict[ir.Test, None] = {}
        for segment in self.segments.values():
            for test in ir.tests_of(segment.expression):
                seen.setdefault(test, None)
        return list(seen)

    def top_tests(self) -> list[ir.ScoreTest]:
        """Top-percent tests, those inside another's population first (their thresholds are
        needed first): ``tests()`` lists a population's tests before the ranking test."""
        return [t for t in self.tests() if isinstance(t, ir.ScoreTest) and t.op == "top"]

    def subset(self, names: Iterable[str]) -> SegmentLibrary:
        """Only these segments and the segments they refer to (unknown names: KeyError)."""
        wanted: set[str] = set()
        for name in names:
            wanted.add(self.segment(name).name)
            for node in ir.walk(self.segments[name].expression):
                if isinstance(node, ir.Ref):
                    wanted.add(node.name)
        return replace(self, segments={n: s for n, s in self.segments.items() if n in wanted})

    def segment(self, name: str) -> Segment:
        if name not in self.segments:
            close = get_close_matches(name, self.segments, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KeyError(f"unknown segment {name!r}{hint}")
        return self.segments[name]


def load_library(
    source: str | Path | None = None,
    *,
    scores_available: bool = False,
    known_events: Iterable[str] = (),
    strict: bool = False,
) -> SegmentLibrary:
    """Read, validate and compile a segments file (default: the shipped default library).

    ``scores_available``: model scores will be supplied; without them, segments use their
    ``fallback`` and a score condition in a segment without one is an error.
    ``known_events``: event names the brand sends (e.g. the store's) besides the canonical ones.
    ``strict``: unknown event names are errors, not warnings.
    Raises SegmentDefinitionError listing every problem.
    """
    path = Path(source) if source is not None else DEFAULT_LIBRARY
    try:
        text = path.read_text()
    except OSError as error:
        raise SegmentDefinitionError(str(path), [Problem("", f"cannot read: {error}")]) from None
    return parse_library(
        text,
        source=str(path),
        scores_available=scores_available,
        known_events=known_events,
        strict=strict,
    )


def parse_library(
    text: str,
    *,
    source: str = "<segments>",
    scores_available: bool = False,
    known_events: Iterable[str] = (),
    strict: bool = False,
) -> SegmentLibrary:
    """``load_library`` on YAML text."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(error, "problem", None) or str(error)
        raise SegmentDefinitionError(
            source, [Problem("", f"not valid YAML: {problem}", line)]
        ) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    problems: list[Problem] = []
    if root is not None:
        _index_lines(root, (), lines, problems)
    if problems:
        raise SegmentDefinitionError(source, problems)

    if not isinstance(data, dict):
        raise SegmentDefinitionError(
            source, [Problem("", "expected a mapping with `version: 1` and `segments:`", 1)]
        )
    problems.extend(_kind_problems(data, lines))
    if problems:
        raise SegmentDefinitionError(source, problems)
    try:
        document = SegmentFile.model_validate(data)
    except ValidationError as error:
        raise SegmentDefinitionError(source, _pydantic_problems(error, lines)) from None

    known = KNOWN_EVENTS | frozenset(known_events)
    checks = _Checks(document, lines, known, scores_available)
    checks.run()
    errors = checks.errors + (checks.warnings if strict else [])
    if errors:
        raise SegmentDefinitionError(source, errors)
    compiler = _Compiler(document, scores_available, lines)
    segments = {name: compiler.segment(name) for name in checks.order}
    if compiler.problems:
        raise SegmentDefinitionError(source, compiler.problems)
    for warning in checks.warnings:
        logger.warning("%s: %s", source, warning)
    return SegmentLibrary(
        source=source,
        document=document,
        segments=segments,
        scores_available=scores_available,
        warnings=tuple(checks.warnings),
    )


# --- Paths and lines ---------------------------------------------------------------------------


def format_path(path: Iterable) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("<") and part.endswith(">"):
            continue  # a pydantic union tag, not a YAML key
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean(path: Iterable) -> tuple:
    return tuple(
        p for p in path if not (isinstance(p, str) and p.startswith("<") and p.endswith(">"))
    )


def _line(lines: dict[tuple, int], path: Iterable) -> int | None:
    key = _clean(path)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return lines.get(())


def _problem(lines: dict[tuple, int], path: Iterable, message: str) -> Problem:
    return Problem(format_path(path), message, _line(lines, path))


def _index_lines(node: yaml.Node, path: tuple, lines: dict, problems: list[Problem]) -> None:
    """Record the line of every YAML path; report keys given twice (YAML keeps the last)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(
                        format_path((*path, key)),
                        f"`{key}` is given twice (lines {seen[key]} and {line}); YAML would "
                        "silently keep only the second",
                        line,
                    )
                )
            seen[key] = line
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, problems)


def _kind_problems(data: dict, lines: dict) -> list[Problem]:
    """Conditions with no kind key or several, said plainly (pydantic's union errors are not)."""
    problems: list[Problem] = []

    def visit(value: Any, path: tuple) -> None:
        if not isinstance(value, dict):
            if value is None or isinstance(value, str | int | float | bool | list):
                problems.append(
                    _problem(
                        lines,
                        path,
                        "expected a condition (a mapping with one of "
                        f"{', '.join(CONDITION_KINDS)}), got {_describe(value)}",
                    )
                )
            return
        kinds = [key for key in value if key in CONDITION_KINDS]
        if not kinds:
            close = [get_close_matches(str(k), CONDITION_KINDS, n=1) for k in value]
            hints = [
                f"`{k}` (did you mean `{c[0]}`?)" for k, c in zip(value, close, strict=True) if c
            ]
            hint = f"; {', '.join(hints)}" if hints else ""
            problems.append(
                _problem(
                    lines,
                    path,
                    f"a condition needs one of {', '.join(CONDITION_KINDS)}{hint}",
                )
            )
            return
        if len(kinds) > 1:
            problems.append(
                _problem(
                    lines,
                    path,
                    f"one condition says both {' and '.join(f'`{k}`' for k in kinds)}: split it "
                    "into separate conditions under `all:` or `any:`",
                )
            )
            return
        kind = kinds[0]
        if kind in ("all", "any") and isinstance(value[kind], list):
            for index, item in enumerate(value[kind]):
                visit(item, (*path, kind, index))
        elif kind == "not":
            visit(value["not"], (*path, "not"))
        elif kind == "score" and isinstance(value.get("among"), dict):
            visit(value["among"], (*path, "among"))

    segments = data.get("segments")
    if isinstance(segments, dict):
        for name, definition in segments.items():
            if isinstance(definition, dict):
                for key in ("when", "fallback"):
                    if key in definition and (key == "when" or definition[key] is not None):
                        visit(definition[key], ("segments", name, key))
    return problems


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"


def _pydantic_problems(error: ValidationError, lines: dict) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = item["loc"]
        kind = item["type"]
        message = item["msg"]
        if kind == "extra_forbidden":
            field = str(loc[-1])
            close = get_close_matches(field, ALL_FIELD_NAMES, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            message = f"unknown field `{field}`{hint}"
        elif kind == "missing":
            message = f"`{loc[-1]}` is required"
            problems.append(_problem(lines, loc[:-1], f"{message} here"))
            continue
        elif kind in ("value_error", "assertion_error"):
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        elif kind == "literal_error":
            message = (
                f"{item['input']!r} is not allowed: {message.replace('Input should be', 'use')}"
            )
        elif kind == "string_pattern_mismatch" and loc[-1:] == ("[key]",):
            loc = loc[:-1]
            message = (
                f"segment name {loc[-1]!r} is not allowed: use lower case letters, digits and _ "
                "starting with a letter, e.g. browsed_no_purchase_7d"
            )
        elif kind == "too_short":
            message = "must not be empty"
        else:
            message = f"{message} (got {_describe(item.get('input'))})"
        problems.append(_problem(lines, loc, message))
    # One problem per place is enough; a union can report the same miss several ways.
    unique: dict[tuple[str, str], Problem] = {}
    for problem in problems:
        unique.setdefault((problem.path, problem.message), problem)
    return list(unique.values())


# --- Whole-file checks -------------------------------------------------------------------------


def _conditions(condition: Any, path: tuple):
    """(condition model, path) of a condition tree, parents first."""
    yield condition, path
    if isinstance(condition, AllCondition):
        for index, child in enumerate(condition.all):
            yield from _conditions(child, (*path, "all", index))
    elif isinstance(condition, AnyCondition):
        for index, child in enumerate(condition.any):
            yield from _conditions(child, (*path, "any", index))
    elif isinstance(condition, NotCondition):
        yield from _conditions(condition.not_, (*path, "not"))
    elif isinstance(condition, ScoreCondition) and condition.among is not None:
        yield from _conditions(condition.among, (*path, "among"))


class _Checks:
    def __init__(self, document: SegmentFile, lines: dict, known: frozenset, scores: bool):
        self.document = document
        self.lines = lines
        self.known = known
        self.scores_available = scores
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.order: list[str] = []

    def run(self) -> None:
        segments = self.document.segments
        references: dict[str, list[tuple[str, tuple]]] = {name: [] for name in segments}
        for name, definition in segments.items():
            for part in ("when", "fallback"):
                condition = getattr(definition, part)
                if condition is None:
                    continue
                for item, path in _conditions(condition, ("segments", name, part)):
                    self._check_item(item, path, part)
                    if isinstance(item, SegmentReference):
                        references[name].append((item.segment, path))
            self._check_scores(name, definition)
        for refs in references.values():
            for target, path in refs:
                if target not in segments:
                    close = get_close_matches(target, segments, n=1)
                    hint = f" (did you mean `{close[0]}`?)" if close else ""
                    self.errors.append(
                        _problem(
                            self.lines, (*path, "segment"), f"no segment named `{target}`{hint}"
                        )
                    )
        self._order(references)

    def _check_item(self, item: Any, path: tuple, part: str) -> None:
        if isinstance(item, EventCondition):
            self._check_events(item.event, (*path, "event"))
        elif isinstance(item, SequenceCondition):
            for step in ("first", "then", "then_not"):
                value = getattr(item.sequence, step)
                if value is not None:
                    self._check_events(value.event, (*path, "sequence", step, "event"))
        elif isinstance(item, ScoreCondition | SendWindowCondition) and part == "fallback":
            self.errors.append(
                _problem(
                    self.lines,
                    path,
                    "a fallback is used when no model scores are available, so it cannot use "
                    "model scores itself",
                )
            )

    def _check_events(self, value: str | list[str] | None, path: tuple) -> None:
        if value is None:
            return
        names = [value] if isinstance(value, str) else value
        for index, name in enumerate(names):
            if name in self.known:
                continue
            item_path = path if isinstance(value, str) else (*path, index)
            by_case = {known.lower().replace("_", " "): known for known in self.known}
            close = (
                [by_case[name.lower().replace("_", " ")]]
                if name.lower().replace("_", " ") in by_case
                else get_close_matches(name, sorted(self.known), n=1, cutoff=0.6)
            )
            hint = f" Did you mean `{close[0]}`?" if close else ""
            self.warnings.append(
                _problem(
                    self.lines,
                    item_path,
                    f"no event named `{name}` is known (not a canonical event, not seen in the "
                    f"event store), so this condition may never match.{hint}",
                )
            )

    def _check_scores(self, name: str, definition: Any) -> None:
        if self.scores_available or definition.fallback is not None:
            return
        for item, path in _conditions(definition.when, ("segments", name, "when")):
            if isinstance(item, ScoreCondition | SendWindowCondition):
                what = (
                    f"the model score `{item.score}`"
                    if isinstance(item, ScoreCondition)
                    else "the model's best send window"
                )
                self.errors.append(
                    _problem(
                        self.lines,
                        path,
                        f"uses {what}, but no model scores are available (no model registered, "
                        "no scores given) and the segment has no `fallback`: add a fallback "
                        "rule or supply scores",
                    )
                )

    def _order(self, references: dict[str, list[tuple[str, tuple]]]) -> None:
        """Dependency order; a reference loop is an error at the reference that closes it."""
        state: dict[str, int] = {}  # 1: visiting, 2: done
        stack: list[str] = []
        reported: set[frozenset] = set()

        def visit(name: str) -> None:
            state[name] = 1
            stack.append(name)
            for target, path in references.get(name, []):
                if target not in references:
                    continue
                if state.get(target) == 1:
                    loop = [*stack[stack.index(target) :], target]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        self.errors.append(
                            _problem(
                                self.lines,
                                (*path, "segment"),
                                "segments refer to each other in a loop ("
                                + " -> ".join(loop)
                                + "), so membership could never be decided",
                            )
                        )
                elif state.get(target) is None:
                    visit(target)
            stack.pop()
            state[name] = 2
            self.order.append(name)

        for name in references:
            if name not in state:
                visit(name)


# --- Compilation to ir -------------------------------------------------------------------------

_COUNT_OPS = {"at_least": ">=", "at_most": "<="}
_SCORE_OPS = {"above": ">", "at_least": ">=", "below": "<", "at_most": "<="}
_SCORE_WORDS = {">": "above", ">=": "at least", "<": "below", "<=": "at most"}
_FILTER_OPS = {
    "not_": "ne",
    "in_": "in",
    "not_in": "not_in",
    "at_least": "ge",
    "at_most": "le",
    "above": "gt",
    "below": "lt",
    "exists": "exists",
}
_FILTER_WORDS = {
    "eq": "=",
    "ne": "≠",
    "in": "in",
    "not_in": "not in",
    "ge": "≥",
    "le": "≤",
    "gt": ">",
    "lt": "<",
}


class _CompileError(ValueError):
    pass


class _Compiler:
    def __init__(self, document: SegmentFile, scores_available: bool, lines: dict):
        self.document = document
        self.scores_available = scores_available
        self.lines = lines
        self.done: dict[str, Segment] = {}
        self.problems: list[Problem] = []

    def subset(self, names: Iterable[str]) -> SegmentLibrary:
        """Only these segments and the segments they refer to (unknown names: KeyError)."""
        wanted: set[str] = set()
        for name in names:
            wanted.add(self.segment(name).name)
            for node in ir.walk(self.segments[name].expression):
                if isinstance(node, ir.Ref):
                    wanted.add(node.name)
        return replace(self, segments={n: s for n, s in self.segments.items() if n in wanted})

    def segment(self, name: str) -> Segment:
        if name in self.done:
            return self.done[name]
        definition = self.document.segments[name]
        use_fallback = not self.scores_available and definition.fallback is not None
        part = "fallback" if use_fallback else "when"
        condition = definition.fallback if use_fallback else definition.when
        expression = self.condition(condition, ("segments", name, part))
        segment = Segment(
            name=name,
            description=definition.description,
            tags=tuple(definition.tags),
            expression=expression,
            uses_fallback=use_fallback,
            uses_scores=ir.uses_scores(expression),
        )
        self.done[name] = segment
        return segment

    def condition(self, c: Any, path: tuple) -> ir.Node:
        p = format_path(path)
        if isinstance(c, AllCondition):
            children = tuple(self.condition(x, (*path, "all", i)) for i, x in enumerate(c.all))
            return ir.All(children, "all of", p)
        if isinstance(c, AnyCondition):
            children = tuple(self.condition(x, (*path, "any", i)) for i, x in enumerate(c.any))
            return ir.Any_(children, "any of", p)
        if isinstance(c, NotCondition):
            return ir.Not(self.condition(c.not_, (*path, "not")), "not", p)
        if isinstance(c, SegmentReference):
            return ir.Ref(c.segment, self.segment(c.segment).expression, p)
        try:
            if isinstance(c, EventCondition):
                return self._event(c, path)
            if isinstance(c, SequenceCondition):
                return self._sequence(c, path)
            if isinstance(c, ProfileCondition):
                return self._profile(c, p)
            if isinstance(c, SubscriptionCondition):
                return _subscription(c.subscription, c.state, p)
            if isinstance(c, ScoreCondition):
                return self._score(c, path)
            if isinstance(c, SendWindowCondition):
                hours = c.send_window.hours_of_week()
                return ir.Leaf(
                    ir.ScoreTest("best_hour_of_week", "in", hours),
                    f"best send window in {_window_words(c.send_window)}",
                    p,
                )
        except _CompileError as error:
            self.problems.append(_problem(self.lines, path, str(error)))
            return ir.Const(False, "invalid", p)
        raise TypeError(f"unexpected condition {c!r}")  # pragma: no cover

    def _event(self, c: EventCondition, path: tuple) -> ir.Node:
        p = format_path(path)
        event_filter = _filter(c.event, c.where, path)
        start, end = _window(c)
        at_least = c.at_least if c.at_least is not None or c.at_most is not None else 1
        leaves = []
        for op, bound in ((">=", at_least), ("<=", c.at_most)):
            if bound is None:
                continue
            test = ir.Tally(event_filter, start, end, "count", op, bound)
            leaves.append(ir.Leaf(test, _tally_label(test), p))
        if len(leaves) == 1:
            return leaves[0]
        return ir.All(tuple(leaves), "all of", p)

    def _sequence(self, c: SequenceCondition, path: tuple) -> ir.Node:
        s = c.sequence
        follow = s.then if s.then is not None else s.then_not
        follow_key = "then" if s.then is not None else "then_not"
        test = ir.Sequence(
            first=_filter(s.first.event, s.first.where, (*path, "sequence", "first")),
            within=ir.duration_us(s.within) if s.within is not None else None,
            then=_filter(follow.event, follow.where, (*path, "sequence", follow_key)),
            horizon=ir.duration_us(follow.within) if follow.within is not None else None,
            negated=s.then_not is not None,
            wait=ir.duration_us(s.effective_wait),
        )
        return ir.Leaf(test, _sequence_label(test), format_path(path))

    def _profile(self, c: ProfileCondition, p: str) -> ir.Node:
        metric = c.profile
        if metric in ("lifetime_orders", "lifetime_revenue"):
            orders = ir.EventFilter(frozenset({ir.ORDER}))
            measure = "count" if metric == "lifetime_orders" else "revenue"
            leaves = []
            for op, bound in ((">=", c.at_least), ("<=", c.at_most)):
                if bound is None:
                    continue
                threshold = int(bound) if measure == "count" else ir.revenue_units(bound)
                test = ir.Tally(orders, None, 0, measure, op, threshold)
                words = "orders" if measure == "count" else "revenue"
                amount = int(bound) if measure == "count" else f"{bound:g}"
                label = f"lifetime {words} {_SCORE_WORDS[op]} {amount}"
                leaves.append(ir.Leaf(test, label, p))
            return leaves[0] if len(leaves) == 1 else ir.All(tuple(leaves), "all of", p)
        if metric.endswith("_order"):
            what = ir.EventFilter(frozenset({ir.ORDER}))
            noun = "order"
        else:
            what = ir.EventFilter(None, ir.NOT_ACTIVITY)
            noun = "seen"
        first = metric.startswith("first")
        duration = c.within if c.within is not None else c.older_than
        d = ir.duration_us(duration)
        words = describe_duration(duration)
        ever = ir.Tally(what, None, 0, "count", ">=", 1)
        before = ir.Tally(what, None, d, "count", ">=", 1)  # something more than d ago
        recent = ir.Tally(what, d, 0, "count", ">=", 1)  # something in the last d
        title = f"{'first' if first else 'last'} {noun}"
        if first and c.within is not None:
            label = f"{title} in the last {words}"
            return ir.All(
                (
                    ir.Leaf(ever, _tally_label(ever), p),
                    ir.Not(ir.Leaf(before, _tally_label(before), p), "not", p),
                ),
                label,
                p,
            )
        if first:
            return ir.Leaf(before, f"{title} more than {words} ago", p)
        if c.within is not None:
            return ir.Leaf(recent, f"{title} in the last {words}", p)
        return ir.Not(ir.Leaf(recent, _tally_label(recent), p), f"{title} more than {words} ago", p)

    def _score(self, c: ScoreCondition, path: tuple) -> ir.Node:
        p = format_path(path)
        if c.top_percent is not None:
            population = self.condition(c.among, (*path, "among")) if c.among else None
            test = ir.ScoreTest(c.score, "top", float(c.top_percent), p, population)
            among = f" among: {_short(population)}" if population is not None else ""
            leaf = ir.Leaf(test, f"top {c.top_percent:g}% by {c.score}{among}", p)
            if population is None:
                return leaf
            return ir.All((population, leaf), f"top {c.top_percent:g}% by {c.score}{among}", p)
        for key, op in _SCORE_OPS.items():
            value = getattr(c, key)
            if value is not None:
                if isinstance(value, float | int) and not math.isfinite(value):
                    raise _CompileError("score bounds must be finite numbers")
                shown = value if isinstance(value, str) else f"{value:g}"
                test = ir.ScoreTest(c.score, op, value if isinstance(value, str) else float(value))
                return ir.Leaf(test, f"{c.score} {_SCORE_WORDS[op]} {shown}", p)
        raise _CompileError("no comparison")  # pragma: no cover  (schema guarantees one)


def _short(node: ir.Node) -> str:
    return node.label if not isinstance(node, ir.All | ir.Any_) else f"{node.label} (...)"


def _window(c: EventCondition) -> tuple[int | None, int]:
    if c.within is not None:
        return ir.duration_us(c.within), 0
    if c.between is not None:
        return ir.duration_us(c.between.from_), ir.duration_us(c.between.to)
    if c.before is not None:
        return None, ir.duration_us(c.before)
    return None, 0


def window_words(start: int | None, end: int) -> str:
    from datetime import timedelta

    def words(us: int) -> str:
        return describe_duration(timedelta(microseconds=us))

    if start is None and end == 0:
        return "ever"
    if start is None:
        return f"more than {words(end)} ago"
    if end == 0:
        return f"in the last {words(start)}"
    return f"between {words(start)} and {words(end)} ago"


def _tally_label(test: ir.Tally) -> str:
    what = test.filter.names() + _where_words(test.filter)
    when = window_words(test.start, test.end)
    if test.measure == "revenue":
        amount = f"{test.threshold / ir.REVENUE_UNITS:g}"
        return f"revenue of {what} {_SCORE_WORDS[test.op]} {amount} {when}"
    if test.op == "<=" and test.threshold == 0:
        return f"no {what} {when}"
    if test.op == ">=" and test.threshold == 1:
        return f"{what} {when}"
    times = "time" if test.threshold == 1 else "times"
    return f"{what} {_SCORE_WORDS[test.op]} {test.threshold} {times} {when}"


def _sequence_label(test: ir.Sequence) -> str:
    first = test.first.names() + _where_words(test.first)
    then = test.then.names() + _where_words(test.then)
    when = window_words(test.within, 0) if test.within is not None else "at any time"
    from datetime import timedelta

    horizon = (
        f"within {describe_duration(timedelta(microseconds=test.horizon))}"
        if test.horizon is not None
        else "since"
    )
    if not test.negated:
        return f"{first} {when}, then {then} {horizon}"
    wait = (
        f" (counts after waiting {describe_duration(timedelta(microseconds=test.wait))})"
        if test.wait
        else ""
    )
    return f"{first} {when}, then no {then} {horizon}{wait}"


def _where_words(event_filter: ir.EventFilter) -> str:
    if not event_filter.predicates:
        return ""
    parts = []
    for predicate in event_filter.predicates:
        name = predicate.field.removeprefix("properties.")
        if predicate.op == "exists":
            parts.append(f"{name} {'present' if predicate.value else 'missing'}")
        elif isinstance(predicate.value, tuple):
            shown = ", ".join(str(v) for v in predicate.value)
            parts.append(f"{name} {_FILTER_WORDS[predicate.op]} ({shown})")
        else:
            parts.append(f"{name} {_FILTER_WORDS[predicate.op]} {predicate.value}")
    return " with " + " and ".join(parts)


def _window_words(window: Any) -> str:
    days = ", ".join(window.days) if window.days else "any day"
    hours = f" {window.hours[0]:02d}:00-{window.hours[1]:02d}:59 UTC" if window.hours else ""
    return days + hours


def _filter(event: str | list[str] | None, where: dict | None, path: tuple) -> ir.EventFilter:
    events = None
    if event is not None:
        events = frozenset([event] if isinstance(event, str) else event)
    predicates = []
    for key, value in (where or {}).items():
        if isinstance(value, FilterOperators):
            for attribute, op in _FILTER_OPS.items():
                operand = getattr(value, attribute)
                if operand is not None:
                    predicates.append(ir.Predicate(key, op, _operand(key, op, operand)))
        elif isinstance(value, list):
            predicates.append(ir.Predicate(key, "in", _operand(key, "in", value)))
        else:
            predicates.append(ir.Predicate(key, "eq", _operand(key, "eq", value)))
    return ir.EventFilter(events, frozenset(), tuple(predicates))


def _operand(key: str, op: str, value: Any) -> Any:
    if op == "exists":
        return bool(value)
    if isinstance(value, list):
        return tuple(_operand(key, "eq", v) for v in value)
    if op in ("ge", "le", "gt", "lt"):
        if key in TEXT_FILTER_COLUMNS:
            raise _CompileError(
                f"`{key}` is text: compare it with a value or a list, not a number bound"
            )
        return _number(value)
    if key in TEXT_FILTER_COLUMNS:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if key in NUMBER_FILTER_COLUMNS:
        if isinstance(value, str | bool):
            raise _CompileError(f"`{key}` is a number: compare it with a number, got {value!r}")
        return _number(value)
    if isinstance(value, bool | str):
        return value
    return _number(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _CompileError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _CompileError(f"{value!r} is not a finite number")
    return float(value)


# Subscription states compile to tallies and sequences of the contract's events.
def _subscription(channel: str, state: str, p: str) -> ir.Node:
    def leaf(test: ir.Test, label: str) -> ir.Leaf:
        return ir.Leaf(test, label, p)

    def ever(event: str) -> ir.Tally:
        return ir.Tally(ir.EventFilter(frozenset({event})), None, 0, "count", ">=", 1)

    if channel == "sms":
        opted_out = leaf(ever("SMS Opted Out"), "opted out of SMS (SMS Opted Out)")
        if state == "unsubscribed":
            return opted_out
        phone = ir.Tally(
            ir.EventFilter(None, frozenset(), (ir.Predicate("phone", "exists", True),)),
            None,
            0,
            "count",
            ">=",
            1,
        )
        return ir.All(
            (leaf(phone, "has a phone number"), ir.Not(opted_out, "not", p)),
            "subscribed to SMS",
            p,
        )
    unsubscribed = leaf(ever("Unsubscribed"), "unsubscribed from email (Unsubscribed)")
    complained = leaf(ever("Email Marked as Spam"), "marked an email as spam")
    bounced = leaf(
        ir.Sequence(
            first=ir.EventFilter(frozenset({"Email Bounced"})),
            within=None,
            then=ir.EventFilter(
                frozenset({"Email Delivered", "Email Opened", "Email Link Clicked"})
            ),
            horizon=None,
            negated=True,
            wait=0,
        ),
        "an email bounced and none was delivered, opened or clicked since",
    )
    if state == "unsubscribed":
        return unsubscribed
    if state == "complained":
        return complained
    if state == "bounced":
        return bounced
    email = ir.Tally(
        ir.EventFilter(None, frozenset(), (ir.Predicate("email", "exists", True),)),
        None,
        0,
        "count",
        ">=",
        1,
    )
    return ir.All(
        (
            leaf(email, "has an email address"),
            ir.Not(
                ir.Any_((unsubscribed, complained, bounced), "suppressed", p),
                "not suppressed",
                p,
            ),
        ),
        "subscribed to email",
        p,
    )


__all__ = [
    "DEFAULT_LIBRARY",
    "KNOWN_EVENTS",
    "SCORE_NAMES",
    "Problem",
    "Segment",
    "SegmentDefinitionError",
    "SegmentLibrary",
    "load_library",
    "parse_library",
]
