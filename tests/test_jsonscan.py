"""The C scanner (features/_jsonscan.c) against DuckDB itself.

It may only scan a line whose raw text passes kairos_plain_line and kairos_screened, has no
duplicate key in an object the common query reads, and whose every VALUE_PATHS value it writes
exactly as json_extract does; it may skip only lines that fail those two macros. Refusing is
always allowed (the line takes the SQL path). The common query's rows are then the same with
and without the scanner (tests/test_vectorised.py holds those rows to the reference).
"""

from __future__ import annotations

import random
import struct

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vectorised import _LINES, _common_line, _lines, _random_line

from features import vectorised
from features.vectorised import VALUE_PATHS, common_shape_rows, scan_lines

pytestmark = pytest.mark.skipif(vectorised._jsonscan is None, reason="features._jsonscan not built")

SKIPPED, SCANNED, REFUSED = 0, 1, 2
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
    verdicts, fields = scan_lines(_lines(raws))
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
    return int(scan_lines(_lines([raw]))[0][0])


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
    """The common query's rows on the scanner's columns equal its rows on the raw JSON."""
    rng = random.Random(8)
    raws = [_common_line(rng) for _ in range(1500)] + [_random_line(rng) for _ in range(1500)]
    rng.shuffle(raws)
    lines = pa.Table.from_batches(_lines(raws).to_batches(max_chunksize=700))
    with_scanner = common_shape_rows(lines)
    monkeypatch.setattr(vectorised, "_jsonscan", None)
    without = common_shape_rows(lines)
    assert with_scanner.num_rows > 500
    assert with_scanner.equals(without)


def test_sliced_and_large_string_chunks() -> None:
    """Chunks that are slices of a bigger array, and large_string chunks, scan alike."""
    rng = random.Random(4)
    raws = [_common_line(rng) for _ in range(300)]
    whole = _lines(raws)
    expected_verdicts, expected = scan_lines(whole)
    sliced = pa.Table.from_batches(whole.to_batches(max_chunksize=7))
    large = whole.set_column(1, "raw", whole.column("raw").cast(pa.large_string()))
    for table in (sliced, large):
        verdicts, fields = scan_lines(table)
        assert verdicts.tolist() == expected_verdicts.tolist()
        assert fields.combine_chunks().equals(expected.combine_chunks())


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
    same digits nudged by one in the last place or lengthened: one differential batch."""
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
    verdicts = check_scanner(connection, raws)
    shortest = [verdicts[i] for i, text in enumerate(texts) if text == repr(float(text))]
    assert shortest.count(SCANNED) > 0.5 * len(shortest)
