"""The C scanner (features/_jsonscan.c) against DuckDB itself.

It may only scan a line whose raw text passes kairos_plain_line and kairos_screened, has no
duplicate key in an object the common query reads, and whose every VALUE_PATHS value it writes
exactly as json_extract does; it may skip only lines that fail those two macros. Refusing is
always allowed (the line takes the SQL path). The common query's rows are then the same with
and without the scanner (tests/test_vectorised.py holds those rows to the reference).

Its row builder may only claim a scanned line that the common query (on the scanner's columns)
claims with that query's row, or (identify messages, products, total or value, which the query
leaves) with the reference's row; and may only leave lines the query does not claim.
"""

from __future__ import annotations

import random
import struct

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vectorised import (
    _LINES,
    _common_line,
    _lines,
    _random_line,
    assert_rows_equal_reference,
)

from features import vectorised
from features.contract import CANONICAL_EVENTS, NormaliseOptions
from features.vectorised import VALUE_PATHS, common_shape_rows, scan_lines

pytestmark = pytest.mark.skipif(vectorised._jsonscan is None, reason="features._jsonscan not built")

SKIPPED, SCANNED, REFUSED, CLAIMED, LEFT = 0, 1, 2, 3, 4
_KEY_PATHS = ["$", "$.context", "$.context.device", "$.context.traits", "$.properties"]


@pytest.fixture(scope="module")
def connection() -> duckdb.DuckDBPyConnection:
    return vectorised._prepared_connection(duckdb.connect())


def _duckdb_view(connection: duckdb.DuckDBPyConnection, raws: list[str]) -> list[tuple]:
    """Per line: (plain and screened, the VALUE_PATHS texts, keys unique, mentions)."""
    paths = "[" + ", ".join(f"'{path}'" for path in VALUE_PATHS.values()) + "]"
    objects = "[" + ", ".join(f"'{path}'" for path in _KEY_PATHS) + "]"
    connection.register("scan_lines_under_test", pa.table({"raw": pa.array(raws, pa.string())}))
    try:
        return connection.sql(
            f"""SELECT kairos_plain_line(raw) AND kairos_screened(raw),
                    try(CAST(json_extract(raw, {paths}) AS VARCHAR[])),
                    list_bool_and(list_transform(try(json_keys(raw, {objects})),
                        lambda keys: coalesce(list_bool_and(list_transform(keys,
                            lambda key, i: list_position(keys, key) = i)), true))),
                    [contains(raw, '"device"'), contains(raw, '"context"')]
                FROM scan_lines_under_test"""
        ).fetchall()
    finally:
        connection.unregister("scan_lines_under_test")


def check_scanner(connection: duckdb.DuckDBPyConnection, raws: list[str]) -> list[int]:
    """Assert the scanner's contract on ``raws`` against DuckDB; return its verdicts."""
    verdicts, fields, _ = scan_lines(_lines(raws), build_rows=False)
    verdicts = verdicts.tolist()
    expected = _duckdb_view(connection, raws)
    scanned = [i for i, verdict in enumerate(verdicts) if verdict == SCANNED]
    assert fields.column("position").to_pylist() == [i + 1 for i in scanned]
    rows = fields.to_pylist()
    for verdict, raw, (plain_screened, _, _, _) in zip(verdicts, raws, expected, strict=True):
        assert verdict in (SKIPPED, SCANNED, REFUSED)
        if verdict == SKIPPED:
            assert not plain_screened, raw
    for index, row in zip(scanned, rows, strict=True):
        plain_screened, values, keys_unique, mentions = expected[index]
        assert plain_screened and keys_unique and values is not None, raws[index]
        got = [row[f"{name}_json"] for name in VALUE_PATHS]
        assert got == values, raws[index]
        assert [row["mentions_device"], row["mentions_context"]] == mentions, raws[index]
    return verdicts


def _scan_one(raw: str) -> int:
    return int(scan_lines(_lines([raw]), build_rows=False)[0][0])


# --- hand-written cases --------------------------------------------------------------------------

_BASE = (
    '{"type":"track","event":"Email Opened","messageId":"m-1",'
    '"timestamp":"2026-01-05T10:00:00Z","userId":"u-1",'
    '"properties":{"send_id":"s-1","channel":"email"},"context":{"traits":{"email":"a@b.co"}}}'
)
_CASES = {
    "plain": (_BASE, SCANNED),
    "nested objects and arrays": (
        '{"type":"track","properties":{"a":{"b":[1,{"c":null}],"d":[]},"e":{}},'
        '"context":{"device":{"id":"d","type":"ios","x":{"y":true}},"app":{"name":"z"}}}',
        SCANNED,
    ),
    "a path through a string": ('{"context":"device","properties":[1,2]}', SCANNED),
    "visible ASCII in strings": (
        '{"type":"' + "".join(chr(c) for c in range(33, 127) if chr(c) not in '"\\') + '"}',
        SCANNED,
    ),
    "DEL and inner spaces": ('{"type":"a\x7fb c"}', SCANNED),
    "an escape": ('{"type":"tr\\"ack"}', SKIPPED),
    "an escaped slash": ('{"type":"a\\/b"}', SKIPPED),
    "unicode": ('{"type":"café"}', SKIPPED),
    "unicode in a key": ('{"tÿpe":"track"}', SKIPPED),
    "a string starting with a space": ('{"type":" track"}', SKIPPED),
    "a string ending with a space": ('{"type":"track "}', SKIPPED),
    "NaN inside a string": ('{"type":"a:NaN"}', SKIPPED),
    "a long number inside a string": ('{"type":"x,1234567890123456789"}', SKIPPED),
    "a big exponent inside a string": ('{"type":"[1.5e300"}', SKIPPED),
    "a trailing comma inside a string": ('{"type":"a,}"}', SKIPPED),
    "a duplicate key at the top": ('{"type":"track","type":"page"}', REFUSED),
    "a duplicate key deep inside": ('{"properties":{"a":{"b":1,"b":2}}}', REFUSED),
    "the same key in two objects": ('{"id":1,"context":{"device":{"id":"d"}}}', SCANNED),
    "a space after a colon": ('{"type": "track"}', SKIPPED),
    "a space before a number": ('{"a": 1}', REFUSED),
    "a space before a brace": ('{"a":1 }', REFUSED),
    "a tab": ('{"a":\t1}', REFUSED),
    "a trailing space": ("{} ", REFUSED),
    "a control character in a string": ('{"type":"a\x01b"}', REFUSED),
    "truncated": (_BASE[: len(_BASE) // 2], REFUSED),
    "truncated inside a string": ('{"type":"tra', REFUSED),
    "truncated after a key": ('{"type"', REFUSED),
    "two documents": ("{}{}", REFUSED),
    "an array at the top": ('[{"type":"track"}]', REFUSED),
    "a string at the top": ('"track"', REFUSED),
    "empty object": ("{}", SCANNED),
    "a bare word": ('{"a":nul}', REFUSED),
    "single quotes": ("{'a':1}", REFUSED),
    "a trailing comma": ('{"a":1,}', SKIPPED),
    "NaN": ('{"a":NaN}', SKIPPED),
    "19 digits": ('{"a":1234567890123456789}', SKIPPED),
    "deep nesting": ('{"a":' * 40 + "1" + "}" * 40, REFUSED),
    "nesting within the limit": ('{"a":' * 20 + "1" + "}" * 20, SCANNED),
}


@pytest.mark.parametrize("name", list(_CASES), ids=list(_CASES))
def test_hand_written_lines(connection, name: str) -> None:
    raw, verdict = _CASES[name]
    assert check_scanner(connection, [raw]) == [verdict]


# Number tokens: the ones yyjson writes back unchanged are scanned, the others refused.
_NUMBERS = {
    "0": SCANNED,
    "-1": SCANNED,
    "123456789012345678": SCANNED,
    "-123456789012345678": SCANNED,
    "1.5": SCANNED,
    "-0.0": SCANNED,
    "0.0": SCANNED,
    "1.0": SCANNED,
    "100.0": SCANNED,
    "19.99": SCANNED,
    "0.000001": SCANNED,
    "0.0000012": SCANNED,
    "0.041666666666666664": SCANNED,  # 17 digits: the simulator's propensities
    "0.30000000000000004": SCANNED,
    "1.0000000000000002": SCANNED,
    "123456789012345.6": SCANNED,
    "-0": REFUSED,  # yyjson writes 0
    "1.50": REFUSED,  # 1.5
    "1.00": REFUSED,
    "1e2": REFUSED,  # 100.0
    "1E-3": REFUSED,
    "0.0000001": REFUSED,  # 1e-7
    "1234567890123456.7": REFUSED,  # 1234567890123456.8
    "1000000000000000.0": REFUSED,
    "0.3000000000000000444": REFUSED,  # more digits than the shortest
    "0.10000000000000001": REFUSED,  # 0.1
    "9007199254740993.0": REFUSED,
    "01": REFUSED,  # not JSON
    "1.": REFUSED,
    ".5": REFUSED,
    "+1": REFUSED,
    "-": REFUSED,
}


@pytest.mark.parametrize("token", list(_NUMBERS), ids=list(_NUMBERS))
def test_numbers(connection, token: str) -> None:
    raw = '{"properties":{"price":' + token + ',"list":[' + token + "]}}"
    assert check_scanner(connection, [raw]) == [_NUMBERS[token]]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.builds(struct.unpack, st.just("<d"), st.binary(min_size=8, max_size=8)).map(
            lambda value: value[0]
        ),
        st.integers(0, 20).flatmap(
            lambda places: st.decimals(allow_nan=False, allow_infinity=False, places=places)
        ),
        st.from_regex(r"-?(0|[1-9][0-9]{0,17})\.[0-9]{1,19}", fullmatch=True),
    )
)
def test_number_property(number) -> None:
    """Whatever number text a producer writes (Python's repr, orjson, decimals with zeros): if
    the scanner scans it, its text is what yyjson writes."""
    texts = {number} if isinstance(number, str) else {repr(number), str(number)}
    if isinstance(number, float) and number == number and abs(number) != float("inf"):
        texts.add(orjson.dumps(number).decode())
    raws = ['{"properties":{"revenue":' + text + "}}" for text in texts]
    check_scanner(_property_connection(), raws)


_connection_cache: list[duckdb.DuckDBPyConnection] = []


def _property_connection() -> duckdb.DuckDBPyConnection:
    if not _connection_cache:
        _connection_cache.append(vectorised._prepared_connection(duckdb.connect()))
    return _connection_cache[0]


# --- generated lines -----------------------------------------------------------------------------


def test_generated_lines(connection) -> None:
    rng = random.Random(3)
    raws = [_common_line(rng) for _ in range(2000)] + [_random_line(rng) for _ in range(2000)]
    verdicts = check_scanner(connection, raws)
    assert verdicts.count(SCANNED) > 1500  # most lines are scanned ...
    assert verdicts.count(REFUSED) > 20 and verdicts.count(SKIPPED) > 20  # ... not all


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raws=st.lists(_LINES, min_size=1, max_size=30))
def test_hypothesis_lines(raws: list[str]) -> None:
    check_scanner(_property_connection(), raws)


def test_common_rows_are_the_same_without_the_scanner(monkeypatch) -> None:
    """The common query's rows on the scanner's columns (or built by it) equal its rows on the
    raw JSON; the lines only the row builder claims have the reference's rows."""
    _check_common_rows(8, lambda: monkeypatch.setattr(vectorised, "_jsonscan", None))


def _check_common_rows(seed: int, without_it) -> None:
    """common_shape_rows on generated lines, then again after ``without_it()``: the rows the
    second run claims are the same in the first; the first's others are the reference's."""
    rng = random.Random(seed)
    raws = [_common_line(rng) for _ in range(1500)] + [_random_line(rng) for _ in range(1500)]
    rng.shuffle(raws)
    lines = pa.Table.from_batches(_lines(raws).to_batches(max_chunksize=700))
    built = common_shape_rows(lines)
    without_it()
    without = common_shape_rows(lines)
    assert without.num_rows > 500
    queried = pc.is_in(built.column("position"), without.column("position"))
    assert built.filter(queried).equals(without)
    beyond = built.filter(pc.invert(queried))
    assert beyond.num_rows > 50  # identify, products, total, value
    assert_rows_equal_reference(beyond, raws, NormaliseOptions())


def test_sliced_and_large_string_chunks() -> None:
    """Chunks that are slices of a bigger array, and large_string chunks, scan alike."""
    rng = random.Random(4)
    raws = [_common_line(rng) for _ in range(300)]
    whole = _lines(raws)
    for build_rows in (False, True):
        expected_verdicts, expected, expected_rows = scan_lines(whole, build_rows)
        sliced = pa.Table.from_batches(whole.to_batches(max_chunksize=7))
        large = whole.set_column(1, "raw", whole.column("raw").cast(pa.large_string()))
        for table in (sliced, large):
            verdicts, fields, rows = scan_lines(table, build_rows)
            assert verdicts.tolist() == expected_verdicts.tolist()
            assert fields.combine_chunks().equals(expected.combine_chunks())
            assert rows.combine_chunks().equals(expected_rows.combine_chunks())


def test_bad_arguments() -> None:
    scan = vectorised._jsonscan.scan
    with pytest.raises(ValueError, match="paths must read"):
        scan(b"\0\0\0\0", b"", ["properties"], False, [])
    with pytest.raises(ValueError, match="needles must read"):
        scan(b"\0\0\0\0", b"", ["$.a"], False, ["device"])
    with pytest.raises(ValueError, match="offsets out of order"):
        scan(struct.pack("<ii", 0, 5), b"{}", ["$.a"], False, [])


def test_many_numbers_near_the_shortest(connection) -> None:
    """Python's repr of random doubles (the shortest round trip, as yyjson writes it) and the
    same digits nudged by one in the last place or lengthened: one differential batch, in
    which each text comes twice."""
    rng = random.Random(6)
    texts = []
    for _ in range(6000):
        value = rng.uniform(-1, 1) * 10 ** rng.randint(-7, 16)
        text = repr(value)
        texts.append(text)
        if "e" not in text and "." in text:
            last = int(text[-1])
            texts.append(text[:-1] + str((last + rng.choice([1, 9])) % 10))
            texts.append(text + str(rng.randint(0, 9)))
    raws = ['{"properties":{"price":' + text + "}}" for text in texts]
    # each text again, in another order: the scanner remembers its verdicts on long decimals
    rng.shuffle(raws)
    raws += [raw for raw in reversed(raws)]
    texts = [raw[len('{"properties":{"price":') : -2] for raw in raws]
    verdicts = check_scanner(connection, raws)
    shortest = [verdicts[i] for i, text in enumerate(texts) if text == repr(float(text))]
    assert shortest.count(SCANNED) > 0.5 * len(shortest)


# --- the row builder -----------------------------------------------------------------------------


def check_rows(connection: duckdb.DuckDBPyConnection, raws: list[str]) -> list[int]:
    """Assert the row builder's contract on ``raws`` against the common query run on the
    scanner's columns; return its verdicts."""
    lines = _lines(raws)
    plain_verdicts, fields, _ = scan_lines(lines, build_rows=False)
    verdicts, _, built = scan_lines(lines)
    query = vectorised._claimed_in_order(
        vectorised._run(connection, vectorised.COMMON_SCANNED_SQL, fields, None)
    )
    query = query.select(built.column_names).cast(built.schema)
    by_query = {row["position"]: row for row in query.to_pylist()}
    for verdict, plain_verdict, raw in zip(verdicts, plain_verdicts, raws, strict=True):
        if plain_verdict == SCANNED:
            assert verdict in (SCANNED, CLAIMED, LEFT), raw
        else:
            assert verdict == plain_verdict, raw
    for position, verdict in enumerate(verdicts.tolist(), start=1):
        if verdict == LEFT:
            assert position not in by_query, f"left a line the query claims: {raws[position - 1]}"
    claimed = [p for p, verdict in enumerate(verdicts.tolist(), start=1) if verdict == CLAIMED]
    assert built.column("position").to_pylist() == claimed
    # Lines beyond the common shape (identify, products, total, value): the reference's rows.
    beyond = built.filter(pa.array([p not in by_query for p in claimed], pa.bool_()))
    options = NormaliseOptions()
    assert_rows_equal_reference(vectorised._with_phones(beyond, options), raws, options)
    for row in built.to_pylist():
        raw = raws[row["position"] - 1]
        if row["position"] not in by_query:
            continue
        expected = by_query[row["position"]]
        differences = [
            (name, expected[name], row[name])
            for name in built.column_names
            if not _same_value(expected[name], row[name])
        ]
        assert not differences, f"{raw}\n{differences}"
    return verdicts.tolist()


def _same_value(expected, got) -> bool:
    if isinstance(expected, float) and isinstance(got, float):
        return struct.pack("<d", expected) == struct.pack("<d", got)  # bit for bit
    return type(expected) is type(got) and expected == got


def _message(**fields) -> str:
    message = {
        "type": "track",
        "event": "Email Opened",
        "messageId": "m-1",
        "timestamp": "2026-01-05T10:00:00.123Z",
        "userId": "u-1",
        "properties": {"send_id": "s-1", "campaign_id": "c-1"},
        "context": {"traits": {"email": "Ann@Example.com"}, "device": {"id": "d-1"}},
    }
    for key, value in fields.items():
        if value is _ABSENT:
            message.pop(key, None)
        else:
            message[key] = value
    return orjson.dumps(message).decode()


_ABSENT = object()
_ROW_CASES = {
    "plain": (_message(), CLAIMED),
    "page": (_message(type="page", event=_ABSENT), CLAIMED),
    "screen": (_message(type="screen"), CLAIMED),
    "identify": (_message(type="identify", traits={"email": "A@b.co", "x": 1}), CLAIMED),
    "identify without traits": (_message(type="identify"), CLAIMED),
    "identify with nested traits": (_message(type="identify", traits={"a": {"b": 1}}), LEFT),
    "identify with a traits phone": (
        _message(
            type="identify", userId=_ABSENT, context=_ABSENT, traits={"phone": "+447911123456"}
        ),
        CLAIMED,
    ),
    "alias": (_message(type="alias", previousId="p-1"), LEFT),
    "a capitalised type": (_message(type="Track"), LEFT),
    "a custom event": (_message(event="Custom Thing"), LEFT),
    "no event": (_message(event=_ABSENT), LEFT),
    "no message id": (_message(messageId=_ABSENT), LEFT),
    "an empty message id": (_message(messageId=""), LEFT),
    "a numeric message id": (_message(messageId=42), LEFT),
    "a null user id": (_message(userId=None), LEFT),
    "an empty user id": (_message(userId=""), CLAIMED),
    "no identifier": (_message(userId=_ABSENT, context={}), LEFT),
    "only a phone": (
        _message(userId=_ABSENT, context={"traits": {"phone": "+447911123456"}}),
        CLAIMED,
    ),
    "only a null phone": (_message(userId=_ABSENT, context={"traits": {"phone": None}}), LEFT),
    "a batch": (_message(batch=[]), LEFT),
    "nested properties": (_message(properties={"a": {"b": 1}}), LEFT),
    "a brace in a property": (_message(properties={"a": "x{y"}), LEFT),
    "no products": (_message(properties={"products": []}), CLAIMED),
    "products": (
        _message(
            properties={
                "products": [{"price": 2.5, "quantity": 2, "category": "Bags"}, {"price": 1}]
            }
        ),
        CLAIMED,
    ),
    "three products": (_message(properties={"products": [{"price": 1}] * 3}), LEFT),
    "a product with a null price": (
        _message(properties={"products": [{"price": None}, {"price": 3, "quantity": None}]}),
        CLAIMED,
    ),
    "a product with a text price": (_message(properties={"products": [{"price": "3"}]}), LEFT),
    "a product that is not an object": (_message(properties={"products": [1]}), LEFT),
    "products that are not an array": (_message(properties={"products": "x"}), LEFT),
    "a nested product": (_message(properties={"products": [{"a": {"b": 1}}]}), LEFT),
    "a category beside products": (
        _message(properties={"category": "Shoes", "products": [{"category": "Bags"}]}),
        CLAIMED,
    ),
    "a numeric first category": (_message(properties={"products": [{"category": 5}]}), LEFT),
    "total": (_message(properties={"total": 5, "value": "x"}), CLAIMED),
    "a null revenue, then value": (_message(properties={"revenue": None, "value": 7}), CLAIMED),
    "revenue before products": (
        _message(properties={"revenue": 3, "products": [{"price": 1}]}),
        CLAIMED,
    ),
    "a rare key": (_message(properties={"sku": "s"}), LEFT),
    "rare keys as values": (
        _message(properties={"tags": ["email", "total"], "a": "value"}),
        CLAIMED,
    ),
    "a longer key": (_message(properties={"emails": 1, "skus": 2}), CLAIMED),
    "empty properties": (_message(properties={}), CLAIMED),
    "no properties": (_message(properties=_ABSENT), CLAIMED),
    "null properties": (_message(properties=None), LEFT),
    "nested traits": (_message(context={"traits": {"a": {"b": 1}}}), LEFT),
    "a device mentioned": (_message(properties={"a": "device"}, context={}), LEFT),
    "a context mentioned": (_message(userId="context", context=_ABSENT), LEFT),
    "a device without values": (_message(context={"device": {"x": 1}}), LEFT),
    "revenue": (_message(properties={"revenue": 12.5, "price": "x"}), CLAIMED),
    "revenue as text": (_message(properties={"revenue": "12.5"}), LEFT),
    "price and quantity": (_message(properties={"price": 2.5, "quantity": 3}), CLAIMED),
    "price alone": (_message(properties={"price": 0.1}), CLAIMED),
    "a null quantity": (_message(properties={"price": 2.5, "quantity": None}), LEFT),
    "a big integer price": (_message(properties={"price": 123456789012345678}), CLAIMED),
    "negative zero revenue": (_message(properties={"revenue": -0.0}), CLAIMED),
    "an offset": (_message(timestamp="2026-01-05T10:00:00.5+05:30"), CLAIMED),
    "a negative offset": (_message(timestamp="2026-01-05T22:00:00-05:00"), CLAIMED),
    "7 fractional digits": (_message(timestamp="2026-01-05T10:00:00.1234567Z"), SCANNED),
    "February 30": (_message(timestamp="2026-02-30T10:00:00Z"), SCANNED),
    "a leap day": (_message(timestamp="2028-02-29T10:00:00Z"), CLAIMED),
    "not a leap day": (_message(timestamp="2100-02-29T10:00:00Z"), SCANNED),
    "before 1970 after the offset": (_message(timestamp="1970-01-01T00:30:00+01:00"), SCANNED),
    "2100 after the offset": (_message(timestamp="2099-12-31T23:30:00-01:00"), SCANNED),
    "a space for the T": (_message(timestamp="2026-01-05 10:00:00Z"), SCANNED),
    "no timestamp": (_message(timestamp=_ABSENT), SCANNED),
    "a stated channel": (_message(event="Product Viewed", properties={"channel": "sms"}), CLAIMED),
    "an unknown channel": (_message(event="Product Viewed", properties={"channel": "fax"}), LEFT),
    "a capitalised channel": (
        _message(event="Product Viewed", properties={"channel": "Sms"}),
        LEFT,
    ),
    "a channel-specific name": (_message(properties={"channel": "fax"}), CLAIMED),
    "an app": (_message(event="Product Viewed", context={"app": {"name": "x"}}), CLAIMED),
    "a zero app": (_message(event="Product Viewed", context={"app": 0.0}), CLAIMED),
    "an iOS device": (
        _message(event="Product Viewed", context={"device": {"type": "IOS"}}),
        CLAIMED,
    ),
    "a padded device type": (
        _message(event="Product Viewed", context={"device": {"type": "ios x"}}),
        CLAIMED,
    ),
    "a DEL in a device type": (
        _message(event="Product Viewed", context={"device": {"type": "io\x7fs"}}),
        LEFT,
    ),
    "a long device type": (
        _message(event="Product Viewed", context={"device": {"type": "x" * 80}}),
        SCANNED,
    ),
    "a numeric device type": (
        _message(event="Product Viewed", context={"device": {"type": 5}}),
        CLAIMED,
    ),
    "an odd email": (_message(context={"traits": {"email": "a@b"}}), LEFT),
    "a null email": (_message(context={"traits": {"email": None}}), CLAIMED),
}


@pytest.mark.parametrize("name", list(_ROW_CASES), ids=list(_ROW_CASES))
def test_row_builder_by_hand(connection, name: str) -> None:
    raw, verdict = _ROW_CASES[name]
    assert check_rows(connection, [raw]) == [verdict]


def test_row_builder_on_generated_lines(connection) -> None:
    rng = random.Random(5)
    raws = [_common_line(rng) for _ in range(3000)] + [_random_line(rng) for _ in range(3000)]
    verdicts = check_rows(connection, raws)
    assert verdicts.count(CLAIMED) > 800 and verdicts.count(LEFT) > 500


def test_common_rows_are_the_same_without_the_row_builder(monkeypatch) -> None:
    scan = vectorised.scan_lines
    _check_common_rows(
        9,
        lambda: monkeypatch.setattr(
            vectorised, "scan_lines", lambda lines: scan(lines, build_rows=False)
        ),
    )


def _timestamp_texts() -> st.SearchStrategy:
    """Near misses of the forms the row builder reads: every part at and past its limits."""
    two = st.integers(0, 99).map(lambda n: f"{n:02d}")
    parts = st.tuples(
        st.one_of(st.sampled_from([1969, 1970, 2024, 2026, 2099, 2100]), st.integers(0, 9999)),
        st.one_of(st.sampled_from(["01", "02", "12", "00", "13"]), two),
        st.one_of(st.sampled_from(["01", "28", "29", "30", "31", "00", "32"]), two),
        st.sampled_from(["T", "T", "T", " ", "t"]),
        st.one_of(st.sampled_from(["00", "23", "24"]), two),
        st.one_of(st.sampled_from(["00", "59", "60"]), two),
        st.one_of(st.sampled_from(["00", "59", "60"]), two),
        st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,10}", fullmatch=True)),
        st.one_of(
            st.sampled_from(["Z", "Z", "z", "", "+00:00", "-00:00", "+23:59", "+24:00", "+0200"]),
            st.from_regex(r"[+-][0-9]{2}:[0-9]{2}", fullmatch=True),
        ),
    )
    return parts.map(
        lambda p: f"{p[0]:04d}-{p[1]}-{p[2]}{p[3]}{p[4]}:{p[5]}:{p[6]}{p[7]}{p[8]}"
    ) | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.Z+-]{8,20}", fullmatch=True)


_ROW_TEXT = st.from_regex(r"[a-zA-Z0-9.@!#{}\[\]~^`|\x7f _-]{0,12}", fullmatch=True)
_ROW_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 0.0, -0.0, 1, 0.5, "", "x", {}, {"a": 1}, [], [1], "0"]),
    _ROW_TEXT,
)


def _maybe_key(key: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just({}), values.map(lambda value: {key: value}))


def _merged(parts: tuple) -> dict:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


_ROW_MESSAGES = st.tuples(
    _maybe_key("type", st.sampled_from(["track"] * 6 + ["page", "screen", "identify", "Track"])),
    _maybe_key("event", st.one_of(st.sampled_from(list(CANONICAL_EVENTS)), _ROW_TEXT, _ROW_VALUES)),
    _maybe_key("messageId", st.one_of(st.from_regex(r"m-[0-9]{1,4}", fullmatch=True), _ROW_VALUES)),
    _maybe_key("timestamp", st.one_of(_timestamp_texts(), _timestamp_texts(), _ROW_VALUES)),
    _maybe_key("userId", st.one_of(_ROW_TEXT, _ROW_VALUES)),
    _maybe_key("anonymousId", _ROW_VALUES),
    _maybe_key(
        "properties",
        st.one_of(
            st.none(),
            st.tuples(
                *[
                    _maybe_key(key, _ROW_VALUES)
                    for key in ("revenue", "price", "quantity", "product_id", "category", "x")
                ],
                _maybe_key(
                    "channel",
                    st.one_of(
                        st.sampled_from(["email", "sms", "push", "web", "app", "SMS"]), _ROW_VALUES
                    ),
                ),
                _maybe_key("currency", st.sampled_from(["EUR", "", "total", "device"])),
            ).map(_merged),
        ),
    ),
    _maybe_key(
        "context",
        st.one_of(
            st.none(),
            st.tuples(
                _maybe_key(
                    "traits",
                    st.tuples(
                        _maybe_key(
                            "email",
                            st.one_of(
                                st.from_regex(r"[a-zA-Z.@#!~{}\x7f-]{0,10}", fullmatch=True),
                                _ROW_VALUES,
                            ),
                        ),
                        _maybe_key("phone", st.one_of(st.just("+447911123456"), _ROW_VALUES)),
                    ).map(_merged),
                ),
                _maybe_key(
                    "device",
                    st.tuples(
                        _maybe_key("id", _ROW_VALUES),
                        _maybe_key(
                            "type",
                            st.one_of(
                                st.sampled_from(["ios", "Android", "TVOS", "ios ", "x" * 70]),
                                _ROW_TEXT,
                                _ROW_VALUES,
                            ),
                        ),
                    ).map(_merged),
                ),
                _maybe_key("app", _ROW_VALUES),
            ).map(_merged),
        ),
    ),
).map(lambda parts: orjson.dumps(_merged(parts)).decode())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raws=st.lists(_ROW_MESSAGES, min_size=1, max_size=40))
def test_row_builder_hypothesis(raws: list[str]) -> None:
    check_rows(_property_connection(), raws)


@settings(max_examples=300, deadline=None)
@given(text=_timestamp_texts())
def test_row_builder_timestamps(text: str) -> None:
    check_rows(_property_connection(), [_message(timestamp=text)])


def test_row_builder_many_timestamps(connection) -> None:
    """Every day of some years and the ends of the range, with offsets: one batch."""
    rng = random.Random(11)
    texts = []
    for year in (1970, 1999, 2000, 2024, 2026, 2099):
        for month in range(1, 13):
            for day in (1, 28, 29, 30, 31):
                zone = rng.choice(["Z", "+05:30", "-11:00", "+14:00", "-00:00"])
                fraction = rng.choice(["", ".5", ".123456", ".000001"])
                texts.append(
                    f"{year}-{month:02d}-{day:02d}T{rng.randrange(24):02d}:59:59{fraction}{zone}"
                )
    texts += ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00+00:01", "2099-12-31T23:59:59.999999Z"]
    verdicts = check_rows(connection, [_message(timestamp=text) for text in texts])
    assert verdicts.count(CLAIMED) > 0.8 * len(texts)
