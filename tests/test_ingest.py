"""Ingest: every record accounted for, idempotent re-ingest, atomic batches, clear file errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import ingest
from features.contract import NormaliseOptions
from features.ingest import IngestOptions, InputError, ingest_file
from features.store import EventStore
from features.tabular import MappingError, parse_mapping


def good(i: int, **overrides) -> dict:
    return {
        "type": "track",
        "messageId": f"m-{i}",
        "timestamp": f"2026-01-05T10:{i % 60:02d}:00Z",
        "anonymousId": f"anon-{i % 7}",
        "event": "Product Viewed",
        "properties": {"product_id": f"p-{i}", "category": "mugs", "price": 4.5},
        **overrides,
    }


def write_lines(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else orjson.dumps(line))
            f.write(b"\n")
    return path


def store_rows(store: EventStore) -> list[dict]:
    return store.query("SELECT * EXCLUDE (ingest_run) FROM events ORDER BY message_id").to_pylist()


# --- Dead letters: a precise reason per bad-input kind ------------------------------------------

BAD_LINES = [
    pytest.param(b'{"type": "track", "event": ', "malformed JSON", id="malformed-json"),
    pytest.param(
        orjson.dumps({**good(1), "timestamp": None}), "missing timestamp", id="missing-timestamp"
    ),
    pytest.param(
        orjson.dumps({**good(2), "timestamp": "31/12/2026"}),
        "unparseable timestamp '31/12/2026'",
        id="unparseable-date",
    ),
    pytest.param(
        orjson.dumps({**good(3), "type": "shout"}),
        "unknown message type 'shout'",
        id="unknown-type",
    ),
    pytest.param(
        orjson.dumps({k: v for k, v in good(4).items() if k != "anonymousId"}),
        "no identifier",
        id="no-identifier",
    ),
    pytest.param(b'"just a string"', "expected a JSON object, got string", id="not-an-object"),
    pytest.param(b'{"a": "' + b"x" * 40_000 + b'"}', "over the 32 KiB limit", id="oversized"),
    pytest.param(b"\xff\xfe{}", "malformed JSON", id="invalid-utf8"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_record_is_dead_lettered_and_the_rest_kept(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = write_lines(tmp_path / "events.jsonl", [good(10), line, good(11)])
    with EventStore(tmp_path / "store.duckdb") as store:
        report = ingest_file(store, path)
        dead = store.query("SELECT position, raw, reason FROM dead_letters").to_pylist()
        assert store.count() == 2
    assert (report.read, report.accepted, report.duplicate, report.rejected) == (3, 2, 0, 1)
    assert len(dead) == 1
    assert dead[0]["position"] == 2  # the line number
    assert reason in dead[0]["reason"]
    assert dead[0]["raw"][:20] == line.decode("utf-8", errors="replace")[:20]


# --- The accounting invariant -------------------------------------------------------------------

RECORD_KINDS = st.sampled_from(["good", "repeat", "bad-json", "no-id", "blank"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=st.lists(RECORD_KINDS, min_size=1, max_size=60), batch_size=st.integers(1, 25))
def test_read_equals_accepted_plus_duplicate_plus_rejected(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], batch_size: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("mix")
    lines, goods, expected = [], [], {"accepted": 0, "duplicate": 0, "rejected": 0}
    for i, kind in enumerate(kinds):
        if kind == "good":
            lines.append(good(i))
            goods.append(lines[-1])
            expected["accepted"] += 1
        elif kind == "repeat":
            previous = next((line for line in reversed(lines) if line in goods), None)
            lines.append(previous or good(i))
            expected["duplicate" if previous else "accepted"] += 1
            goods.append(lines[-1])
        elif kind == "bad-json":
            lines.append(b"{not json")
            expected["rejected"] += 1
        elif kind == "no-id":
            lines.append({**good(i), "anonymousId": None})
            expected["rejected"] += 1
        else:
            lines.append(b"   ")
    if all(kind == "blank" for kind in kinds):
        lines.append(good(999))
        expected["accepted"] += 1
    path = write_lines(tmp_path / "mix.jsonl", lines)
    with EventStore(tmp_path / "store.duckdb") as store:
        report = ingest_file(store, path, IngestOptions(batch_size=batch_size))
        assert report.read == report.accepted + report.duplicate + report.rejected
        counts = {k: getattr(report, k) for k in expected}
        assert counts == expected
        assert store.count() == expected["accepted"]
        assert store.count("dead_letters") == expected["rejected"]
        again = ingest_file(store, path, IngestOptions(batch_size=batch_size))
        assert (again.accepted, again.duplicate, again.rejected) == (
            0,
            expected["accepted"] + expected["duplicate"],
            expected["rejected"],
        )
        assert store.count() == expected["accepted"]


def test_reingest_changes_nothing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "e.jsonl", [good(i) for i in range(50)])
    with EventStore(tmp_path / "store.duckdb") as store:
        ingest_file(store, path)
        before = store_rows(store)
        report = ingest_file(store, path)
        assert store_rows(store) == before
    assert (report.accepted, report.duplicate) == (0, 50)


# --- Atomic batches -----------------------------------------------------------------------------


def test_failure_inside_a_batch_leaves_no_half_written_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "e.jsonl", [good(i) for i in range(30)] + [b"{bad"])
    original = EventStore.append
    calls = []

    def fail_on_second_batch(self, events, dead_letters, source, ingest_run):
        calls.append(events.num_rows)
        if len(calls) == 2:
            # The events insert runs, then the dead-letter insert fails in the same transaction.
            dead_letters = dead_letters.drop_columns(["reason"])
        return original(self, events, dead_letters, source, ingest_run)

    with EventStore(tmp_path / "store.duckdb") as store:
        monkeypatch.setattr(EventStore, "append", fail_on_second_batch)
        with pytest.raises(Exception, match="reason"):
            ingest_file(store, path, IngestOptions(batch_size=10))
        assert store.count() == 10  # the first batch only, not part of the second
        monkeypatch.setattr(EventStore, "append", original)
        report = ingest_file(store, path, IngestOptions(batch_size=10))
        assert (report.accepted, report.duplicate, report.rejected) == (20, 10, 1)
        assert store.count() == 30


# --- Formats ------------------------------------------------------------------------------------


def test_batch_envelopes_json_arrays_and_gzip(tmp_path: Path) -> None:
    envelope = {"batch": [good(1), good(2)], "context": {"device": {"id": "dev-1"}}}
    jsonl = write_lines(tmp_path / "a.jsonl", [envelope, good(3)])
    array = tmp_path / "b.json"
    array.write_bytes(orjson.dumps([good(4), good(5)]))
    single = tmp_path / "c.json"
    single.write_bytes(orjson.dumps(good(6)))
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(orjson.dumps(good(7)) + b"\n")
    with EventStore(tmp_path / "store.duckdb") as store:
        reports = [ingest_file(store, p) for p in (jsonl, array, single, gz)]
        rows = store.query("SELECT message_id, device_id FROM events").to_pylist()
    devices = {r["message_id"]: r["device_id"] for r in rows}
    assert [r.accepted for r in reports] == [3, 2, 1, 1]
    assert devices["m-1"] == devices["m-2"] == "dev-1"  # the envelope's context is a default
    assert devices["m-3"] is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "file is empty"),
        ("blank.jsonl", b"\n  \n", "no records found"),
        ("binary.jsonl", b"PAR1\x00\x00\x15\x04", "not a text file"),
        ("events.xyz", b"{}", "cannot tell the format"),
    ],
    ids=["empty", "only-blank-lines", "binary", "unknown-extension"],
)
def test_unreadable_files_raise_input_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with EventStore(tmp_path / "store.duckdb") as store:
        with pytest.raises(InputError, match=message):
            ingest_file(store, path)
        assert store.count() == 0


def test_missing_file(tmp_path: Path) -> None:
    with EventStore(tmp_path / "store.duckdb") as store, pytest.raises(InputError, match="no such"):
        ingest_file(store, tmp_path / "nope.jsonl")


# --- Tabular files through a column mapping -----------------------------------------------------

ORDERS_CSV = """order,sku,qty,unit_price,customer,when
A1,P1,2,3.50,17850,2011-01-10 09:00:00
A1,P2,1,10.00,17850,2011-01-10 09:00:00
C2,P1,-2,3.50,17850,2011-01-11 12:30:00
A3,P3,1,5.00,,2011-07-01 15:00:00
A4,P4,1,1.00,13047,not a date
"""


def orders_mapping():
    return parse_mapping(
        [
            "order_id=order",
            "product_id=sku",
            "quantity=qty",
            "price=unit_price",
            "user_id=customer",
            "timestamp=when",
        ],
        event="Order Completed",
    )


def test_tabular_orders_group_lines_and_keep_cancellations(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    options = IngestOptions(
        mapping=orders_mapping(), normalise=NormaliseOptions(timezone="Europe/London")
    )
    with EventStore(tmp_path / "store.duckdb") as store:
        report = ingest_file(store, path, options)
        events = store.query(
            "SELECT event, order_id, user_id, revenue, timestamp, properties FROM events "
            "ORDER BY order_id"
        ).to_pylist()
        reasons = [r["reason"] for r in store.query("SELECT reason FROM dead_letters").to_pylist()]
    assert (report.rows, report.read, report.accepted, report.rejected) == (5, 4, 2, 2)
    assert [(e["event"], e["order_id"], e["user_id"], e["revenue"]) for e in events] == [
        ("Order Completed", "A1", "17850", 17.0),
        ("Order Cancelled", "C2", "17850", -7.0),
    ]
    assert str(events[0]["timestamp"]) == "2011-01-10 09:00:00"  # GMT in winter
    assert [p["product_id"] for p in json.loads(events[0]["properties"])["products"]] == [
        "P1",
        "P2",
    ]
    assert sorted(reasons) == sorted(
        [
            "no identifier: needs userId, anonymousId, an email, a phone or context.device.id",
            "unparseable timestamp 'not a date' (expected ISO 8601)",
        ]
    )


@pytest.mark.parametrize(
    ("pairs", "event", "message"),
    [
        (["user=customer", "timestamp=when"], "X", "unknown mapping field 'user'"),
        (["user_id"], "X", "expected FIELD=COLUMN"),
        (["user_id=customer"], "X", "needs a timestamp column"),
        (["user_id=customer", "timestamp=when"], None, "needs --event NAME"),
    ],
    ids=["unknown-field", "no-equals", "no-timestamp", "no-event"],
)
def test_mapping_errors(pairs: list[str], event: str | None, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        parse_mapping(pairs, event)


def test_mapping_to_a_missing_column_names_the_columns_it_has(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    mapping = parse_mapping(["user_id=CustomerID", "timestamp=when"], event="Order Completed")
    with (
        EventStore(tmp_path / "s.duckdb") as store,
        pytest.raises(
            InputError, match=r"column `CustomerID` \(for user_id\) missing; have: order, sku"
        ),
    ):
        ingest_file(store, path, IngestOptions(mapping=mapping))


@pytest.mark.real_data
def test_real_online_retail_slice(tmp_path: Path, real_data: Path) -> None:
    import pandas as pd

    frame = pd.read_parquet(real_data / "online_retail_ii_2009_2010.parquet").head(5000)
    path = tmp_path / "slice.parquet"
    frame.to_parquet(path)
    mapping = parse_mapping(
        [
            "user_id=Customer ID",
            "timestamp=InvoiceDate",
            "order_id=Invoice",
            "product_id=StockCode",
            "name=Description",
            "quantity=Quantity",
            "price=Price",
        ],
        event="Order Completed",
    )
    with EventStore(tmp_path / "s.duckdb") as store:
        report = ingest_file(store, path, IngestOptions(mapping=mapping))
        totals = store.query(
            "SELECT event, count(*) AS n, round(sum(revenue), 2) AS revenue FROM events "
            "GROUP BY event ORDER BY event"
        ).to_pylist()
        again = ingest_file(store, path, IngestOptions(mapping=mapping))
    with_customer = frame.dropna(subset=["Customer ID"])
    invoices = with_customer.groupby("Invoice")
    expected_orders = sum(1 for _, g in invoices if g["Quantity"].sum() >= 0)
    expected_cancelled = invoices.ngroups - expected_orders
    assert report.rows == 5000
    assert report.read == frame["Invoice"].nunique()
    assert report.accepted == invoices.ngroups
    assert report.rejected == report.read - invoices.ngroups  # guests: no customer id
    by_event = {t["event"]: t for t in totals}
    assert by_event["Order Completed"]["n"] == expected_orders
    assert by_event.get("Order Cancelled", {"n": 0})["n"] == expected_cancelled
    line_revenue = (with_customer["Quantity"] * with_customer["Price"]).sum()
    assert sum(t["revenue"] for t in totals) == pytest.approx(line_revenue, abs=0.05)
    assert (again.accepted, again.duplicate) == (0, report.accepted)


@pytest.mark.slow
def test_killed_ingest_leaves_a_consistent_store_that_a_rerun_completes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    count = 120_000
    path = write_lines(tmp_path / "big.jsonl", [good(i) for i in range(count)])
    store_path = tmp_path / "store.duckdb"
    script = (
        "import sys; from pathlib import Path; from features.store import EventStore; "
        "from features.ingest import ingest_file, IngestOptions; "
        "s = EventStore(sys.argv[1]); ingest_file(s, Path(sys.argv[2]), "
        "IngestOptions(batch_size=2000, workers=1))"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(store_path), str(path)])
    time.sleep(2.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    with EventStore(store_path) as store:
        stored = store.count()
        ids = {r["message_id"] for r in store.query("SELECT message_id FROM events").to_pylist()}
        assert ids == {f"m-{i}" for i in range(stored)}  # whole batches, in file order
        assert store.count("ingest_runs") == (1 if stored == count else 0)
        report = ingest_file(store, path, IngestOptions(batch_size=2000))
        assert (report.accepted, report.duplicate) == (count - stored, stored)
        assert store.count() == count


# 0: the general query runs on whatever the common-shape query leaves; 10**9: it never runs
# and those lines take the reference path (the default skips it for a few thousand lines).
GENERAL_QUERY_THRESHOLDS = pytest.mark.parametrize(
    "general_min_lines", [0, 10**9], ids=["general query", "reference for the rest"]
)


@GENERAL_QUERY_THRESHOLDS
def test_vectorised_path_stores_what_the_reference_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, general_min_lines: int
) -> None:
    import features.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_GENERAL_QUERY_MIN_LINES", general_min_lines)
    lines = [good(i) for i in range(40)] + [b"{bad", good(3), {**good(50), "type": "shout"}]
    lines += [{**good(60), "event": "order_completed", "context": {"traits": {"email": "X@Y.io"}}}]
    path = write_lines(tmp_path / "e.jsonl", lines)
    stored = []
    for vectorised in (False, True):
        with EventStore(tmp_path / f"store-{vectorised}.duckdb") as store:
            report = ingest_file(store, path, IngestOptions(vectorised=vectorised, batch_size=16))
            rows = store_rows(store)
            dead = store.query("SELECT position, reason FROM dead_letters ORDER BY 1").to_pylist()
        for row in rows:
            row["properties"] = json.loads(row["properties"]) if row["properties"] else None
            row["traits"] = json.loads(row["traits"]) if row["traits"] else None
        stored.append((report.as_dict() | {"seconds": 0, "events_per_second": 0}, rows, dead))
    assert stored[0][0]["accepted"] == 41
    assert stored[1] == stored[0]


@GENERAL_QUERY_THRESHOLDS
@pytest.mark.parametrize("batch_size", [3, 16, 100_000])
def test_vectorised_blocks_store_what_the_reference_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int, general_min_lines: int
) -> None:
    """The block path (lines as Arrow straight from the bytes, several blocks in flight) keeps
    every line's number, order, dead letter and count, whatever sits between good lines."""
    import features.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_VECTORISED_CHUNK_BYTES", 700)  # many small blocks
    monkeypatch.setattr(ingest_module, "_VECTORISED_SCAN_ROWS", 2)  # many scan batches
    monkeypatch.setattr(ingest_module, "_GENERAL_QUERY_MIN_LINES", general_min_lines)
    envelope = {"batch": [good(70), good(71)], "context": {"traits": {"email": "a@b.io"}}}
    lines = [good(i) for i in range(30)]
    lines[3:3] = [b"", b"   ", b"\t"]  # blank lines are not records
    lines[9:9] = [b"\xff\xfe not utf-8", orjson.dumps(envelope), good(5)]  # bad bytes; repeat
    lines[15:15] = [orjson.dumps({**good(80), "pad": "x" * 40_000})]  # over the record limit
    odd = orjson.dumps(good(82))[:-1] + b',"a":1e400}'  # read differently by yyjson and orjson
    lines[20:20] = [orjson.dumps(good(81)) + b"\r", b'{"type": "track"', odd]
    path = tmp_path / "e.jsonl"
    write_lines(path, lines)
    with open(path, "ab") as f:
        f.write(orjson.dumps(good(90)))  # no newline at the end
    results = []
    for vectorised in (False, True):
        with EventStore(tmp_path / f"store-{vectorised}-{batch_size}.duckdb") as store:
            options = IngestOptions(vectorised=vectorised, batch_size=batch_size, workers=1)
            report = ingest_file(store, path, options)
            rows = store.query("SELECT * EXCLUDE (ingest_run) FROM events ORDER BY rowid")
            dead = store.query("SELECT position, raw, reason FROM dead_letters ORDER BY rowid")
        results.append((report.as_dict() | {"seconds": 0, "events_per_second": 0}, rows, dead))
    reference, vectorised_result = results
    counts = reference[0]
    assert counts["read"] == counts["accepted"] + counts["duplicate"] + counts["rejected"]
    assert counts["duplicate"] == 1 and counts["rejected"] >= 3
    assert vectorised_result[0] == reference[0]
    assert vectorised_result[2].to_pylist() == reference[2].to_pylist()
    expected = reference[1].to_pylist()
    actual = vectorised_result[1].to_pylist()
    for row in expected + actual:  # equal as JSON: yyjson and orjson may space it differently
        row["properties"] = json.loads(row["properties"]) if row["properties"] else None
        row["traits"] = json.loads(row["traits"]) if row["traits"] else None
    assert actual == expected


def test_the_c_scanner_is_built() -> None:
    """`make install` compiles features/_jsonscan.c. Without it ingest quietly takes the slower
    SQL path and tests/test_jsonscan.py is skipped, so an installed tree must have it."""
    from features import vectorised

    assert vectorised._jsonscan is not None, "features._jsonscan is not built: run `make install`"


@settings(max_examples=60, deadline=None)
@given(
    positions=st.sets(st.integers(0, 400), max_size=120),
    spliced=st.sampled_from([0, 5, 1_000]),
    data=st.data(),
)
def test_merged_by_position_is_the_stable_sort(positions, spliced, data) -> None:
    """Spliced or sorted, two position-ordered tables merge into the order a sort gives."""
    ordered = sorted(positions)
    taken = data.draw(st.sets(st.sampled_from(ordered))) if ordered else set()

    def table(rows: list[int]) -> pa.Table:
        return pa.table(
            {
                "position": pa.array(rows, pa.int64()),
                "text": pa.array([f"row {row}" for row in rows], pa.string()),
            }
        )

    claimed = table([p for p in ordered if p not in taken])
    claimed = pa.Table.from_batches(claimed.to_batches(max_chunksize=7), schema=claimed.schema)
    events = table([p for p in ordered if p in taken])
    expected = pa.concat_tables([claimed, events]).sort_by("position")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "_SPLICED_ROWS", spliced)
        merged = ingest._merged_by_position(claimed, events)
    assert merged.equals(expected)
    assert merged.column("text").num_chunks <= 1
