"""The event contract: Segment Spec messages in, one flat canonical row per event out.

Kairos speaks the Segment Spec (also spoken by RudderStack, Jitsu and Dittofeed). This module
names the message types and canonical events, and turns one decoded message into a
:class:`CanonicalEvent` or raises :class:`RejectedRecord` with a precise reason. It does no I/O;
``features.ingest`` reads files and ``features.store`` writes rows. ``docs/events.md`` is the
user-facing description of the same contract.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, NotRequired, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import phonenumbers

# --- Message shapes (the wire format, as typed dictionaries) -----------------------------------


class Context(TypedDict, total=False):
    traits: dict[str, Any]  # email / phone of the person the message is about
    device: dict[str, Any]  # id, type (ios, android, desktop, mobile_web)
    app: dict[str, Any]  # present on messages sent from a mobile app
    timezone: str


class _Common(TypedDict):
    type: str
    messageId: NotRequired[str]
    timestamp: str  # ISO 8601; an offset other than Z is converted to UTC
    anonymousId: NotRequired[str]
    userId: NotRequired[str]
    context: NotRequired[Context]


class TrackMessage(_Common):
    event: str
    properties: NotRequired[dict[str, Any]]


class IdentifyMessage(_Common):
    traits: NotRequired[dict[str, Any]]


class PageMessage(_Common):
    name: NotRequired[str]
    properties: NotRequired[dict[str, Any]]


class ScreenMessage(PageMessage):
    pass


class AliasMessage(_Common):
    previousId: str


class BatchEnvelope(TypedDict):
    """Segment's ``/v1/batch`` body: messages plus defaults shared by all of them."""

    batch: list[dict[str, Any]]
    context: NotRequired[Context]


MESSAGE_TYPES = ("track", "identify", "page", "screen", "alias")


class Channel(StrEnum):
    WEB = "web"
    APP = "app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


CHANNELS = tuple(c.value for c in Channel)

# Canonical names of the Segment e-commerce and email specs, with the channel each one implies
# (None: taken from properties.channel or the context, web unless sent from an app).
CANONICAL_EVENTS: dict[str, Channel | None] = {
    "Products Searched": None,
    "Product List Viewed": None,
    "Product Viewed": None,
    "Product Added": None,
    "Product Removed": None,
    "Cart Viewed": None,
    "Checkout Started": None,
    "Order Completed": None,
    "Order Cancelled": None,
    "Order Refunded": None,
    "Signed Up": None,
    "Page Viewed": Channel.WEB,
    "Screen Viewed": Channel.APP,
    "Email Sent": Channel.EMAIL,
    "Email Delivered": Channel.EMAIL,
    "Email Opened": Channel.EMAIL,
    "Email Link Clicked": Channel.EMAIL,
    "Email Bounced": Channel.EMAIL,
    "Email Marked as Spam": Channel.EMAIL,
    "Unsubscribed": Channel.EMAIL,
    "SMS Sent": Channel.SMS,
    "SMS Delivered": Channel.SMS,
    "SMS Link Clicked": Channel.SMS,
    "SMS Opted Out": Channel.SMS,
    "Push Notification Sent": Channel.PUSH,
    "Push Notification Received": Channel.PUSH,
    "Push Notification Tapped": Channel.PUSH,
}
# Names a channel-specific event carries whatever properties.channel says.
_CHANNEL_SPECIFIC = {"Email", "SMS", "Push"}

# A message was sent to the person (the denominator of engagement). One send may be logged by
# several of these (Sent, then Delivered or Bounced); ``send_id`` ties them together.
SEND_EVENTS = frozenset(
    {
        "Email Sent",
        "Email Delivered",
        "Email Bounced",
        "SMS Sent",
        "SMS Delivered",
        "Push Notification Sent",
        "Push Notification Received",
    }
)
# ... and the person engaged with it.
ENGAGEMENT_EVENTS = frozenset(
    {"Email Opened", "Email Link Clicked", "SMS Link Clicked", "Push Notification Tapped"}
)

# Event names Segment libraries also emit in snake_case or lower case ("order_completed").
_EVENT_ALIASES = {re.sub(r"[\s_]+", " ", name.lower()): name for name in CANONICAL_EVENTS}

MAX_RECORD_BYTES = 32 * 1024  # Segment's own per-message limit
_EARLIEST = datetime(1970, 1, 1)
_LATEST = datetime(2100, 1, 1)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_APP_DEVICE_TYPES = {"ios", "android", "ipados", "tvos"}


class RejectedRecord(ValueError):
    """A record that cannot become an event; the message is the dead-letter reason."""


@dataclass(frozen=True)
class NormaliseOptions:
    """How ambiguous input is read."""

    # ISO 3166 region used to read phone numbers written without a country code, e.g. "GB".
    phone_region: str | None = None
    # Time zone of timestamps written without an offset (IANA name); Segment sends UTC.
    timezone: str = "UTC"


# --- The canonical row -------------------------------------------------------------------------

# (column, DuckDB type, meaning). The single source of the event store's schema.
EVENT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("message_id", "VARCHAR", "messageId, or a stable hash of the content when absent"),
    ("type", "VARCHAR", "track, identify, page, screen or alias"),
    ("event", "VARCHAR", "canonical event name; page/screen/identify/alias get one too"),
    ("channel", "VARCHAR", "web, app, email, sms or push"),
    ("timestamp", "TIMESTAMP", "when it happened, UTC"),
    ("user_id", "VARCHAR", "userId"),
    ("anonymous_id", "VARCHAR", "anonymousId"),
    ("previous_id", "VARCHAR", "alias: the identifier being aliased to userId"),
    ("email", "VARCHAR", "traits.email or context.traits.email, trimmed and lower-cased"),
    ("phone", "VARCHAR", "traits.phone or context.traits.phone in E.164"),
    ("device_id", "VARCHAR", "context.device.id"),
    ("order_id", "VARCHAR", "properties.order_id"),
    ("product_id", "VARCHAR", "properties.product_id or properties.sku"),
    ("category", "VARCHAR", "properties.category, else the first product's category"),
    ("revenue", "DOUBLE", "properties.revenue / total / value, else sum of price x quantity"),
    ("currency", "VARCHAR", "properties.currency"),
    ("send_id", "VARCHAR", "properties.send_id or email_id: ties opens and clicks to a send"),
    ("campaign_id", "VARCHAR", "properties.campaign_id"),
    # JSON text rather than DuckDB's JSON type: validating it again on insert halves ingest speed.
    ("properties", "VARCHAR", "all properties as sent (JSON text)"),
    ("traits", "VARCHAR", "traits (identify) or context.traits (JSON text)"),
    ("warnings", "VARCHAR", "fields that were dropped as invalid, with why; NULL if none"),
)
COLUMN_NAMES = tuple(name for name, _, _ in EVENT_COLUMNS)

CanonicalEvent = tuple  # values in COLUMN_NAMES order; a tuple keeps 10^5 rows/s cheap


# --- Normalisation -----------------------------------------------------------------------------


def normalise_message(message: Any, options: NormaliseOptions | None = None) -> CanonicalEvent:
    """Validate one decoded Segment message and return its canonical row.

    Raises RejectedRecord with the reason when the record cannot be an event. Problems with a
    single optional field (an email that is not an email) drop that field and are listed in the
    row's ``warnings`` instead, so the rest of the event is kept.
    """
    if not isinstance(message, dict):
        raise RejectedRecord(f"expected a JSON object, got {_json_type(message)}")
    options = options or NormaliseOptions()
    warnings: list[str] = []

    kind = message.get("type")
    if kind not in MESSAGE_TYPES:  # the common case is exact; tolerate " Track " too
        if not isinstance(kind, str) or not kind:
            raise RejectedRecord("missing message type (expected one of track, identify, ...)")
        kind = kind.strip().lower()
    if kind not in MESSAGE_TYPES:
        raise RejectedRecord(
            f"unknown message type {message.get('type')!r} (expected one of "
            f"{', '.join(MESSAGE_TYPES)})"
        )

    timestamp = parse_timestamp(
        message.get("timestamp", message.get("originalTimestamp")), timezone=options.timezone
    )

    context = _object_field(message, "context")
    properties = _object_field(message, "properties")
    traits = _object_field(message, "traits") if kind == "identify" else None
    if traits is None:
        traits = _object_field(context, "traits", prefix="context.")
    device = _object_field(context, "device", prefix="context.")

    user_id = identifier_text(message.get("userId"), "userId")
    anonymous_id = identifier_text(message.get("anonymousId"), "anonymousId")
    device_id = identifier_text(device.get("id"), "context.device.id")
    previous_id = None
    if kind == "alias":
        previous_id = identifier_text(message.get("previousId"), "previousId")
        if previous_id is None or user_id is None:
            raise RejectedRecord("alias needs both previousId and userId")

    email = _email(traits.get("email", properties.get("email")), warnings)
    phone = _phone(traits.get("phone", properties.get("phone")), options.phone_region, warnings)
    if not (user_id or anonymous_id or email or phone or device_id):
        raise RejectedRecord(
            "no identifier: needs userId, anonymousId, an email, a phone or context.device.id"
        )

    event = _event_name(kind, message)
    channel = _channel(kind, event, properties, context, device, warnings)
    products = properties.get("products")
    first_product = products[0] if isinstance(products, list) and products else {}
    if not isinstance(first_product, dict):
        first_product = {}

    row = (
        _message_id(message),
        kind,
        event,
        channel,
        timestamp,
        user_id,
        anonymous_id,
        previous_id,
        email,
        phone,
        device_id,
        _text(properties.get("order_id")),
        _text(properties.get("product_id", properties.get("sku"))),
        _text(properties.get("category", first_product.get("category"))),
        _revenue(properties, products, warnings),
        _text(properties.get("currency")),
        _text(properties.get("send_id", properties.get("email_id"))),
        _text(properties.get("campaign_id")),
        orjson.dumps(properties).decode() if properties else None,
        orjson.dumps(traits).decode() if traits else None,
        "; ".join(warnings) if warnings else None,
    )
    return row


def parse_timestamp(value: Any, field: str = "timestamp", timezone: str = "UTC") -> datetime:
    """ISO 8601 text or a datetime -> naive UTC datetime; no offset means ``timezone``."""
    if value is None or value == "":
        raise RejectedRecord(f"missing {field}")
    if type(value) is str and value[-1:] == "Z" and len(value) > 10:
        try:  # fast path for what Segment libraries send: 2026-01-05T10:00:00.000Z
            parsed = datetime.fromisoformat(value[:-1])
        except ValueError:
            raise RejectedRecord(f"unparseable {field} {value!r} (expected ISO 8601)") from None
        if parsed.tzinfo is None and _EARLIEST <= parsed < _LATEST:
            return parsed
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RejectedRecord(f"unparseable {field} {value!r} (expected ISO 8601)") from None
    else:
        raise RejectedRecord(f"{field} must be an ISO 8601 string, got {_json_type(value)}")
    if parsed.tzinfo is None and timezone != "UTC":
        parsed = parsed.replace(tzinfo=_zone(timezone))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    if not _EARLIEST <= parsed < _LATEST:
        raise RejectedRecord(f"{field} {value!s} is outside 1970..2100")
    return parsed


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/London)"
        ) from None


@lru_cache(maxsize=1 << 16)
def _normalise_email_text(value: str) -> str | None:
    email = value.strip().lower()
    return email if _EMAIL.match(email) else None


def normalise_email(value: Any) -> str | None:
    """Trimmed, lower-cased address, or None when ``value`` is not an email address."""
    return _normalise_email_text(value) if isinstance(value, str) else None


@lru_cache(maxsize=1 << 16)
def normalise_phone(value: str, region: str | None = None) -> str | None:
    """E.164 form of a phone number, or None when it is not a valid number."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def derive_message_id(message: dict[str, Any]) -> str:
    """A stable id from the content, for records that come without a messageId."""
    digest = hashlib.blake2b(
        orjson.dumps(message, default=str, option=orjson.OPT_SORT_KEYS), digest_size=16
    )
    return "kairos-" + digest.hexdigest()


def canonical_event_name(name: str) -> str:
    """'order_completed' and 'order completed' -> 'Order Completed'; custom names unchanged."""
    if name in CANONICAL_EVENTS:
        return name
    cleaned = name.strip()
    return _EVENT_ALIASES.get(re.sub(r"[\s_]+", " ", cleaned.lower()), cleaned)


# --- Field helpers -----------------------------------------------------------------------------


def _message_id(message: dict[str, Any]) -> str:
    value = message.get("messageId")
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return derive_message_id(message)


def _event_name(kind: str, message: dict[str, Any]) -> str:
    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str) or not event.strip():
            raise RejectedRecord("track message without an event name")
        return canonical_event_name(event)
    return {
        "page": "Page Viewed",
        "screen": "Screen Viewed",
        "identify": "Identify",
        "alias": "Alias",
    }[kind]


def _channel(
    kind: str,
    event: str,
    properties: dict[str, Any],
    context: dict[str, Any],
    device: dict[str, Any],
    warnings: list[str],
) -> str:
    implied = CANONICAL_EVENTS.get(event)
    if implied is not None and event.split(" ", 1)[0] in _CHANNEL_SPECIFIC:
        return implied.value
    stated = properties.get("channel")
    if stated is not None:
        if isinstance(stated, str) and stated.strip().lower() in CHANNELS:
            return stated.strip().lower()
        warnings.append(f"properties.channel {stated!r} is not one of {', '.join(CHANNELS)}")
    if implied is not None:
        return implied.value
    if kind == "screen" or context.get("app"):
        return Channel.APP.value
    device_type = device.get("type")
    if isinstance(device_type, str) and device_type.lower() in _APP_DEVICE_TYPES:
        return Channel.APP.value
    return Channel.WEB.value


def identifier_text(value: Any, field: str) -> str | None:
    """An identifier as trimmed text (12346.0 from a spreadsheet -> "12346"); None if empty."""
    if type(value) is str:
        value = value.strip()
        return value or None
    if value is None:
        return None
    if isinstance(value, bool):
        raise RejectedRecord(f"{field} must be a string, got boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Spreadsheets turn customer ids into floats (12346.0); the id is the integer.
        if value.is_integer():
            return str(int(value))
        if math.isnan(value):
            return None
        return repr(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    raise RejectedRecord(f"{field} must be a string, got {_json_type(value)}")


def _email(value: Any, warnings: list[str]) -> str | None:
    if value is None or value == "":
        return None
    email = normalise_email(value)
    if email is None:
        warnings.append(f"email {value!r} is not an email address; ignored")
    return email


def _phone(value: Any, region: str | None, warnings: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    phone = normalise_phone(value.strip(), region) if isinstance(value, str) else None
    if phone is None:
        hint = "" if region else " (numbers without +country code need --phone-region)"
        warnings.append(f"phone {value!r} is not a valid phone number{hint}; ignored")
    return phone


def _revenue(properties: dict[str, Any], products: Any, warnings: list[str]) -> float | None:
    for key in ("revenue", "total", "value"):
        if key in properties and properties[key] is not None:
            amount = _number(properties[key])
            if amount is None:
                warnings.append(f"properties.{key} {properties[key]!r} is not a number; ignored")
            return amount
    if "price" in properties:
        price = _number(properties.get("price"))
        quantity = _number(properties.get("quantity", 1))
        if price is not None and quantity is not None:
            return price * quantity
    if isinstance(products, list) and products:
        line_totals = [
            _number(p.get("price")) * _number(p.get("quantity", 1))
            for p in products
            if isinstance(p, dict)
            and _number(p.get("price")) is not None
            and _number(p.get("quantity", 1)) is not None
        ]
        return float(sum(line_totals)) if line_totals else None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _text(value: Any) -> str | None:
    if type(value) is str:
        value = value.strip()
        return value or None
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _object_field(container: dict[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
    value = container.get(name)
    if type(value) is dict:
        return value
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RejectedRecord(f"{prefix}{name} must be an object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
