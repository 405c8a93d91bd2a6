"""``kairos identity`` commands through Typer's CliRunner, on a tiny workspace, on simulated
data (quality against the simulator's truth) and on the real Online Retail data."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.identity import api as identity_api
from features.identity import profile_id_for
from features.store import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, EventStore
from kairos.cli_identity import identity_app

T0 = datetime(2026, 1, 5, 9, 0)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
runner = CliRunner()


def _event(message_id: str, minute: int, kind: str = "track", **identifiers: str) -> dict:
    return {
        "message_id": message_id,
        "type": kind,
        "event": "Product Viewed",
        "timestamp": T0 + timedelta(minutes=minute),
        **identifiers,
    }


EVENTS = [
    _event("m1", 0, anonymous_id="a1", device_id="d1"),
    _event("m2", 1, "identify", anonymous_id="a1", user_id="u1", email="ann@x.org"),
    _event("m3", 2, anonymous_id="kiosk", user_id="u1"),
    _event("m4", 3, anonymous_id="kiosk", user_id="u2"),
    _event("m5", 4, "alias", previous_id="a2", user_id="u2"),
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    table = pa.table(
        {f.name: pa.array([e.get(f.name) for e in EVENTS], f.type) for f in EVENT_SCHEMA}
    )
    empty = pa.table({f.name: pa.array([], f.type) for f in DEAD_LETTER_SCHEMA})
    with EventStore(folder / "events.duckdb") as store:
        store.append(table, empty, source="test", ingest_run="run")
    yield folder
    identity_api._GRAPHS.clear()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(identity_app, list(args))
    return result.exit_code, result.output


def test_resolve_reports_counts_as_json(workspace: Path):
    code, output = invoke("resolve", "--workspace", str(workspace), "--json")
    assert code == 0, output
    report = json.loads(output)
    assert {
        k: report[k]
        for k in ("path", "events", "identifiers", "profiles", "shared", "merges", "refused")
    } == {
        "path": "batch",
        "events": 5,
        "identifiers": 7,
        "profiles": 2,
        "shared": 1,
        "merges": 4,
        "refused": {"shared_identifier": 2},
    }


def test_explain_stats_export_unmerge(workspace: Path, tmp_path: Path):
    ws = ("--workspace", str(workspace))
    assert invoke("resolve", *ws)[0] == 0
    code, output = invoke("explain", "email:ann@x.org", *ws)
    assert code == 0, output
    assert profile_id_for("device_id", "d1") in output
    assert "How email:ann@x.org joined the profile" in output

    code, output = invoke("explain", "kiosk", *ws, "--json")
    assert code == 0 and json.loads(output)["profile_id"] is None

    code, output = invoke("stats", *ws, "--json")
    stats = json.loads(output)
    assert (code, stats["profiles"], stats["refused_by_rule"]) == (0, 2, {"shared_identifier": 2})

    out = tmp_path / "profiles.parquet"
    code, output = invoke("export", "--out", str(out), *ws)
    assert code == 0, output
    assert pq.read_table(out).column_names == ["identifier_type", "identifier", "profile_id"]
    assert pq.read_table(out).num_rows == 6

    code, output = invoke("unmerge", "--link", "user_id:u1", "device_id:d1", *ws, "--json")
    assert code == 0, output
    assert len(json.loads(output)["profiles_after"]) == 2
    code, output = invoke("stats", *ws)
    assert code == 0 and "refused: manual_split" in output


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (
            ("unmerge", "--identifier", "email:nobody@x.org"),
            "no identifier 'email:nobody@x.org'",
            1,
        ),
        (("unmerge",), "give either --identifier X or --link A B", 2),
        (("explain", "fax:123"), "no identifier 'fax:123'", 1),
        (("export", "--out", "ids.xlsx"), "unknown output format", 1),
    ],
    ids=["unmerge-missing", "unmerge-nothing", "explain-unknown", "export-format"],
)
def test_failures_say_why(workspace: Path, args: tuple, message: str, code: int):
    assert invoke("resolve", "--workspace", str(workspace))[0] == 0
    exit_code, output = invoke(*args, "--workspace", str(workspace))
    assert exit_code == code
    assert message in " ".join(output.split())


def test_commands_before_resolve_and_without_a_store(workspace: Path, tmp_path: Path):
    code, output = invoke("stats", "--workspace", str(workspace))
    assert code == 1 and "run `kairos identity resolve`" in output
    code, output = invoke("stats", "--workspace", str(tmp_path / "empty"))
    assert code == 1 and "no event store" in output


def test_resolve_with_bad_rules_exits_2(workspace: Path, tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("identifiers:\n  - {type: fax, limit: 1}\n")
    code, output = invoke("resolve", "--rules", str(rules), "--workspace", str(workspace))
    assert code == 2 and "unknown identifier type 'fax'" in " ".join(output.split())


@pytest.mark.slow
def test_quality_on_a_simulated_world_with_shared_devices(tmp_path: Path):
    """The quality benchmark on a small world: Kairos keeps precision >= 0.995 and F1 within 1%
    of the ceiling, while naive connected components over-merge."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_identity import SHARED_WORLD, run_quality

    result = run_quality(1500, 120, 11, tmp_path, SHARED_WORLD)
    assert result["kairos"]["precision"] >= 0.995, result
    assert result["f1_gap_to_ceiling"] <= 0.01 * result["ceiling"]["f1"], result
    assert result["naive"]["precision"] < result["kairos"]["precision"], result
    assert result["passes"]


@pytest.mark.slow
@pytest.mark.real_data
def test_online_retail_guests_and_customers(tmp_path: Path):
    """Real data: customers resolve to one profile each; guest rows (no customer id) have no
    identifier and are dead-lettered at ingest, so they never reach the graph."""
    path = DATA / "online_retail_2010_2011.parquet"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    from features.identity import identity_stats, resolve_identities, update_identity
    from features.ingest import IngestOptions, ingest_file
    from features.tabular import parse_mapping

    rows = pq.read_table(path).slice(0, 20_000)
    sample = tmp_path / "retail.parquet"
    pq.write_table(rows, sample)
    mapping = parse_mapping(
        [
            "user_id=CustomerID",
            "timestamp=InvoiceDate",
            "order_id=InvoiceNo",
            "product_id=StockCode",
            "quantity=Quantity",
            "price=UnitPrice",
        ],
        "Order Completed",
    )
    with EventStore(tmp_path / "ws" / "events.duckdb") as store:
        ingest_file(store, sample, IngestOptions(format="parquet", mapping=mapping))
        resolve_identities(store)
        customers = store.connection.sql(
            "SELECT count(DISTINCT user_id) FROM events WHERE user_id IS NOT NULL"
        ).fetchall()[0][0]
        stats = identity_stats(store)
        assert stats["profiles"] == customers > 0
        assert stats["identifiers_per_profile"]["max"] == 1
        assert update_identity(store).path == "incremental"
    code, output = invoke("stats", "--workspace", str(tmp_path / "ws"), "--json")
    assert code == 0 and json.loads(output)["profiles"] == customers
