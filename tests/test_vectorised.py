"""The vectorised SQL fast path claims a line only when its row equals the reference exactly.

The reference is ``features.contract.normalise_message(orjson.loads(raw))``. Rows are compared
column by column: floats bit for bit, timestamps to the microsecond, and the ``properties`` /
``traits`` JSON texts as parsed JSON (yyjson and orjson format numbers and spacing differently).
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import (
    CANONICAL_EVENTS,
    COLUMN_NAMES,
    NormaliseOptions,
    RejectedRecord,
    normalise_message,
)
from features.vectorised import (
    CLAIMED_SCHEMA,
    PYTHON_WHITESPACE,
    common_shape_rows,
    normalise_lines,
)

_JSON_COLUMNS = {"properties", "traits"}


# --- helpers -----------------------------------------------------------------------------------


def _lines(raws: list[str]) -> pa.Table:
    return pa.table(
        {
            "position": pa.array(range(1, len(raws) + 1), pa.int64()),
            "raw": pa.array(raws, pa.string()),
        }
    )


def _reference(raw: str, options: NormaliseOptions) -> tuple | Exception:
    try:
        return normalise_message(orjson.loads(raw), options)
    except (RejectedRecord, orjson.JSONDecodeError) as error:
        return error


def _same(column: str, expected: Any, got: Any) -> bool:
    if column in _JSON_COLUMNS and expected is not None and got is not None:
        return orjson.loads(expected) == orjson.loads(got)
    if isinstance(expected, float) and isinstance(got, float):
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        return expected == got and math.copysign(1, expected) == math.copysign(1, got)
    return type(expected) is type(got) and expected == got


def check_against_reference(raws: list[str], options: NormaliseOptions) -> tuple[int, int]:
    """Run the fast path on ``raws`` and assert its contract; return (claimed, unclaimed)."""
    events, unclaimed = normalise_lines(_lines(raws), options)
    assert events.schema == CLAIMED_SCHEMA
    claimed_positions = events.column("position").to_pylist()
    unclaimed_positions = unclaimed.column("position").to_pylist()
    # every line exactly once, each side in input order
    assert sorted(claimed_positions + unclaimed_positions) == list(range(1, len(raws) + 1))
    assert claimed_positions == sorted(claimed_positions)
    assert unclaimed_positions == sorted(unclaimed_positions)
    assert unclaimed.column("raw").to_pylist() == [raws[p - 1] for p in unclaimed_positions]
    assert_rows_equal_reference(events, raws, options)
    # The common-shape query, which runs first, is held to the reference on its own too.
    common = common_shape_rows(_lines(raws), options)
    assert common.schema == CLAIMED_SCHEMA
    assert set(common.column("position").to_pylist()) <= set(claimed_positions)
    assert_rows_equal_reference(common, raws, options)
    return len(claimed_positions), len(unclaimed_positions)


def assert_rows_equal_reference(events: pa.Table, raws: list[str], options: NormaliseOptions):
    """Every row of ``events`` equals the reference row of its line (position = line number)."""
    for row in events.to_pylist():
        raw = raws[row["position"] - 1]
        expected = _reference(raw, options)
        assert not isinstance(expected, Exception), f"claimed a line Python rejects: {raw}"
        differences = [
            (column, want, row[column])
            for column, want in zip(COLUMN_NAMES, expected, strict=True)
            if not _same(column, want, row[column])
        ]
        assert not differences, f"{raw}\n{differences}"


# --- exact fixtures ----------------------------------------------------------------------------

_VIEWED = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "timestamp": "2026-01-05T10:00:00.123Z",
    "anonymousId": "a-1",
    "properties": {"product_id": "p-1", "category": "Shoes", "price": 19.99},
    "context": {"device": {"id": "d-1", "type": "ios"}},
}
_CLAIMED = {
    "product viewed": (
        _VIEWED,
        {
            "message_id": "m-1",
            "type": "track",
            "event": "Product Viewed",
            "channel": "app",  # an iOS device
            "timestamp": datetime(2026, 1, 5, 10, 0, 0, 123000),
            "anonymous_id": "a-1",
            "device_id": "d-1",
            "product_id": "p-1",
            "category": "Shoes",
            "revenue": 19.99,
        },
    ),
    "offset timestamp, mixed-case email": (
        {
            "type": "track",
            "event": "Email Opened",
            "messageId": "m-2",
            "timestamp": "2026-01-05T10:00:00.5+05:30",
            "userId": "u-1",
            "properties": {"send_id": "s-1", "campaign_id": "c-1", "channel": "email"},
            "context": {"traits": {"email": "Ann.Lee@Example.COM"}},
        },
        {
            "timestamp": datetime(2026, 1, 5, 4, 30, 0, 500000),
            "email": "ann.lee@example.com",
            "channel": "email",
            "send_id": "s-1",
            "campaign_id": "c-1",
            "traits": '{"email":"Ann.Lee@Example.COM"}',
        },
    ),
    "cart: revenue from the products": (
        {
            "type": "track",
            "event": "Cart Viewed",
            "messageId": "m-3",
            "timestamp": "2026-01-05T10:00:00Z",
            "userId": "u-1",
            "properties": {
                "products": [
                    {"product_id": "p-1", "category": "Bags", "price": 10.5, "quantity": 2},
                    {"product_id": "p-2", "price": "3.25"},
                    "not a product",
                ]
            },
        },
        {"revenue": 24.25, "category": "Bags", "product_id": None, "channel": "web"},
    ),
    "sms with a phone number": (
        {
            "type": "track",
            "event": "SMS Delivered",
            "messageId": "m-4",
            "timestamp": "2026-01-05T10:00:00Z",
            "userId": 12345,
            "properties": {"channel": "email"},  # a channel-specific event ignores it
            "context": {"traits": {"phone": "+44 7911 123456"}},
        },
        {"user_id": "12345", "phone": "+447911123456", "channel": "sms"},
    ),
    "identify with traits, trimmed ids": (
        {
            "type": "identify",
            "messageId": " m-5\u3000",
            "timestamp": "2026-01-05T10:00:00.1234567-01:00",
            "userId": "\tu-5 ",
            "traits": {"email": "not an email", "first_name": "Zoë"},
        },
        {
            "message_id": "m-5",
            "event": "Identify",
            "user_id": "u-5",
            "timestamp": datetime(2026, 1, 5, 11, 0, 0, 123456),
            "email": None,
            "warnings": "email 'not an email' is not an email address; ignored",
        },
    ),
    "custom event, unknown channel warns": (
        {
            "type": "track",
            "event": "order_completed",
            "messageId": "m-6",
            "timestamp": "2026-01-05T10:00:00Z",
            "anonymousId": "a-6",
            "properties": {"channel": "Fax", "revenue": 12, "total": "x"},
        },
        {
            "event": "Order Completed",
            "channel": "web",
            "revenue": 12.0,
            "warnings": "properties.channel 'Fax' is not one of web, app, email, sms, push",
        },
    ),
}

_UNCLAIMED = {
    "alias": {**_VIEWED, "type": "alias", "previousId": "a-0", "userId": "u-1"},
    "no messageId (a content hash)": {k: v for k, v in _VIEWED.items() if k != "messageId"},
    "type needs trimming": {**_VIEWED, "type": " Track "},
    "no offset in the timestamp": {**_VIEWED, "timestamp": "2026-01-05T10:00:00"},
    "timestamp out of range": {**_VIEWED, "timestamp": "2100-01-01T00:00:00Z"},
    "no identifier (rejected)": {**_VIEWED, "anonymousId": None, "context": {}},
    "revenue not a number (warns)": {**_VIEWED, "properties": {"revenue": "a lot"}},
    "boolean userId (rejected)": {**_VIEWED, "userId": True},
    "float id (repr)": {**_VIEWED, "userId": 1.5},
    "batch envelope": {"batch": [_VIEWED]},
}
_UNCLAIMED_RAW = {
    "malformed JSON": '{"type": "track", "event": ',
    "not an object": '["track"]',
    "NaN (orjson refuses it)": orjson.dumps(_VIEWED).decode().replace("19.99", "NaN"),
    "trailing comma": orjson.dumps(_VIEWED).decode()[:-1] + ",}",
    "20-digit integer": orjson.dumps(_VIEWED).decode().replace("19.99", "12345678901234567890"),
    "duplicate key (orjson keeps the last)": orjson.dumps(_VIEWED)
    .decode()
    .replace('"anonymousId":"a-1"', '"anonymousId":"a-1","anonymousId":"a-2"'),
    "duplicate key in stored properties": orjson.dumps({**_VIEWED, "properties": {"x": {"k": 1}}})
    .decode()
    .replace('{"k":1}', '{"k":1,"k":2}'),
}


@pytest.fixture(scope="module")
def fixture_results() -> dict[str, tuple[dict | None, str]]:
    """All fixtures normalised in one call: name -> (claimed row or None, raw line)."""
    raws = {name: orjson.dumps(message).decode() for name, (message, _) in _CLAIMED.items()}
    raws |= {name: orjson.dumps(message).decode() for name, message in _UNCLAIMED.items()}
    raws |= _UNCLAIMED_RAW
    names = list(raws)
    events, _ = normalise_lines(_lines([raws[name] for name in names]), NormaliseOptions())
    rows = {row["position"]: row for row in events.to_pylist()}
    return {name: (rows.get(i), raws[name]) for i, name in enumerate(names, start=1)}


@pytest.mark.parametrize("name", list(_CLAIMED), ids=list(_CLAIMED))
def test_claims_and_matches_by_hand(fixture_results, name: str) -> None:
    row, raw = fixture_results[name]
    assert row is not None, f"not claimed: {raw}"
    for column, value in _CLAIMED[name][1].items():
        assert _same(column, value, row[column]), (column, value, row[column])
    expected = normalise_message(orjson.loads(raw))
    assert all(
        _same(column, want, row[column])
        for column, want in zip(COLUMN_NAMES, expected, strict=True)
    )


@pytest.mark.parametrize("name", [*_UNCLAIMED, *_UNCLAIMED_RAW], ids=[*_UNCLAIMED, *_UNCLAIMED_RAW])
def test_leaves_unusual_lines_to_python(fixture_results, name: str) -> None:
    row, raw = fixture_results[name]
    assert row is None, f"claimed: {raw}"


def test_python_whitespace_is_what_str_strip_removes() -> None:
    assert tuple(c for c in range(0x110000) if chr(c).isspace()) == PYTHON_WHITESPACE


def test_phone_region_reaches_the_reference() -> None:
    message = {**_VIEWED, "context": {"traits": {"phone": "07911 123456"}}}
    raws = [orjson.dumps(message).decode()]
    for region in (None, "GB"):
        assert check_against_reference(raws, NormaliseOptions(phone_region=region)) == (1, 0)


def test_uses_a_given_connection_and_leaves_its_tables_alone(tmp_path: Path) -> None:
    connection = duckdb.connect(str(tmp_path / "store.duckdb"))
    connection.execute("CREATE TABLE events (message_id VARCHAR)")
    events, unclaimed = normalise_lines(_lines([orjson.dumps(_VIEWED).decode()]), None, connection)
    assert events.num_rows == 1 and unclaimed.num_rows == 0
    tables = connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert tables == [("events",)]
    connection.close()


def test_rejects_a_table_without_raw() -> None:
    with pytest.raises(ValueError, match="column `raw` missing; have: position, line"):
        normalise_lines(pa.table({"position": pa.array([1]), "line": pa.array(["{}"])}))
    with pytest.raises(ValueError, match="column `position` must be int64"):
        normalise_lines(pa.table({"position": pa.array(["1"]), "raw": pa.array(["{}"])}))
    with pytest.raises(TypeError, match=r"pyarrow\.Table"):
        normalise_lines([{"position": 1, "raw": "{}"}])  # type: ignore[arg-type]


# --- property test: random Segment messages, well-formed and odd --------------------------------

_TEXTS = st.one_of(
    st.sampled_from(["", " ", "x", "a b", " padded ", "\u00a0nbsp", "tab\t", "Zoë", "İstanbul"]),
    st.text(max_size=8),
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what orjson writes; bigger ones come from _mangle
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1.0, 1e16, 1e-7, 0.1, 12.5, 2**63]),
    _TEXTS,
    st.sampled_from(["12", "12.50", "-3e2", " 4 ", "1_000", "nan", "inf", "1e999", "0x10"]),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=2),
    st.dictionaries(st.sampled_from(["a", "email", "category"]), _SCALARS, max_size=2),
)
_EMAILS = st.one_of(
    st.sampled_from(
        [
            "ann@example.com",
            "Ann.Lee@Example.COM",
            " bob@example.org ",
            "no-at-sign",
            "a@b",
            "ünï@exämple.de",
            "x@y.z.",
            "",
            'q"uote@x.io',
        ]
    ),
    _VALUES,
)
_PHONES = st.one_of(
    st.sampled_from(["+447911123456", "+44 7911 123456", "07911 123456", "12", "", "+1 202"]),
    st.integers(0, 10**12),
    _VALUES,
)


def _timestamps() -> st.SearchStrategy:
    def render(instant: datetime, fraction: int, zone: str, separator: str) -> str:
        text = instant.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
        if fraction:
            text += "." + str(instant.microsecond * 1000 + 123).rjust(9, "0")[:fraction]
        return text + zone

    instants = st.datetimes(datetime(1969, 12, 31), datetime(2100, 1, 2))
    zones = st.sampled_from(["Z", "Z", "+00:00", "+05:30", "-05:00", "+23:59", "-00:00", "", "+1"])
    generated = st.builds(render, instants, st.integers(0, 9), zones, st.sampled_from("TT T"))
    odd = st.sampled_from(
        ["2026-02-30T10:00:00Z", "2026-01-05T24:00:00Z", "yesterday", "", "2026-01-05", None, 5]
    )
    return st.one_of(generated, generated, odd)


def _maybe(key: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """{key: value}, or {} (the key absent)."""
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


def _merge(parts: list[dict]) -> dict:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


_EVENT_NAMES = st.one_of(
    st.sampled_from(list(CANONICAL_EVENTS)),
    st.sampled_from(["order_completed", "EMAIL OPENED", " Product Viewed ", "Custom Thing", ""]),
    _VALUES,
)
_PROPERTIES = st.one_of(
    st.none(),
    st.just({}),
    st.sampled_from(["a string", 5]),
    st.tuples(
        *[
            _maybe(key, values)
            for key, values in [
                ("product_id", _VALUES),
                ("sku", _VALUES),
                ("category", _VALUES),
                ("price", _SCALARS),
                ("quantity", _SCALARS),
                ("revenue", _SCALARS),
                ("total", _SCALARS),
                ("value", _SCALARS),
                ("currency", _TEXTS),
                ("send_id", _VALUES),
                ("email_id", _VALUES),
                ("campaign_id", _VALUES),
                ("order_id", _VALUES),
                ("channel", st.one_of(st.sampled_from(["email", "SMS", " push ", "fax"]), _VALUES)),
                ("email", _EMAILS),
                ("phone", _PHONES),
                (
                    "products",
                    st.one_of(
                        st.lists(
                            st.one_of(
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "price": _SCALARS,
                                        "quantity": _SCALARS,
                                        "category": _VALUES,
                                    },
                                ),
                                _SCALARS,
                            ),
                            max_size=3,
                        ),
                        _SCALARS,
                    ),
                ),
            ]
        ]
    ).map(_merge),
)
_TRAITS = st.one_of(
    st.none(),
    st.just({}),
    st.just("not an object"),
    st.tuples(_maybe("email", _EMAILS), _maybe("phone", _PHONES), _maybe("name", _TEXTS)).map(
        _merge
    ),
)
_CONTEXT = st.one_of(
    st.none(),
    st.just({}),
    st.just([1]),
    st.tuples(
        _maybe("traits", _TRAITS),
        _maybe(
            "device",
            st.one_of(
                st.none(),
                st.just("phone"),
                st.tuples(
                    _maybe("id", st.one_of(_TEXTS, _SCALARS)),
                    _maybe(
                        "type",
                        st.one_of(st.sampled_from(["ios", "Android", "IOS ", "desktop"]), _VALUES),
                    ),
                ).map(_merge),
            ),
        ),
        _maybe(
            "app", st.one_of(st.sampled_from([{}, {"name": "shop"}, [], "", "x", 0, 2]), _VALUES)
        ),
        _maybe("campaign", st.just({"source": "email"})),
    ).map(_merge),
)
_MESSAGES = st.tuples(
    _maybe(
        "type",
        st.one_of(
            st.sampled_from(["track"] * 6 + ["page", "screen", "identify", "alias"]),
            st.sampled_from([" Track ", "TRACK", "trak", "", None, 5]),
        ),
    ),
    _maybe("messageId", st.one_of(st.from_regex(r"m-[0-9a-f]{4}", fullmatch=True), _SCALARS)),
    _maybe("timestamp", _timestamps()),
    _maybe("originalTimestamp", _timestamps()),
    _maybe("userId", st.one_of(_TEXTS, _SCALARS)),
    _maybe("anonymousId", st.one_of(_TEXTS, _SCALARS)),
    _maybe("previousId", _TEXTS),
    _maybe("event", _EVENT_NAMES),
    _maybe("properties", _PROPERTIES),
    _maybe("traits", _TRAITS),
    _maybe("context", _CONTEXT),
).map(_merge)


def _mangle(raw: str, how: int) -> str:
    """Raw-text damage that orjson and yyjson judge differently, or that makes no JSON at all."""
    if how == 1:
        return raw[: len(raw) // 2]
    if how == 2:
        return raw[:-1] + ',"x":NaN}' if raw != "{}" else raw
    if how == 3:
        return raw[:-1] + ",}" if raw != "{}" else raw
    if how == 4:
        return raw.replace('{"', '{"type":"track","', 1)  # a duplicate "type" key, maybe
    if how == 5:
        return raw[:-1] + ',"big":123456789012345678901}' if raw != "{}" else raw
    if how == 6:
        return orjson.dumps({"batch": [orjson.loads(raw)]}).decode()
    if how == 7:  # another producer: \u escapes for non-ASCII, spaces after ':' and ','
        return json.dumps(orjson.loads(raw))
    return raw


_LINES = st.tuples(_MESSAGES, st.sampled_from([0] * 12 + [1, 2, 3, 4, 5, 6, 7, 7])).map(
    lambda pair: _mangle(orjson.dumps(pair[0]).decode(), pair[1])
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    raws=st.lists(_LINES, min_size=1, max_size=30),
    options=st.sampled_from(
        [
            NormaliseOptions(),
            NormaliseOptions(phone_region="GB"),
            NormaliseOptions(timezone="Europe/Paris"),
        ]
    ),
)
def test_claimed_rows_equal_the_reference(raws: list[str], options: NormaliseOptions) -> None:
    check_against_reference(raws, options)


def test_many_random_messages_in_one_batch() -> None:
    """A larger differential run than hypothesis can afford per example."""
    rng = random.Random(7)
    raws = [_random_line(rng) for _ in range(4000)]
    claimed, _ = check_against_reference(raws, NormaliseOptions(phone_region="GB"))
    assert claimed > 1000  # the generator makes plenty of well-formed lines
    # ... and plenty of them in the common shape, so that its query is exercised
    assert common_shape_rows(_lines(raws), NormaliseOptions(phone_region="GB")).num_rows > 50


def test_lines_near_the_common_shape() -> None:
    """Lines of the common shape with one field pushed to or past its edge: whatever the
    common-shape query claims equals the reference (check_against_reference checks it alone)."""
    rng = random.Random(5)
    raws = [_common_line(rng) for _ in range(3000)]
    claimed, _ = check_against_reference(raws, NormaliseOptions())
    common = common_shape_rows(_lines(raws)).num_rows
    assert 0.3 * len(raws) < common <= claimed  # both sides of the edge are well represented


def test_general_query_can_be_left_out_for_few_lines() -> None:
    """With fewer leftover lines than ``general_min_lines``, only the common-shape query claims;
    the rest come back unclaimed (for the reference path), each line exactly once."""
    rng = random.Random(9)
    raws = [_common_line(rng) for _ in range(400)]
    lines = _lines(raws)
    common = common_shape_rows(lines).column("position").to_pylist()
    events, unclaimed = normalise_lines(lines, general_min_lines=len(raws))
    assert events.column("position").to_pylist() == common
    assert sorted(common + unclaimed.column("position").to_pylist()) == list(
        range(1, len(raws) + 1)
    )
    everything, _ = normalise_lines(lines, general_min_lines=1)
    assert everything.num_rows > len(common)  # the general query claims more when it runs
    assert events.equals(everything.filter(pc.is_in(everything["position"], events["position"])))


def _common_line(rng: random.Random) -> str:
    """A simulator-like line; in about half of them one field takes an unusual value."""
    start = datetime(2026, 1, 5) + timedelta(seconds=rng.randrange(86_400 * 30))
    message: dict[str, Any] = {
        "type": rng.choice(["track", "track", "page", "screen"]),
        "event": rng.choice(["Email Opened", "Product Viewed", "Order Completed", "SMS Sent"]),
        "messageId": f"m-{rng.getrandbits(32):08x}",
        "timestamp": start.strftime("%Y-%m-%dT%H:%M:%S.%f")[: rng.choice([19, 21, 23, 26])] + "Z",
        "userId": f"user_{rng.randrange(99)}",
        "properties": {"send_id": "s-1", "campaign_id": "c-1", "channel": "email"},
        "context": {"device": {"id": "d-1", "type": rng.choice(["ios", "desktop"])}},
    }
    odd: dict[str, Any] = rng.choice(
        [
            {},
            {"messageId": rng.choice(["", " m ", 42, 4.5, True, None])},
            {"userId": rng.choice(["", 7, 7.0, False, None, {"a": 1}])},
            {"anonymousId": rng.choice(["a-1", "", None, [1]])},
            {
                "timestamp": rng.choice(
                    [
                        "2026-02-30T00:00:00Z",
                        "2026-01-05T10:00:00.1234567Z",
                        "2026-01-05T10:00:00+02:00",
                        "2026-01-05 10:00:00Z",
                        "2026-01-05T24:00:00Z",
                        "1969-12-31T23:59:59Z",
                        None,
                        5,
                    ]
                )
            },
            {"event": rng.choice(["order_completed", "Custom", "", None, 3])},
            {"type": rng.choice(["identify", "Track", "alias", None])},
            {
                "properties": rng.choice(
                    [
                        None,
                        {},
                        [],
                        "x",
                        {"revenue": rng.choice([12.5, 3, "12.5", None, True, 1e300, -0.0])},
                        {
                            "price": rng.choice([2.5, "2.5", None]),
                            "quantity": rng.choice([2, "2", None]),
                        },
                        {"product_id": rng.choice(["p", 5, 5.5, None, ""]), "category": "Shoes"},
                        {"channel": rng.choice(["sms", "Email", "fax", None, 1])},
                        {"value": 3},
                        {"email": "x@y.co"},
                        {"nested": {"a": 1}},
                        {"list": [1, 2]},
                    ]
                )
            },
            {
                "context": rng.choice(
                    [
                        None,
                        {},
                        [],
                        {
                            "traits": {
                                "email": rng.choice(["Ann@Mail.Test", "bad", "", None, 5, "a@b"])
                            }
                        },
                        {
                            "traits": {
                                "phone": rng.choice(["+447911123456", "07911 123456", "x", 5])
                            }
                        },
                        {"traits": None},
                        {"traits": {"deep": {"a": 1}}},
                        {"device": None},
                        {"device": {"id": 5, "type": "android"}},
                        {"app": rng.choice([{}, 1, "x"])},
                        {"campaign": {"name": "c"}},
                    ]
                )
            },
        ]
    )
    message.update(odd)
    raw = orjson.dumps({k: v for k, v in message.items() if v is not None or rng.random() < 0.5})
    text = raw.decode()
    if rng.random() < 0.05:  # a duplicate key, at the top or inside properties
        text = text.replace('"userId":', '"userId":"dup","userId":', 1)
    if rng.random() < 0.05:
        text = text.replace('"send_id":', '"send_id":"dup","send_id":', 1)
    return text


def _random_line(rng: random.Random) -> str:
    """A mostly well-formed message with one or two odd fields; fast, for big batches."""
    start = datetime(2026, 1, 5) + timedelta(seconds=rng.randrange(86_400 * 30))
    zone = rng.choice(["Z", "Z", "Z", "+01:00", "-05:00", "+05:30", ""])
    fraction = "." + "".join(rng.choices("0123456789", k=rng.randint(1, 9)))
    message: dict[str, Any] = {
        "type": rng.choice(["track"] * 6 + ["page", "screen", "identify", "alias", "Track"]),
        "event": rng.choice([*CANONICAL_EVENTS, "Custom Thing", "order_completed", " x "]),
        "messageId": f"m-{rng.getrandbits(40):010x}",
        "timestamp": start.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(["", fraction]) + zone,
        rng.choice(["userId", "anonymousId"]): rng.choice(
            [f"id-{rng.randrange(999)}", rng.randrange(10**6), " padded ", "", None, 1.5]
        ),
        "properties": rng.choice(
            [
                {"product_id": "p-1", "category": "Shoes", "price": rng.choice([10, 2.5, "3"])},
                {"send_id": "s", "campaign_id": "c", "channel": rng.choice(["email", "Push", 3])},
                {"revenue": rng.choice([10.25, "10", True, None]), "total": 4, "value": "x"},
                {"products": [{"price": 2.5, "quantity": rng.choice([2, "2", None])}, 5]},
                {},
                None,
            ]
        ),
        "context": rng.choice(
            [
                {"device": {"id": f"d-{rng.randrange(99)}", "type": rng.choice(["ios", "TVOS"])}},
                {"traits": {"email": rng.choice(["A@B.co", "bad", "", 5])}},
                {"traits": {"phone": rng.choice(["+447911123456", "07911 123456", "x"])}},
                {"app": rng.choice([{}, {"name": "x"}, 0])},
                {},
            ]
        ),
    }
    return _mangle(orjson.dumps(message).decode(), rng.choice([0] * 20 + [1, 2, 3, 4, 5, 6, 7]))


# --- realistic data is mostly claimed --------------------------------------------------------


def test_a_simulated_brand_is_mostly_claimed(tmp_path: Path) -> None:
    from features.simulate import simulate

    world = simulate(tmp_path / "world", customers=150, days=3, seed=3)
    raws = [line for line in world.events_path.read_text().splitlines() if line.strip()]
    claimed, unclaimed = check_against_reference(raws, NormaliseOptions())
    assert claimed / len(raws) >= 0.95, (claimed, unclaimed)
    # most of a realistic stream is in the common shape (the leaner query)
    assert common_shape_rows(_lines(raws)).num_rows / len(raws) >= 0.85


def test_many_scan_batches_keep_input_order() -> None:
    """DuckDB scans the batches of a multi-batch table on several threads; the result is still
    in input order and equal to the one-batch result (ingest relies on both)."""
    rng = random.Random(11)
    lines = _lines([_random_line(rng) for _ in range(3000)])
    connection = duckdb.connect(config={"threads": 2})
    one_batch = normalise_lines(lines.combine_chunks(), connection=connection)
    batched = pa.Table.from_batches(lines.to_batches(max_chunksize=64))
    many_batches = normalise_lines(batched, connection=connection)
    for expected, actual in zip(one_batch, many_batches, strict=True):
        assert actual.equals(expected)
    positions = many_batches[0].column("position").to_pylist()
    assert positions == sorted(positions) and len(positions) > 500
    # Positions that do not increase are scanned as one batch, in input order.
    shuffled = batched.take(list(range(2999, -1, -1)))
    events, _ = normalise_lines(shuffled, connection=connection)
    assert events.column("position").to_pylist() == positions[::-1]
