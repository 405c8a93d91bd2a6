"""The command line: --json output, exit codes and messages a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from kairos.cli import app

runner = CliRunner()


def write_events(path: Path, count: int, bad: int = 0) -> Path:
    lines = [
        orjson.dumps(
            {
                "type": "track",
                "messageId": f"m-{i}",
                "event": "Product Viewed",
                "timestamp": "2026-01-05T10:00:00Z",
                "anonymousId": f"a-{i % 3}",
            }
        )
        for i in range(count)
    ]
    lines += [b"{broken"] * bad
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_ingest_json_reports_counts(tmp_path: Path, workspace: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", 5, bad=2)
    result = runner.invoke(app, ["ingest", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("read", "accepted", "duplicate", "rejected")} == {
        "read": 7,
        "accepted": 5,
        "duplicate": 0,
        "rejected": 2,
    }
    assert (workspace / "events.duckdb").exists()  # $KAIROS_HOME is the default workspace


def test_ingest_human_output_and_explicit_workspace(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", 3)
    result = runner.invoke(app, ["ingest", str(path), "--workspace", str(tmp_path / "brand")])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.stdout
    assert (tmp_path / "brand" / "events.duckdb").exists()


def test_unreadable_input_exits_1_but_other_files_are_ingested(
    tmp_path: Path, workspace: Path
) -> None:
    good = write_events(tmp_path / "good.jsonl", 4)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["ingest", str(empty), str(good), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["accepted"] == 4
    assert report["errors"] == [f"{empty}: file is empty, nothing to ingest"]


def test_bad_mapping_is_a_usage_error(tmp_path: Path, workspace: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["ingest", str(path), "--map", "colour=a", "--event", "X"])
    assert result.exit_code == 2
    assert "unknown mapping field 'colour'" in result.output


def test_unknown_timezone_is_a_usage_error(tmp_path: Path, workspace: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", 1)
    result = runner.invoke(app, ["ingest", str(path), "--timezone", "Mars/Base"])
    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Base'" in result.output


def test_features_build_writes_one_row_per_profile_seen_by_then(
    tmp_path: Path, workspace: Path
) -> None:
    path = write_events(tmp_path / "e.jsonl", 6)  # anonymous ids a-0, a-1, a-2
    assert runner.invoke(app, ["ingest", str(path)]).exit_code == 0
    out = tmp_path / "features.parquet"
    result = runner.invoke(
        app, ["features", "build", "--at", "2026-01-05T10:00:00", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["profiles"] == 3
    import pandas as pd

    frame = pd.read_parquet(out)
    assert frame["profile_id"].nunique() == 3  # one per anonymous id, named by identity
    assert frame["events_total"].tolist() == [2, 2, 2]
    early = runner.invoke(
        app, ["features", "build", "--at", "2026-01-05T09:59:59", "--out", str(out), "--json"]
    )
    assert json.loads(early.stdout)["profiles"] == 0  # nothing happened yet


def test_features_build_refuses_unknown_output_format(tmp_path: Path, workspace: Path) -> None:
    result = runner.invoke(
        app, ["features", "build", "--at", "2026-01-05", "--out", str(tmp_path / "f.xlsx")]
    )
    assert result.exit_code == 2
    assert "output must end in .parquet or .csv" in result.output


@pytest.mark.slow
def test_demo_runs_every_stage_end_to_end(tmp_path: Path) -> None:
    """The newcomer's command: simulate, ingest with identity, train with baselines and the
    oracle, score with the champion, segments with those scores."""
    import duckdb
    import pandas as pd

    ws = tmp_path / "ws"
    result = runner.invoke(
        app, ["demo", "--customers", "150", "--days", "42", "--workspace", str(ws)]
    )
    assert result.exit_code == 0, result.output
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert stage in result.output
    assert "new champion" in result.output
    with duckdb.connect(str(ws / "events.duckdb"), read_only=True) as connection:
        profiles = connection.sql("SELECT count(DISTINCT profile_id) FROM identity_identifiers")
        profile_count = profiles.fetchall()[0][0]
    scores = pd.read_parquet(ws / "demo" / "scores.parquet")
    assert len(scores) == profile_count  # every resolved profile is scored once
    assert scores["p_convert"].between(0, 1).all()
    members = pd.read_parquet(ws / "demo" / "segments.parquet")
    assert set(members["profile_id"]) <= set(scores["profile_id"])
    assert "high_intent" in set(members["segment"])  # from the model's scores


def test_ingest_appends_in_the_library_default_batches(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --batch-size, `kairos ingest` appends in the batches the ingest benchmark
    measures (IngestOptions' default); with it, in the batches asked for."""
    import features.ingest

    used = []
    real = features.ingest.ingest_file

    def recording(store, path, options, *args, **kwargs):
        used.append(options.batch_size)
        return real(store, path, options, *args, **kwargs)

    monkeypatch.setattr(features.ingest, "ingest_file", recording)
    path = write_events(tmp_path / "e.jsonl", 5)
    assert runner.invoke(app, ["ingest", str(path), "--json"]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(path), "--json", "--batch-size", "2"]).exit_code == 0
    assert used == [features.ingest.IngestOptions().batch_size, 2]
