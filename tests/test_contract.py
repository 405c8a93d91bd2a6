"""The event contract: exact normalisation per message type and a precise reason per rejection."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from features.contract import (
    COLUMN_NAMES,
    NormaliseOptions,
    RejectedRecord,
    canonical_event_name,
    normalise_message,
    parse_timestamp,
)


def row(message: dict, **options) -> dict:
    values = normalise_message(message, NormaliseOptions(**options))
    result = dict(zip(COLUMN_NAMES, values, strict=True))
    for key in ("properties", "traits"):
        if result[key] is not None:
            result[key] = orjson.loads(result[key])
    return result


EMPTY = dict.fromkeys(COLUMN_NAMES)

CASES = [
    pytest.param(
        {
            "type": "track",
            "messageId": "m-1",
            "timestamp": "2026-01-05T10:00:00.250+01:00",
            "anonymousId": "anon-1",
            "userId": 42,
            "event": "order_completed",
            "context": {"traits": {"email": "  Ana@Example.COM "}, "device": {"id": "dev-9"}},
            "properties": {
                "order_id": 1001,
                "revenue": "19.90",
                "currency": "GBP",
                "products": [{"product_id": "p1", "category": "mugs"}],
            },
        },
        {
            **EMPTY,
            "message_id": "m-1",
            "type": "track",
            "event": "Order Completed",
            "channel": "web",
            "timestamp": datetime(2026, 1, 5, 9, 0, 0, 250000),
            "user_id": "42",
            "anonymous_id": "anon-1",
            "email": "ana@example.com",
            "device_id": "dev-9",
            "order_id": "1001",
            "category": "mugs",
            "revenue": 19.9,
            "currency": "GBP",
            "properties": {
                "order_id": 1001,
                "revenue": "19.90",
                "currency": "GBP",
                "products": [{"product_id": "p1", "category": "mugs"}],
            },
            "traits": {"email": "  Ana@Example.COM "},
        },
        id="track-order",
    ),
    pytest.param(
        {
            "type": "identify",
            "messageId": "m-2",
            "timestamp": "2026-01-05T10:00:00Z",
            "anonymousId": "anon-1",
            "userId": "u-1",
            "traits": {"email": "ana@example.com", "phone": "07911 123456"},
        },
        {
            **EMPTY,
            "message_id": "m-2",
            "type": "identify",
            "event": "Identify",
            "channel": "web",
            "timestamp": datetime(2026, 1, 5, 10),
            "user_id": "u-1",
            "anonymous_id": "anon-1",
            "email": "ana@example.com",
            "phone": "+447911123456",
            "traits": {"email": "ana@example.com", "phone": "07911 123456"},
        },
        id="identify-with-phone-region",
    ),
    pytest.param(
        {
            "type": "page",
            "messageId": "m-3",
            "timestamp": "2026-01-05T10:00:00Z",
            "anonymousId": "anon-2",
            "name": "Mugs",
            "properties": {"category": "mugs"},
        },
        {
            **EMPTY,
            "message_id": "m-3",
            "type": "page",
            "event": "Page Viewed",
            "channel": "web",
            "timestamp": datetime(2026, 1, 5, 10),
            "anonymous_id": "anon-2",
            "category": "mugs",
            "properties": {"category": "mugs"},
        },
        id="page",
    ),
    pytest.param(
        {
            "type": "screen",
            "messageId": "m-4",
            "timestamp": "2026-01-05T10:00:00Z",
            "userId": "u-1",
            "name": "Home",
        },
        {
            **EMPTY,
            "message_id": "m-4",
            "type": "screen",
            "event": "Screen Viewed",
            "channel": "app",
            "timestamp": datetime(2026, 1, 5, 10),
            "user_id": "u-1",
        },
        id="screen",
    ),
    pytest.param(
        {
            "type": "alias",
            "messageId": "m-5",
            "timestamp": "2026-01-05T10:00:00Z",
            "previousId": "anon-1",
            "userId": "u-1",
        },
        {
            **EMPTY,
            "message_id": "m-5",
            "type": "alias",
            "event": "Alias",
            "channel": "web",
            "timestamp": datetime(2026, 1, 5, 10),
            "user_id": "u-1",
            "previous_id": "anon-1",
        },
        id="alias",
    ),
    pytest.param(
        {
            "type": "track",
            "messageId": "m-6",
            "timestamp": "2026-01-05T10:00:00Z",
            "event": "Email Opened",
            "userId": "u-1",
            "properties": {"send_id": "s-1", "campaign_id": "c-1", "channel": "sms"},
        },
        {
            **EMPTY,
            "message_id": "m-6",
            "type": "track",
            "event": "Email Opened",
            "channel": "email",
            "timestamp": datetime(2026, 1, 5, 10),
            "user_id": "u-1",
            "send_id": "s-1",
            "campaign_id": "c-1",
            "properties": {"send_id": "s-1", "campaign_id": "c-1", "channel": "sms"},
        },
        id="email-event-channel-wins-over-property",
    ),
    pytest.param(
        {
            "type": "track",
            "messageId": "m-7",
            "timestamp": "2026-01-05T10:00:00Z",
            "event": "Product Viewed",
            "anonymousId": "a",
            "context": {"device": {"type": "ios"}},
            "properties": {"price": 2.5, "quantity": 3, "sku": "S-1"},
        },
        {
            **EMPTY,
            "message_id": "m-7",
            "type": "track",
            "event": "Product Viewed",
            "channel": "app",
            "timestamp": datetime(2026, 1, 5, 10),
            "anonymous_id": "a",
            "product_id": "S-1",
            "revenue": 7.5,
            "properties": {"price": 2.5, "quantity": 3, "sku": "S-1"},
        },
        id="app-device-and-price-times-quantity",
    ),
    pytest.param(
        {
            "type": "track",
            "messageId": "m-8",
            "timestamp": "2026-01-05T10:00:00Z",
            "event": "Signed Up",
            "anonymousId": "a",
            "context": {"traits": {"email": "not-an-email"}},
            "properties": {"channel": "fax"},
        },
        {
            **EMPTY,
            "message_id": "m-8",
            "type": "track",
            "event": "Signed Up",
            "channel": "web",
            "timestamp": datetime(2026, 1, 5, 10),
            "anonymous_id": "a",
            "properties": {"channel": "fax"},
            "traits": {"email": "not-an-email"},
            "warnings": "email 'not-an-email' is not an email address; ignored; "
            "properties.channel 'fax' is not one of web, app, email, sms, push",
        },
        id="bad-optional-fields-become-warnings",
    ),
]


@pytest.mark.parametrize(("message", "expected"), CASES)
def test_normalise_exact(message: dict, expected: dict) -> None:
    assert row(message, phone_region="GB") == expected


REJECTIONS = [
    pytest.param([1, 2], "expected a JSON object, got array", id="not-an-object"),
    pytest.param(
        {"timestamp": "2026-01-05T10:00:00Z", "userId": "u"}, "missing message type", id="no-type"
    ),
    pytest.param(
        {"type": "group", "timestamp": "2026-01-05T10:00:00Z", "userId": "u"},
        "unknown message type 'group'",
        id="unknown-type",
    ),
    pytest.param(
        {"type": "track", "event": "X", "userId": "u"}, "missing timestamp", id="no-timestamp"
    ),
    pytest.param(
        {"type": "track", "event": "X", "userId": "u", "timestamp": "yesterday"},
        "unparseable timestamp 'yesterday'",
        id="bad-timestamp",
    ),
    pytest.param(
        {"type": "track", "event": "X", "userId": "u", "timestamp": 1767607200},
        "timestamp must be an ISO 8601 string, got number",
        id="numeric-timestamp",
    ),
    pytest.param(
        {"type": "track", "event": "X", "userId": "u", "timestamp": "1066-10-14T09:00:00Z"},
        "outside 1970..2100",
        id="ancient",
    ),
    pytest.param(
        {"type": "track", "event": "X", "timestamp": "2026-01-05T10:00:00Z"},
        "no identifier",
        id="no-identifier",
    ),
    pytest.param(
        {"type": "track", "userId": "u", "timestamp": "2026-01-05T10:00:00Z"},
        "track message without an event name",
        id="no-event",
    ),
    pytest.param(
        {"type": "alias", "userId": "u", "timestamp": "2026-01-05T10:00:00Z"},
        "alias needs both previousId and userId",
        id="alias-one-side",
    ),
    pytest.param(
        {"type": "track", "event": "X", "userId": True, "timestamp": "2026-01-05T10:00:00Z"},
        "userId must be a string, got boolean",
        id="boolean-id",
    ),
    pytest.param(
        {
            "type": "track",
            "event": "X",
            "userId": "u",
            "properties": [1],
            "timestamp": "2026-01-05T10:00:00Z",
        },
        "properties must be an object, got array",
        id="properties-not-object",
    ),
]


@pytest.mark.parametrize(("message", "reason"), REJECTIONS)
def test_rejections_say_why(message: object, reason: str) -> None:
    with pytest.raises(RejectedRecord, match=reason.replace("(", r"\(").replace(".", r"\.")):
        normalise_message(message)


def test_missing_message_id_gets_a_stable_content_id() -> None:
    message = {"type": "track", "event": "X", "userId": "u", "timestamp": "2026-01-05T10:00:00Z"}
    first = normalise_message(message)[0]
    assert first.startswith("kairos-")
    assert normalise_message(dict(reversed(message.items())))[0] == first
    assert normalise_message({**message, "event": "Y"})[0] != first


@pytest.mark.parametrize(
    ("value", "timezone", "expected"),
    [
        ("2026-01-15T09:00:00", "Europe/London", datetime(2026, 1, 15, 9, 0)),  # GMT
        ("2026-07-01T12:00:00", "Europe/London", datetime(2026, 7, 1, 11, 0)),  # BST
        ("2026-07-01T12:00:00-05:00", "Europe/London", datetime(2026, 7, 1, 17, 0)),
        ("2026-07-01 12:00:00", "UTC", datetime(2026, 7, 1, 12, 0)),
    ],
    ids=["gmt", "bst", "explicit-offset-wins", "space-separator"],
)
def test_timestamps_to_utc(value: str, timezone: str, expected: datetime) -> None:
    assert parse_timestamp(value, timezone=timezone) == expected


def test_unknown_timezone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        parse_timestamp("2026-01-01T00:00:00", timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("order_completed", "Order Completed"),
        ("EMAIL OPENED", "Email Opened"),
        ("  Product Viewed ", "Product Viewed"),
        ("Wishlist Shared", "Wishlist Shared"),
    ],
    ids=["snake", "upper", "padded", "custom-kept"],
)
def test_canonical_event_names(name: str, expected: str) -> None:
    assert canonical_event_name(name) == expected


def test_docs_describe_every_stored_column() -> None:
    from pathlib import Path

    from features.contract import EVENT_COLUMNS

    docs = (Path(__file__).parents[1] / "docs" / "events.md").read_text()
    for name, sql_type, _ in EVENT_COLUMNS:
        assert f"| {name} | {sql_type} |" in docs, f"docs/events.md does not describe {name}"
