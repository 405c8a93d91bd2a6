"""The segment definition schema (version 1): what a segments YAML file may say.

A file is ``version: 1`` plus ``segments:``, a mapping from a public segment name to its
definition (``description``, ``tags``, ``when`` and an optional ``fallback``). A condition is a
mapping with exactly one *kind key* saying what it tests:

- ``event``        did / did not perform an event (with property filters) N times in a window
- ``sequence``     performed A and then (not) B within a time
- ``profile``      lifetime orders or revenue, first / last seen, first / last order
- ``subscription`` email or SMS subscription state
- ``score``        a model score above / below a value or another score, or in the top k percent
- ``send_window``  the model's best hour of the week falls on given days and hours
- ``all`` / ``any`` / ``not`` / ``segment``   composition and references to other segments

These pydantic models check shape and types (unknown fields are errors); ``library.py`` adds
the checks that need the whole file (references, cycles, event names, model availability) and
turns every problem into the YAML path and a message a marketer understands.
``docs/segments.md`` documents the same schema for people.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

# --- Durations -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_UNIT_NAMES = {"w": "week", "d": "day", "h": "hour", "m": "minute", "s": "second"}


def parse_duration(value: Any, *, allow_zero: bool = False) -> timedelta:
    """'7d', '24h', '90m', '1d12h' -> timedelta; a bare number, a negative or zero is an error."""
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, bool | int | float):
        raise ValueError(
            f"{value!r} has no unit: write a number followed by w, d, h, m or s, e.g. 7d or 24h"
        )
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"{value!r} is negative: a time window must be positive, e.g. 7d")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
            raise ValueError(
                f"{value!r} is not a duration: write a number followed by w, d, h, m or s, "
                "e.g. 7d, 24h or 1d12h"
            )
        duration = timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))
    else:
        raise ValueError(f"expected a duration such as 7d or 24h, got {type(value).__name__}")
    if duration < timedelta(0):
        raise ValueError(f"{value!r} is negative: a time window must be positive, e.g. 7d")
    if duration == timedelta(0) and not allow_zero:
        raise ValueError(f"{value!r} is zero: a time window must be longer than zero")
    return duration


def format_duration(duration: timedelta) -> str:
    """timedelta -> the YAML spelling ('7d', '1d12h')."""
    seconds = int(duration.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def describe_duration(duration: timedelta) -> str:
    """timedelta -> words for explanations ('7 days', '1 day 12 hours')."""
    seconds = int(duration.total_seconds())
    words = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            words.append(f"{count} {_UNIT_NAMES[unit]}{'s' if count != 1 else ''}")
    return " ".join(words) or "0 seconds"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
WaitDuration = Annotated[
    timedelta,
    BeforeValidator(lambda value: parse_duration(value, allow_zero=True)),
    PlainSerializer(format_duration, return_type=str),
]

# --- Vocabulary --------------------------------------------------------------------------------

SEGMENT_NAME = r"^[a-z][a-z0-9_]*$"
SegmentName = Annotated[str, Field(pattern=SEGMENT_NAME)]

# Canonical event columns a `where` filter may name directly; anything else is properties.<key>.
TEXT_FILTER_COLUMNS = (
    "channel",
    "category",
    "product_id",
    "order_id",
    "currency",
    "campaign_id",
    "send_id",
    "type",
    "user_id",
    "anonymous_id",
    "email",
    "phone",
    "device_id",
)
NUMBER_FILTER_COLUMNS = ("revenue",)
FILTER_COLUMNS = TEXT_FILTER_COLUMNS + NUMBER_FILTER_COLUMNS
_PROPERTY_KEY = re.compile(r"^properties(\.[A-Za-z0-9_\-]+)+$")

SCORE_NAMES = ("p_convert", "p_engage_email", "p_engage_sms", "p_engage_push")
ScoreName = Literal["p_convert", "p_engage_email", "p_engage_sms", "p_engage_push"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

Scalar = str | bool | int | float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- Property filters --------------------------------------------------------------------------


class FilterOperators(_Model):
    """Operators of one `where` field; all given must hold."""

    not_: Scalar | None = Field(None, alias="not", description="differs from (or is missing)")
    in_: list[Scalar] | None = Field(None, alias="in", description="equals one of")
    not_in: list[Scalar] | None = Field(None, description="equals none of (or is missing)")
    at_least: float | None = Field(None, description="a number >= this")
    at_most: float | None = Field(None, description="a number <= this")
    above: float | None = Field(None, description="a number > this")
    below: float | None = Field(None, description="a number < this")
    exists: bool | None = Field(None, description="present (true) or missing (false)")

    @model_validator(mode="after")
    def _some_operator(self) -> FilterOperators:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "give an operator: not, in, not_in, at_least, at_most, above, below or exists"
            )
        return self


FilterValue = Scalar | list[Scalar] | FilterOperators
EventNames = str | list[str]


def _check_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    if where is None:
        return None
    if not where:
        raise ValueError("`where` is empty: remove it or name a field to filter on")
    for key, value in where.items():
        if key in FILTER_COLUMNS or _PROPERTY_KEY.match(key):
            if isinstance(value, list) and not value:
                raise ValueError(f"`where.{key}` is an empty list: it could never match")
            continue
        from difflib import get_close_matches

        close = get_close_matches(key, FILTER_COLUMNS, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise ValueError(
            f"cannot filter on `{key}`{hint}: use an event column ({', '.join(FILTER_COLUMNS)}) "
            f"or a property as `properties.{key}`"
        )
    return where


def _check_event_names(value: Any) -> Any:
    names = [value] if isinstance(value, str) else value
    if isinstance(names, list):
        if not names:
            raise ValueError("the event list is empty")
        for name in names:
            if isinstance(name, str) and not name.strip():
                raise ValueError("an event name is empty")
    return value


# --- Conditions --------------------------------------------------------------------------------


class Between(_Model):
    """A window between two times relative to now: from 30d (ago) to 7d (ago)."""

    from_: Duration = Field(alias="from", description="the older edge, e.g. 30d (ago)")
    to: Duration = Field(description="the newer edge, e.g. 7d (ago)")

    @model_validator(mode="after")
    def _ordered(self) -> Between:
        if self.from_ <= self.to:
            raise ValueError(
                f"`from` ({format_duration(self.from_)} ago) must be further back than `to` "
                f"({format_duration(self.to)} ago)"
            )
        return self


class EventCondition(_Model):
    """Performed an event (or did not) a number of times within a window.

    No window means ever; ``within: 7d`` means in the last 7 days, (now-7d, now];
    ``between: {from: 30d, to: 7d}`` means (now-30d, now-7d]; ``before: 30d`` means more than
    30 days ago, (-inf, now-30d]. No count means at least once; ``at_most: 0`` means did not.
    """

    event: Annotated[EventNames | None, BeforeValidator(_check_event_names)] = Field(
        None, description="event name or list of names; omitted: any event"
    )
    where: dict[str, FilterValue] | None = Field(None, description="property filters (all hold)")
    at_least: int | None = Field(None, ge=0, description="at least this many times")
    at_most: int | None = Field(None, ge=0, description="at most this many times (0: did not)")
    within: Duration | None = Field(None, description="in the last ...")
    between: Between | None = None
    before: Duration | None = Field(None, description="more than ... ago")

    @field_validator("where")
    @classmethod
    def _where_fields(cls, where: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_where(where)

    @model_validator(mode="after")
    def _consistent(self) -> EventCondition:
        windows = [n for n in ("within", "between", "before") if getattr(self, n) is not None]
        if len(windows) > 1:
            raise ValueError(f"give one time window, not {' and '.join(windows)}")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(
                f"at_least {self.at_least} is more than at_most {self.at_most}: no one could match"
            )
        if self.at_least == 0 and self.at_most is None:
            raise ValueError("at_least 0 always holds: remove the condition or raise the count")
        return self


class SequenceStep(_Model):
    """The first event of a sequence: which event, with which property filters."""

    event: Annotated[EventNames | None, BeforeValidator(_check_event_names)] = None
    where: dict[str, FilterValue] | None = None

    @field_validator("where")
    @classmethod
    def _where_fields(cls, where: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_where(where)


class FollowUpStep(SequenceStep):
    """The second event of a sequence, looked for within a time after the first."""

    within: Duration | None = Field(
        None, description="looked for within this time after the first event; omitted: since"
    )


class Sequence(_Model):
    first: SequenceStep
    within: Duration | None = Field(
        None, description="the first event happened in the last ...; omitted: ever"
    )
    then: FollowUpStep | None = None
    then_not: FollowUpStep | None = None
    wait: WaitDuration | None = Field(
        None,
        description="then_not only: qualify only once this long has passed after the first "
        "event [default: then_not.within, else 0s]",
    )

    @model_validator(mode="after")
    def _one_follow_up(self) -> Sequence:
        if (self.then is None) == (self.then_not is None):
            raise ValueError("a sequence needs exactly one of `then` or `then_not`")
        if self.wait is not None and self.then is not None:
            raise ValueError("`wait` applies to `then_not` only")
        wait = self.effective_wait
        follow_up = self.then_not.within if self.then_not is not None else None
        if follow_up is not None and wait > follow_up:
            raise ValueError(
                f"`wait` ({format_duration(wait)}) is longer than `then_not.within` "
                f"({format_duration(self.then_not.within)})"
            )
        if self.within is not None and self.then_not is not None and wait >= self.within:
            raise ValueError(
                f"the first event must be within the last {format_duration(self.within)} but "
                f"only counts after waiting {format_duration(wait)}: no one could match; "
                "make `within` longer than the wait"
            )
        return self

    @property
    def effective_wait(self) -> timedelta:
        if self.then_not is None:
            return timedelta(0)
        if self.wait is not None:
            return self.wait
        return self.then_not.within or timedelta(0)


class SequenceCondition(_Model):
    """Performed A, and then (``then``) or then not (``then_not``) B within a time."""

    sequence: Sequence


ProfileMetric = Literal[
    "lifetime_orders", "lifetime_revenue", "first_seen", "last_seen", "first_order", "last_order"
]
_AMOUNT_METRICS = ("lifetime_orders", "lifetime_revenue")


class ProfileCondition(_Model):
    """A profile aggregate: lifetime orders / revenue, or when first / last seen or ordered."""

    profile: ProfileMetric
    at_least: float | None = Field(None, ge=0)
    at_most: float | None = Field(None, ge=0)
    within: Duration | None = Field(None, description="first/last ...: in the last ...")
    older_than: Duration | None = Field(None, description="first/last ...: more than ... ago")

    @model_validator(mode="after")
    def _fits_metric(self) -> ProfileCondition:
        amount = self.at_least is not None or self.at_most is not None
        when = self.within is not None or self.older_than is not None
        if self.profile in _AMOUNT_METRICS:
            if when:
                raise ValueError(
                    f"{self.profile} takes at_least / at_most, not within / older_than"
                )
            if not amount:
                raise ValueError(f"{self.profile} needs at_least and/or at_most")
            if self.profile == "lifetime_orders":
                for bound in (self.at_least, self.at_most):
                    if bound is not None and bound != int(bound):
                        raise ValueError("lifetime_orders counts orders: use a whole number")
            if (
                self.at_least is not None
                and self.at_most is not None
                and self.at_least > self.at_most
            ):
                raise ValueError("at_least is more than at_most: no one could match")
        else:
            if amount:
                raise ValueError(
                    f"{self.profile} takes within / older_than, not at_least / at_most"
                )
            if self.within is not None and self.older_than is not None:
                raise ValueError("give one of within or older_than")
            if not when:
                raise ValueError(f"{self.profile} needs within or older_than")
        return self


SubscriptionState = Literal["subscribed", "unsubscribed", "bounced", "complained"]
_STATES_BY_CHANNEL = {
    "email": ("subscribed", "unsubscribed", "bounced", "complained"),
    "sms": ("subscribed", "unsubscribed"),
}


class SubscriptionCondition(_Model):
    """Subscription state of a channel, from unsubscribe, bounce and complaint events."""

    subscription: Literal["email", "sms"]
    state: SubscriptionState

    @model_validator(mode="after")
    def _state_exists(self) -> SubscriptionCondition:
        allowed = _STATES_BY_CHANNEL[self.subscription]
        if self.state not in allowed:
            raise ValueError(
                f"{self.subscription} has no state {self.state!r} (use one of {', '.join(allowed)})"
            )
        return self


class ScoreCondition(_Model):
    """A model score compared with a number or another score, or in the top k percent."""

    score: ScoreName
    above: float | ScoreName | None = None
    at_least: float | ScoreName | None = None
    below: float | ScoreName | None = None
    at_most: float | ScoreName | None = None
    top_percent: float | None = Field(None, gt=0, le=100)
    among: Condition | None = Field(
        None, description="top_percent only: rank among the profiles matching this condition"
    )

    @model_validator(mode="after")
    def _one_comparison(self) -> ScoreCondition:
        names = ("above", "at_least", "below", "at_most", "top_percent")
        given = [name for name in names if getattr(self, name) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise ValueError(
                "a score condition needs exactly one of above, at_least, below, at_most or "
                f"top_percent{got}"
            )
        if self.among is not None and self.top_percent is None:
            raise ValueError("`among` goes with top_percent")
        other = getattr(self, given[0])
        if other == self.score:
            raise ValueError(f"{self.score} compared with itself")
        return self


class SendWindow(_Model):
    days: list[Weekday] | None = Field(None, description="mon .. sun; omitted: every day")
    hours: tuple[int, int] | None = Field(
        None, description="[from, to] hours of the day, UTC, both included; omitted: all day"
    )

    @model_validator(mode="after")
    def _something(self) -> SendWindow:
        if self.days is None and self.hours is None:
            raise ValueError("give days and/or hours")
        if self.days is not None and not self.days:
            raise ValueError("`days` is empty")
        if self.hours is not None:
            start, end = self.hours
            if not (0 <= start <= 23 and 0 <= end <= 23):
                raise ValueError("hours run from 0 to 23")
        return self

    def hours_of_week(self) -> frozenset[int]:
        """Hours of the week (0 = Monday 00:00 UTC .. 167) inside the window."""
        days = [WEEKDAYS.index(d) for d in self.days] if self.days else range(7)
        if self.hours is None:
            hours = list(range(24))
        else:
            start, end = self.hours  # a window may wrap past midnight: [22, 2]
            hours = (
                list(range(start, end + 1))
                if start <= end
                else list(range(start, 24)) + list(range(0, end + 1))
            )
        return frozenset(day * 24 + hour for day in days for hour in hours)


class SendWindowCondition(_Model):
    """The model's best hour of the week (``best_hour_of_week``) falls in this window."""

    send_window: SendWindow


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Model):
    not_: Condition = Field(alias="not")


class SegmentReference(_Model):
    segment: SegmentName


# Kind key -> model. The kind key of a mapping decides which model validates it.
CONDITION_KINDS: dict[str, type[_Model]] = {
    "all": AllCondition,
    "any": AnyCondition,
    "not": NotCondition,
    "segment": SegmentReference,
    "event": EventCondition,
    "sequence": SequenceCondition,
    "profile": ProfileCondition,
    "subscription": SubscriptionCondition,
    "score": ScoreCondition,
    "send_window": SendWindowCondition,
}
# Tags are wrapped in <> so error locations can drop them (they are not YAML keys).
_TAGS = {kind: f"<{kind}>" for kind in CONDITION_KINDS}
_MODEL_TAGS = {model: _TAGS[kind] for kind, model in CONDITION_KINDS.items()}


def condition_kind(value: Any) -> str | None:
    """The kind key of a raw condition mapping, or None when it has none or several."""
    if isinstance(value, dict):
        kinds = [key for key in value if key in CONDITION_KINDS]
        if len(kinds) == 1:
            # `event` is also a field of sequence steps; a mapping with `event` and no other kind
            # key is an event condition.
            return kinds[0]
        return None
    return None


def _tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value))
    kind = condition_kind(value)
    return _TAGS[kind] if kind else None


Condition = Annotated[
    Annotated[AllCondition, Tag("<all>")]
    | Annotated[AnyCondition, Tag("<any>")]
    | Annotated[NotCondition, Tag("<not>")]
    | Annotated[SegmentReference, Tag("<segment>")]
    | Annotated[EventCondition, Tag("<event>")]
    | Annotated[SequenceCondition, Tag("<sequence>")]
    | Annotated[ProfileCondition, Tag("<profile>")]
    | Annotated[SubscriptionCondition, Tag("<subscription>")]
    | Annotated[ScoreCondition, Tag("<score>")]
    | Annotated[SendWindowCondition, Tag("<send_window>")],
    Discriminator(
        _tag,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs exactly one kind key: "
        + ", ".join(CONDITION_KINDS),
    ),
]


class SegmentDefinition(_Model):
    """One segment: who is in it (``when``) and, for model-based segments, who is in it when
    no model scores are available (``fallback``)."""

    description: str = Field("", description="what the segment is for, in a sentence")
    tags: list[str] = Field(default_factory=list, description="free labels, e.g. deliverability")
    when: Condition
    fallback: Condition | None = Field(
        None, description="used instead of `when` when no model scores are available"
    )


class SegmentFile(_Model):
    """A segments YAML document."""

    version: Literal[1] = Field(description="schema version; this is version 1")
    segments: dict[SegmentName, SegmentDefinition] = Field(min_length=1)


for _model in (ScoreCondition, AllCondition, AnyCondition, NotCondition, SegmentDefinition):
    _model.model_rebuild()

ALL_FIELD_NAMES = sorted(
    {
        (field.alias or name)
        for model in (
            *CONDITION_KINDS.values(),
            FilterOperators,
            Between,
            SequenceStep,
            FollowUpStep,
            Sequence,
            SendWindow,
            SegmentDefinition,
            SegmentFile,
        )
        for name, field in model.model_fields.items()
    }
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a segments file (for editors and other tools)."""
    return SegmentFile.model_json_schema(by_alias=True)
