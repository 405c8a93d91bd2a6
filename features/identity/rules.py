"""Identity resolution rules: identifier priorities and limits, shared detection, blocklist.

Rules are data (``features/identity_rules.yaml`` holds the documented defaults). They are
validated on load: unknown keys, unknown identifier types, missing types and bad patterns fail
with the path of the offending key.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IDENTIFIER_TYPES = ("user_id", "email", "phone", "device_id", "anonymous_id")
STRONG_TYPES = ("user_id", "email", "phone")  # name a person; devices and cookies do not
IdentifierType = Literal["user_id", "email", "phone", "device_id", "anonymous_id"]
DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "identity_rules.yaml"

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


class RulesError(ValueError):
    """Identity rules that cannot be used; the message says which key is wrong and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentifierRule(_Strict):
    type: IdentifierType
    limit: int = Field(ge=1, description="most identifiers of this type one profile may hold")


class Blocklist(_Strict):
    any: tuple[str, ...] = ()
    user_id: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    phone: tuple[str, ...] = ()
    device_id: tuple[str, ...] = ()
    anonymous_id: tuple[str, ...] = ()
    email_patterns: tuple[str, ...] = ()
    phone_patterns: tuple[str, ...] = ()

    @field_validator("email_patterns", "phone_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"pattern {pattern!r} is not a regular expression: {error}"
                ) from None
        return patterns


class IdentityRules(_Strict):
    """Validated identity rules. ``IdentityRules()`` is not the default set: use
    :func:`load_rules` (no argument) for the shipped defaults."""

    version: Literal[1] = 1
    identifiers: tuple[IdentifierRule, ...] = tuple(
        IdentifierRule(type=t, limit=limit)
        for t, limit in zip(IDENTIFIER_TYPES, (1, 3, 2, 10, 100), strict=True)
    )
    shared: dict[IdentifierType, int] = Field(default_factory=dict)
    blocklist: Blocklist = Field(default_factory=Blocklist)

    @model_validator(mode="after")
    def _complete(self) -> IdentityRules:
        listed = [rule.type for rule in self.identifiers]
        duplicates = sorted({t for t in listed if listed.count(t) > 1})
        if duplicates:
            raise ValueError(f"identifiers: {', '.join(duplicates)} listed more than once")
        missing = [t for t in IDENTIFIER_TYPES if t not in listed]
        if missing:
            raise ValueError(
                f"identifiers: missing {', '.join(missing)} (list all of "
                f"{', '.join(IDENTIFIER_TYPES)} in priority order)"
            )
        for subject, most in self.shared.items():
            if subject == "user_id":
                raise ValueError("shared.user_id: a userId is one person by definition")
            if most < 1:
                raise ValueError(f"shared.{subject} must be at least 1 person, got {most}")
        return self

    # --- derived views (the engine works on priority ranks 0..4) ---------------------------------

    @cached_property
    def types(self) -> tuple[str, ...]:
        """Identifier types, highest priority first."""
        return tuple(rule.type for rule in self.identifiers)

    @cached_property
    def limits(self) -> tuple[int, ...]:
        return tuple(rule.limit for rule in self.identifiers)

    def rank(self, identifier_type: str) -> int:
        try:
            return self.types.index(identifier_type)
        except ValueError:
            raise RulesError(
                f"unknown identifier type {identifier_type!r} "
                f"(expected one of {', '.join(IDENTIFIER_TYPES)})"
            ) from None

    @cached_property
    def shared_people(self) -> tuple[int | None, ...]:
        """[rank] -> most people an identifier of that type may be seen beside; None: no rule."""
        return tuple(self.shared.get(t) for t in self.types)

    @cached_property
    def strong_ranks(self) -> frozenset[int]:
        """Ranks of the types that name a person (userId, email, phone)."""
        return frozenset(self.rank(t) for t in STRONG_TYPES)

    @cached_property
    def _blocked_values(self) -> tuple[frozenset[str], ...]:
        common = {v.strip().lower() for v in self.blocklist.any}
        return tuple(
            frozenset(common | {v.strip().lower() for v in getattr(self.blocklist, t)})
            for t in self.types
        )

    @cached_property
    def _patterns(self) -> tuple[tuple[re.Pattern[str], ...], ...]:
        by_type = {
            "email": self.blocklist.email_patterns,
            "phone": self.blocklist.phone_patterns,
        }
        return tuple(tuple(re.compile(p) for p in by_type.get(t, ())) for t in self.types)

    def block_reason(self, rank: int, value: str) -> str | None:
        """Why ``value`` (of the type at ``rank``) must never link, or None when it may."""
        text = value.strip().lower()
        if text in self._blocked_values[rank]:
            return "blocklisted value"
        kind = self.types[rank]
        if kind == "email" and not _EMAIL.fullmatch(text):
            return "not an email address"
        if kind == "phone" and not _E164.fullmatch(text):
            return "not an E.164 phone number"
        for pattern in self._patterns[rank]:
            if pattern.fullmatch(text):
                return f"blocklisted pattern {pattern.pattern!r}"
        return None

    def to_json(self) -> str:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str) -> IdentityRules:
        return _validate(orjson.loads(text), "stored identity rules")


def load_rules(path: Path | str | None = None) -> IdentityRules:
    """Read and validate rules from YAML; no path: the shipped defaults."""
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    if not path.exists():
        raise RulesError(f"{path}: no such rules file")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RulesError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise RulesError(
            f"{path}: expected a mapping at the top level, got {type(document).__name__}"
        )
    return _validate(document, str(path))


def _validate(document: dict[str, Any], source: str) -> IdentityRules:
    try:
        return IdentityRules.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {_message(e)}"
            for e in error.errors()
        )
        raise RulesError(f"{source}: invalid identity rules: {problems}") from None


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "literal_error" and error["loc"] and error["loc"][-1] == "type":
        expected = ", ".join(IDENTIFIER_TYPES)
        return f"unknown identifier type {error['input']!r} (expected one of {expected})"
    if error["type"] == "literal_error":
        return f"{error['msg']} (got {error['input']!r})"
    return error["msg"].removeprefix("Value error, ")
