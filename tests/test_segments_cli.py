"""`kairos segments`: memberships to a file with a size report, validate, explain."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
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


def profile_of(workspace: Path, user: str) -> str:
    """The identity profile id of a user (ingest resolves identities after each file)."""
    connection = duckdb.connect(str(workspace / "events.duckdb"), read_only=True)
    try:
        rows = connection.execute(
            "SELECT profile_id FROM identity_identifiers "
            "WHERE identifier_type = 'user_id' AND identifier = ?",
            [user],
        ).fetchall()
    finally:
        connection.close()
    assert len(rows) == 1 and rows[0][0].startswith("p-"), rows
    return rows[0][0]


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
    ana, ben, cy = (profile_of(store, user) for user in ("ana", "ben", "cy"))
    assert rows[(ana, "browsed_no_purchase_7d")] == "2026-03-01T10:00:00"
    assert rows[(ben, "cart_abandoners")] == "2026-03-02T11:00:00"  # added + 1 h wait
    assert rows[(cy, "clicked_no_checkout")] == "2026-03-04T08:00:00"  # click + 24 h
    assert rows[(ana, "engaged")] == "2026-03-01T09:00:00"


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
                "profile_id": [profile_of(store, user) for user in ("ana", "ben", "cy")],
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
    assert members == {profile_of(store, "ben")}


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


@pytest.mark.parametrize(
    "query", ["ana", "user_id:ana", "email:Ana@Example.com", "PROFILE"], ids=str
)
def test_explain(store: Path, query: str) -> None:
    ana = profile_of(store, "ana")
    query = ana if query == "PROFILE" else query
    result = runner.invoke(segments_app, ["explain", query, "browsed_no_purchase_7d", "--at", AT])
    assert result.exit_code == 0, result.output
    assert (
        f"{ana} IS in browsed_no_purchase_7d at 2026-03-05 00:00:00 (since 2026-03-01 10:00:00)"
        in result.stdout
    )
    if query != ana:
        assert f"is profile {ana} at 2026-03-05" in result.output
    assert "with no new events, leaves at 2026-03-08 10:00:00" in result.stdout
    as_json = runner.invoke(segments_app, ["explain", "ben", "high_intent", "--at", AT, "--json"])
    data = json.loads(as_json.stdout)
    assert data["member"] is True and data["rule"] == "fallback"
    assert (
        data["found"]
        == f"identifier ben is profile {profile_of(store, 'ben')} at 2026-03-05T00:00:00"
    )


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["explain", "ana", "engagd", "--at", AT], 2, "did you mean engaged?"),
        (["explain", "nobody", "engaged", "--at", AT], 1, "no profile or identifier 'nobody'"),
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


def test_segments_follow_identity_as_of_the_cutoff(workspace: Path, tmp_path: Path) -> None:
    """Anonymous browsing joins the account only from the login on: before it the browser is
    its own profile (browsed, no order); after it, the account's order counts."""

    def message(i: int, at: str, **fields) -> dict:
        return {"type": "track", "messageId": f"m{i}", "timestamp": at, **fields}

    messages = [
        message(1, "2026-03-01T10:00:00Z", anonymousId="phone", event="Product Viewed"),
        message(2, "2026-03-02T10:00:00Z", userId="ana", event="Order Completed", properties={}),
        {
            "type": "identify",
            "messageId": "m3",
            "timestamp": "2026-03-03T10:00:00Z",
            "anonymousId": "phone",
            "userId": "ana",
            "traits": {"email": "ana@example.com"},
        },
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    with EventStore(workspace / "events.duckdb") as event_store:
        ingest_file(event_store, path)
    ana = profile_of(workspace, "ana")

    def browsed(at: str) -> set[str]:
        out = tmp_path / f"{at[:10]}.parquet"
        result = runner.invoke(segments_app, ["--at", at, "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        rows = pq.read_table(out).to_pylist()
        return {r["profile_id"] for r in rows if r["segment"] == "browsed_no_purchase_7d"}

    # The phone's profile is the founder of Ana's merged profile, so it keeps its id.
    assert browsed("2026-03-03T09:00:00Z") == {ana}  # the phone alone: browsed, no order
    assert browsed("2026-03-03T11:00:00Z") == set()  # Ana's order on day 2 now counts
    # Any identifier of the profile explains it, as the profiles stood at --at.
    later = runner.invoke(
        segments_app,
        ["explain", "user_id:ana", "browsed_no_purchase_7d", "--at", "2026-03-03T11:00Z"],
    )
    assert later.exit_code == 0, later.output
    assert f"{ana} is NOT in browsed_no_purchase_7d" in later.stdout
    earlier = runner.invoke(
        segments_app,
        ["explain", "user_id:ana", "browsed_no_purchase_7d", "--at", "2026-03-03T09:00Z"],
    )
    assert earlier.exit_code == 0, earlier.output
    assert "is NOT in browsed_no_purchase_7d" in earlier.stdout
    assert f"is profile {ana}" not in earlier.output  # not yet linked to the phone
