"""`kairos segments`: memberships to a file with a size report, validate, explain."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.ingest import ingest_file
from features.store import EventStore
from kairos.cli_segments import segments_app

runner = CliRunner()
AT = "2026-03-05T00:00:00Z"


def track(message_id: str, event: str, timestamp: str, user: str, **properties) -> dict:
    return {
        "type": "track",
        "messageId": message_id,
        "event": event,
        "timestamp": timestamp,
        "userId": user,
        "context": {"traits": {"email": f"{user}@example.com"}},
        "properties": properties,
    }


@pytest.fixture
def store(tmp_path: Path, workspace: Path) -> Path:
    """A workspace ($KAIROS_HOME) whose store holds three people's events."""
    messages = [
        track("1", "Product Viewed", "2026-03-01T10:00:00Z", "ana", category="mugs"),
        track("2", "Email Delivered", "2026-03-01T09:00:00Z", "ana"),
        track("3", "Product Added", "2026-03-02T10:00:00Z", "ben"),
        track("4", "Order Completed", "2026-03-02T12:00:00Z", "cy", revenue=30),
        track("5", "Email Link Clicked", "2026-03-03T08:00:00Z", "cy"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    with EventStore(workspace / "events.duckdb") as event_store:
        ingest_file(event_store, path)
    return workspace


def test_segments_writes_memberships_and_reports_sizes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "segments.parquet"
    result = runner.invoke(segments_app, ["--at", AT, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["profiles"] == 3
    assert report["segments"]["browsed_no_purchase_7d"] == 1
    assert report["segments"]["cart_abandoners"] == 1
    assert report["fallback"] == ["high_intent", "prefers_sms_over_email"]
    table = pq.read_table(out)
    assert table.schema.names == ["profile_id", "segment", "entered_at"]
    rows = {(r["profile_id"], r["segment"]): r["entered_at"].isoformat() for r in table.to_pylist()}
    assert rows[("ana", "browsed_no_purchase_7d")] == "2026-03-01T10:00:00"
    assert rows[("ben", "cart_abandoners")] == "2026-03-02T11:00:00"  # added + 1 h wait
    assert rows[("cy", "clicked_no_checkout")] == "2026-03-04T08:00:00"  # click + 24 h
    assert rows[("ana", "engaged")] == "2026-03-01T09:00:00"


def test_segments_only_some(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    arguments = ["--at", AT, "--out", str(out), "--segment", "active", "--json"]
    result = runner.invoke(segments_app, arguments)
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["segments"]) == ["engaged", "active"]
    bad = runner.invoke(segments_app, ["--at", AT, "--out", str(out), "--segment", "actve"])
    assert bad.exit_code == 2 and "did you mean active?" in bad.output


def test_segments_human_report_and_csv(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "segments.csv"
    result = runner.invoke(segments_app, ["--at", AT, "--out", str(out), "--no-entered-at"])
    assert result.exit_code == 0, result.output
    assert "browsed_no_purchase_7d" in result.stdout and "% of profiles" in result.stdout
    assert "high_intent (fallback rule)" in result.stdout
    assert out.read_text().splitlines()[0] == '"profile_id","segment","entered_at"'


def test_segments_with_scores_uses_the_model_rule(store: Path, tmp_path: Path) -> None:
    scores = tmp_path / "scores.parquet"
    pq.write_table(
        pa.table(
            {
                "profile_id": ["ana", "ben", "cy"],
                "p_convert": [0.2, 0.9, 0.5],
                "p_engage_email": [0.1, 0.1, 0.1],
                "p_engage_sms": [0.0, 0.0, 0.0],
                "p_engage_push": [0.0, 0.0, 0.0],
                "best_hour_of_week": [1, 2, 3],
            }
        ),
        scores,
    )
    out = tmp_path / "s.parquet"
    result = runner.invoke(
        segments_app, ["--at", AT, "--out", str(out), "--scores", str(scores), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fallback"] == []
    assert report["thresholds"] == {"segments.high_intent.when": 0.9}  # top 10% of ana, ben
    members = {
        r["profile_id"] for r in pq.read_table(out).to_pylist() if r["segment"] == "high_intent"
    }
    assert members == {"ben"}


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--at", AT], 2, "needs --at and --out"),
        (["--at", "yesterday", "--out", "x.parquet"], 2, "unparseable --at"),
        (["--at", AT, "--out", "x.json"], 2, "use a .parquet or .csv"),
    ],
    ids=["no-out", "bad-at", "bad-extension"],
)
def test_segments_usage_errors(store: Path, arguments, code, message) -> None:
    result = runner.invoke(segments_app, arguments)
    assert result.exit_code == code
    assert message in result.output


def test_segments_without_a_store(workspace: Path, tmp_path: Path) -> None:
    result = runner.invoke(segments_app, ["--at", AT, "--out", str(tmp_path / "s.parquet")])
    assert result.exit_code == 1
    assert "no event store" in result.output


def test_segments_rejects_bad_rules_with_path(store: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nsegments:\n  s:\n    when: {event: Order Completed, within: 0d}\n"
    )
    result = runner.invoke(
        segments_app, ["--at", AT, "--rules", str(rules), "--out", str(tmp_path / "s.csv")]
    )
    assert result.exit_code == 1
    assert "segments.s.when.within (line 4): '0d' is zero" in result.output


def test_validate_default_library(workspace: Path) -> None:
    from serving.segments.library import DEFAULT_LIBRARY

    result = runner.invoke(segments_app, ["validate", str(DEFAULT_LIBRARY), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] and "high_intent" in report["segments"] and report["warnings"] == []


def test_validate_reports_every_problem(workspace: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nsegments:\n"
        "  a:\n    when: {segment: b}\n"
        "  b:\n    when: {all: [{segment: a}, {event: Order Complete, whithin: 7d}]}\n"
    )
    result = runner.invoke(segments_app, ["validate", str(rules), "--json"])
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert errors == [
        {
            "path": "segments.b.when.all[1].whithin",
            "line": 6,
            "message": "unknown field `whithin` (did you mean `within`?)",
        }
    ]
    rules.write_text(rules.read_text().replace("whithin", "within"))
    result = runner.invoke(segments_app, ["validate", str(rules)])
    assert result.exit_code == 1
    assert "loop (a -> b -> a)" in result.output


def test_validate_warns_about_unknown_events_and_strict_fails(
    workspace: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nsegments:\n  s:\n    when: {event: Order Complete}\n")
    result = runner.invoke(segments_app, ["validate", str(rules)])
    assert result.exit_code == 0
    assert "Did you mean `Order Completed`?" in result.output
    assert runner.invoke(segments_app, ["validate", str(rules), "--strict"]).exit_code == 1


def test_validate_score_rule_needs_a_model_or_with_scores(workspace: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nsegments:\n  hot:\n    when: {score: p_convert, above: 0.5}\n")
    result = runner.invoke(segments_app, ["validate", str(rules)])
    assert result.exit_code == 1 and "no model scores are available" in result.output
    assert runner.invoke(segments_app, ["validate", str(rules), "--with-scores"]).exit_code == 0


def test_explain(store: Path) -> None:
    result = runner.invoke(segments_app, ["explain", "ana", "browsed_no_purchase_7d", "--at", AT])
    assert result.exit_code == 0, result.output
    assert (
        "ana IS in browsed_no_purchase_7d at 2026-03-05 00:00:00 (since 2026-03-01 10:00:00)"
        in result.stdout
    )
    assert "with no new events, leaves at 2026-03-08 10:00:00" in result.stdout
    as_json = runner.invoke(segments_app, ["explain", "ben", "high_intent", "--at", AT, "--json"])
    data = json.loads(as_json.stdout)
    assert data["member"] is True and data["rule"] == "fallback"


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["explain", "ana", "engagd", "--at", AT], 2, "did you mean engaged?"),
        (["explain", "nobody", "engaged", "--at", AT], 1, "no events for profile 'nobody'"),
    ],
    ids=["unknown-segment", "unknown-profile"],
)
def test_explain_errors(store: Path, arguments, code, message) -> None:
    result = runner.invoke(segments_app, arguments)
    assert result.exit_code == code
    assert message in result.output


def test_workspace_before_the_subcommand(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KAIROS_HOME")
    result = runner.invoke(
        segments_app, ["--workspace", str(store), "explain", "ana", "engaged", "--at", AT]
    )
    assert result.exit_code == 0, result.output
