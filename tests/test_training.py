"""Training end to end on a tiny simulated brand: a one-epoch smoke test, the evaluation table,
MLflow logging, the champion alias, --until, scoring, evaluate, and a bare transaction log."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import typer
from typer.testing import CliRunner

from features.ingest import ingest_file
from features.profile_source import default_profile_source
from features.simulate import simulate
from features.store import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, EventStore
from kairos.cli_training import register
from kairos.workspace import open_workspace
from training.config import build_config
from training.datasets import build_split, plan_cutoffs
from training.pipeline import build_splits, run_training

# A tiny world: 4 cutoffs a week apart, a 16-dim GRU, one epoch, few bootstrap resamples.
TINY = [
    "data.horizon_days=7",
    "data.send_window_days=3",
    "data.stride_days=7",
    "data.min_history_days=7",
    "data.max_train_cutoffs=2",
    "data.sequence_length=16",
    "model.d_model=16",
    "model.heads=2",
    "optim.epochs=1",
    "optim.batch_size=128",
    "evaluation.bootstrap_resamples=20",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    summary = simulate(root / "sim", customers=150, days=42, seed=3)
    ws = open_workspace(root / "ws")
    with EventStore(ws.event_store) as store:
        ingest_file(store, summary.events_path)
    return {"root": root, "ws": ws.root, "truth": summary.truth_path}


@pytest.fixture
def cli() -> tuple[CliRunner, typer.Typer]:
    app = typer.Typer()
    register(app)
    return CliRunner(), app


def test_one_epoch_smoke_with_every_baseline_on_the_same_split(world) -> None:
    ws = open_workspace(world["ws"])
    result = run_training(
        ws,
        build_config(overrides=TINY),
        truth_path=world["truth"],
        progress=False,
        log_to_mlflow=False,
    )
    assert len(result.trained.history) == 1
    assert result.trained.engagement_trained
    assert result.trained.examples_per_second > 0
    table = result.evaluation.table()
    intent = table[table["section"] == "intent"]
    assert {
        "sequence_model",
        "lightgbm",
        "recency_frequency",
        "recency",
        "oracle",
        "oracle_present",
        "oracle_history",
    } <= set(intent["model"])
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"):
        row = intent[(intent["model"] == "sequence_model") & (intent["metric"] == metric)]
        assert len(row) == 1 and np.isfinite(row["value"].iloc[0])
    # every intent row is evaluated on the same test profiles (the oracles on the known people)
    known = intent["model"].str.startswith("oracle") | intent["metric"].str.startswith(
        "roc_auc_minus_oracle"
    )
    assert intent[~known]["n"].nunique() == 1
    assert intent[known]["n"].nunique() == 1
    for ceiling in ("oracle_present", "oracle_history"):
        assert np.isfinite(
            result.evaluation.value("intent", "sequence_model", f"roc_auc_minus_{ceiling}")
        )
    # the addressable profiles leave out those merged into another profile after the cutoff
    addressable = table[(table["section"] == "intent_addressable") & (table["metric"] == "roc_auc")]
    assert 0 < addressable["n"].max() < intent["n"].max()
    assert any("merged into such a profile after the cutoff" in n for n in result.evaluation.notes)
    assert set(table["section"]) >= {"engagement", "send_time_ips", "send_time_truth"}
    truth_rows = table[table["section"] == "send_time_truth"]
    assert {"oracle", "global_best_hour", "most_frequent_engagement_hour"} <= set(
        truth_rows["model"]
    )
    oracle = result.evaluation.value("send_time_truth", "oracle", "true_engagement_probability")
    for model in ("sequence_model", "global_best_hour", "most_frequent_engagement_hour"):
        value = result.evaluation.value("send_time_truth", model, "true_engagement_probability")
        assert value <= oracle + 1e-9  # nothing beats the truth
    assert result.validation_metrics["intent_roc_auc"] > 0


def test_a_truth_file_from_before_the_browsing_columns_evaluates_without_the_history_row(
    world, tmp_path
) -> None:
    import pyarrow.parquet as pq

    from features.simulator.history_filter import OBSERVED_COLUMNS
    from training.oracle import SimulatorTruth

    table = pq.read_table(world["truth"])
    kept = [c for c in table.column_names if c not in OBSERVED_COLUMNS or c == "daily_clicks"]
    old = tmp_path / "truth_before.parquet"
    pq.write_table(table.select(kept), old)
    assert not SimulatorTruth.load(old).has_observed_history
    assert SimulatorTruth.load(world["truth"]).has_observed_history
    ws = open_workspace(world["ws"])
    result = run_training(
        ws, build_config(overrides=TINY), truth_path=old, progress=False, log_to_mlflow=False
    )
    models = set(result.evaluation.table()["model"])
    assert {"oracle", "oracle_present"} <= models and "oracle_history" not in models


def test_seed_ensemble_with_weight_average_trains_saves_and_reloads(world, tmp_path) -> None:
    """model.members=2 trains two seeded networks (with the moving weight average) and the
    bundle round-trips: the reloaded ensemble scores exactly as the trained one."""
    from training.model import KairosEnsemble
    from training.registry import ModelBundle
    from training.train import infer

    ws = open_workspace(world["ws"])
    config = build_config(overrides=[*TINY, "model.members=2", "optim.ema_decay=0.9"])
    result = run_training(ws, config, progress=False, log_to_mlflow=False, evaluate_test=False)
    trained = result.trained
    assert isinstance(trained.model, KairosEnsemble) and len(trained.model.members) == 2
    assert [row.get("member", 0) for row in trained.history] == [0, 1]
    first, second = (m.intent.weight.detach() for m in trained.model.members)
    assert not torch.equal(first, second)  # different seeds, different networks
    bundle = ModelBundle(
        trained.model, trained.spec, trained.calibrator, config, trained.engagement_trained
    )
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    test = result.splits.test
    before = infer(trained.model, test, trained.spec, trained.calibrator)
    after = infer(loaded.model, test, loaded.spec, loaded.calibrator)
    np.testing.assert_allclose(before.p_intent, after.p_intent, rtol=1e-5)
    np.testing.assert_array_equal(before.best_hour, after.best_hour)


def test_until_never_reads_later_events(world) -> None:
    """Examples built with --until U are identical whether or not the store holds events after
    U, and whatever those events are."""
    config = build_config(overrides=TINY)
    with duckdb.connect() as original:
        original.execute(f"ATTACH '{open_workspace(world['ws']).event_store}' AS s (READ_ONLY)")
        original.execute("CREATE TABLE events AS SELECT * FROM s.events")
        first, last = original.sql("SELECT min(timestamp), max(timestamp) FROM events").fetchall()[
            0
        ]
        until = datetime(last.year, last.month, last.day) - timedelta(days=5)
        split = plan_cutoffs(first, until, config.data)
        cutoffs = [split.train[-1], split.test[-1]]
        source = default_profile_source(original, until)
        before = build_split(original, source, cutoffs, config.data)
    with duckdb.connect() as changed:
        changed.execute(f"ATTACH '{open_workspace(world['ws']).event_store}' AS s (READ_ONLY)")
        changed.execute(
            f"CREATE TABLE events AS SELECT * FROM s.events WHERE timestamp <= '{until}'"
        )
        # After U: an order and an email open for every profile, all at one instant.
        changed.execute(f"""
            INSERT INTO events (message_id, type, event, channel, timestamp, user_id, revenue)
            SELECT 'late-' || row_number() OVER (), 'track', 'Order Completed', 'web',
                   TIMESTAMP '{until}' + INTERVAL 1 SECOND, user_id, 99.0
            FROM (SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL)
        """)
        source = default_profile_source(changed, until)
        after = build_split(changed, source, cutoffs, config.data)
    pd.testing.assert_frame_equal(before.profiles, after.profiles)
    pd.testing.assert_frame_equal(before.sends, after.sends)
    for name, array in before.arrays.items():
        np.testing.assert_array_equal(array, after.arrays[name], err_msg=name)
    assert before.profiles["ordered"].any()  # labels exist, and none came from after U


def test_train_cli_logs_everything_to_mlflow_and_scores_with_the_champion(world, cli) -> None:
    import mlflow

    runner, app = cli
    ws = open_workspace(world["ws"])
    args = ["--workspace", str(ws.root)]
    sets = [item for pair in (("--set", s) for s in TINY) for item in pair]
    result = runner.invoke(
        app,
        [
            "train",
            *sets,
            "--set",
            "optim.epochs=2",
            "--truth",
            str(world["truth"]),
            "--experiment",
            "elsewhere",  # evaluate below must write into this run's experiment
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["promoted_to_champion"] is True  # the first run is the champion
    assert summary["engagement_head"] == "trained"
    assert any(m["model"] == "lightgbm" for m in summary["metrics"])

    mlflow.set_tracking_uri(ws.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    run = client.get_run(summary["run_id"])
    params = run.data.params
    assert params["data.horizon_days"] == "7" and params["model.d_model"] == "16"
    assert params["kairos.cutoffs_test"] and params["kairos.until"]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2  # per epoch
    assert "test.intent.sequence_model.roc_auc" in run.data.metrics
    assert "test.intent.lightgbm.roc_auc_low" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/intent_roc_pr.png",
        "plots/intent_calibration.png",
        "plots/intent_gain.png",
        "plots/send_window_heatmaps.png",
        "plots/engagement_by_channel.png",
    } <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/evaluation.csv",
        "evaluation/evaluation.json",
    }

    # The registered model loads as a pyfunc with a signature and predicts on its example.
    model = mlflow.pyfunc.load_model("models:/kairos@champion")
    assert model.metadata.signature is not None
    example = model.input_example
    out = model.predict(example)
    assert {"p_convert", "best_hour_of_week", "p_engage_email"} <= set(out.columns)
    assert len(out) == len(example)

    # score: one row per profile, the DESIGN columns, the champion's version
    until = params["kairos.until"]
    out_path = world["root"] / "scores.parquet"
    result = runner.invoke(app, ["score", "--at", until, "--out", str(out_path), "--json", *args])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    frame = pd.read_parquet(out_path)
    assert scored["profiles"] == len(frame) == frame["profile_id"].nunique()
    for column in (
        "profile_id",
        "p_convert",
        "best_hour_of_week",
        "p_engage_email",
        "p_engage_sms",
        "p_engage_push",
        "engagement_tier",
        "model_version",
    ):
        assert column in frame.columns
    assert frame["p_convert"].between(0, 1).all()
    assert frame["best_hour_of_week"].between(0, 167).all()
    assert set(frame["model_version"]) == {"kairos/1"}
    assert set(frame["engagement_tier"]) <= {"high", "medium", "low", "unreachable"}

    # evaluate (default: the champion's run) writes the table into that run, in its experiment
    result = runner.invoke(app, ["evaluate", "--json", *args])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["run_id"] == summary["run_id"]
    assert any(m["section"] == "send_time_truth" for m in evaluated["metrics"])  # truth reused
    assert "kairos.evaluated_at" in client.get_run(summary["run_id"]).data.tags
    result = runner.invoke(app, ["evaluate", "--run", "0" * 32, *args])
    assert result.exit_code != 0 and "no run 00000000" in result.output


def test_champion_alias_moves_only_on_improvement(tmp_path: Path) -> None:
    import mlflow

    from training.registry import CHAMPION, promote_if_better, use_workspace

    ws = open_workspace(tmp_path / "ws")
    use_workspace(ws)
    client = mlflow.MlflowClient()
    client.create_registered_model("kairos")

    def version_with(auc: float) -> str:
        with mlflow.start_run() as run:
            mlflow.log_metric("validation.intent_roc_auc", auc)
        return client.create_model_version(
            "kairos", f"runs:/{run.info.run_id}/model", run.info.run_id
        ).version

    first = version_with(0.70)
    assert promote_if_better("kairos", first, "intent_roc_auc", 0.70, True) == (True, None)
    worse = version_with(0.65)
    assert promote_if_better("kairos", worse, "intent_roc_auc", 0.65, True) == (False, 0.70)
    assert client.get_model_version_by_alias("kairos", CHAMPION).version == first
    tie = version_with(0.70)
    assert promote_if_better("kairos", tie, "intent_roc_auc", 0.70, True)[0] is False
    better = version_with(0.75)
    assert promote_if_better("kairos", better, "intent_roc_auc", 0.75, True) == (True, 0.70)
    assert client.get_model_version_by_alias("kairos", CHAMPION).version == better
    assert client.get_model_version("kairos", worse).tags["promoted"] == "false"


def _orders_only_store(path: Path) -> None:
    """Three months of orders from 60 customers, nothing else (a bare transaction log)."""
    rng = np.random.default_rng(0)
    start = datetime(2024, 1, 1)
    rows = []
    for customer in range(60):
        rate = rng.uniform(0.02, 0.3)
        for day in range(90):
            if rng.random() < rate:
                at = start + timedelta(days=day, hours=int(rng.integers(8, 20)))
                rows.append(
                    {
                        "message_id": f"o{customer}-{day}",
                        "type": "track",
                        "event": "Order Completed",
                        "channel": "web",
                        "timestamp": at,
                        "user_id": f"c{customer}",
                        "revenue": float(rng.uniform(5, 50)),
                    }
                )
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in EVENT_SCHEMA.names} for row in rows], EVENT_SCHEMA
    )
    with EventStore(path) as store:
        store.append(table, DEAD_LETTER_SCHEMA.empty_table(), "orders", "run-1")


def test_bare_transaction_log_trains_intent_only_and_says_so(tmp_path: Path, cli) -> None:
    runner, app = cli
    ws = open_workspace(tmp_path / "ws")
    _orders_only_store(ws.event_store)
    sets = [item for pair in (("--set", s) for s in TINY) for item in pair]
    result = runner.invoke(
        app,
        [
            "train",
            *sets,
            "--set",
            "data.max_train_cutoffs=4",
            "--json",
            "--workspace",
            str(ws.root),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["engagement_head"] == "untrained (no logged sends)"
    assert any("no logged sends" in note for note in summary["notes"])
    assert not any(m["section"].startswith("engagement") for m in summary["metrics"])
    out = tmp_path / "scores.csv"
    result = runner.invoke(
        app, ["score", "--at", "2024-03-31", "--out", str(out), "--workspace", str(ws.root)]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert len(frame) == 60
    assert set(frame["send_window_source"]) == {"activity_hours"}
    assert frame["p_engage_email"].isna().all()
    assert set(frame["engagement_tier"]) == {"unknown"}
    # the send window is each customer's activity hour (orders 08:00-19:00 UTC)
    assert (frame["best_hour_of_week"] % 24).between(7, 20).all()


def test_splits_reuse_the_example_cache(world) -> None:
    ws = open_workspace(world["ws"])
    config = build_config(overrides=TINY)
    from training.pipeline import open_events

    with open_events(ws) as connection:
        first = build_splits(connection, config, None, ws.root / "cache" / "examples")
        second = build_splits(connection, config, None, ws.root / "cache" / "examples")
    assert second.build_seconds < first.build_seconds or second.build_seconds < 2.0
    pd.testing.assert_frame_equal(first.test.profiles, second.test.profiles)


def test_mlproject_declares_the_training_entry_points() -> None:
    import yaml

    project = yaml.safe_load((Path(__file__).resolve().parents[1] / "MLproject").read_text())
    points = project["entry_points"]
    assert {"simulate", "ingest", "train", "tune", "evaluate"} <= set(points)
    assert points["train"]["command"].startswith("kairos train")
    assert points["tune"]["parameters"]["trials"]["type"] == "int"
    assert "{trials}" in points["tune"]["command"]


@pytest.mark.slow
def test_mlflow_run_train_entry_point(world, tmp_path: Path, monkeypatch) -> None:
    """`mlflow run . -e train --env-manager local` logs into the workspace store."""
    import subprocess
    import sys

    import yaml

    ws = open_workspace(world["ws"])
    config = tmp_path / "tiny.yaml"
    sections: dict = {}
    for item in TINY:
        key, value = item.split("=")
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    config.write_text(yaml.safe_dump(sections))
    env = {
        **__import__("os").environ,
        "KAIROS_HOME": str(ws.root),
        "MLFLOW_TRACKING_URI": ws.mlflow_tracking_uri,
    }
    # An experiment chosen by an earlier test in this process must not leak into `mlflow run`.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    # The entry point calls `kairos`: the one installed beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{__import__('os').pathsep}{env.get('PATH', '')}"
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    completed = subprocess.run(
        [
            str(mlflow_cli),
            "run",
            ".",
            "-e",
            "train",
            "--env-manager",
            "local",
            "--experiment-name",
            "kairos",
            "-P",
            f"config={config}",
            "-P",
            "epochs=1",
            "-P",
            "horizon_days=7",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    import mlflow

    mlflow.set_tracking_uri(ws.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["kairos"], output_format="list")
    assert any(
        r.data.params.get("optim.epochs") == "1"
        and "test.intent.sequence_model.roc_auc" in r.data.metrics
        for r in runs
    )


@pytest.mark.slow
def test_tune_runs_nested_trials_and_trains_the_best_config(world, cli) -> None:
    import mlflow

    runner, app = cli
    ws = open_workspace(world["ws"])
    sets = [item for pair in (("--set", s) for s in TINY) for item in pair]
    result = runner.invoke(
        app,
        ["tune", "--trials", "2", *sets, "--study", "smoke", "--json", "--workspace", str(ws.root)],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["completed"] + out["pruned"] == 2 and out["completed"] >= 1
    assert Path(out["config"]).exists()
    assert (ws.root / "optuna.db").exists()
    assert out["final"]["run_id"] and out["final"]["model_version"]
    mlflow.set_tracking_uri(ws.mlflow_tracking_uri)
    trials = mlflow.search_runs(
        experiment_names=["kairos"],
        filter_string=f"tags.mlflow.parentRunId = '{out['tune_run_id']}'",
        output_format="list",
    )
    assert len(trials) == 2
    assert all("val_loss" in t.data.metrics for t in trials)


def test_activity_histograms_count_sessions_once_and_engagement_at_the_send_hour() -> None:
    """Kinds: raw events, opens at their hour, distinct active clock hours, engaged sends at
    their send hour (an open without its send in the log: at its own hour)."""
    from training.datasets import activity_sql
    from training.model import ACTIVITY_KINDS

    monday = datetime(2026, 3, 2)  # hour of week = hour of day
    rows = [
        ("p", "Page Viewed", monday + timedelta(hours=8, minutes=5), None),
        ("p", "Product Viewed", monday + timedelta(hours=8, minutes=20), None),
        ("p", "Product Viewed", monday + timedelta(hours=8, minutes=50), None),
        ("p", "Email Sent", monday + timedelta(hours=9, minutes=10), "s1"),
        ("p", "Email Delivered", monday + timedelta(hours=9, minutes=11), "s1"),
        ("p", "Email Opened", monday + timedelta(hours=11, minutes=30), "s1"),
        ("p", "Email Link Clicked", monday + timedelta(hours=11, minutes=31), "s1"),
        ("p", "Push Notification Tapped", monday + timedelta(hours=14), None),
        ("p", "Page Viewed", monday + timedelta(days=1), None),  # after the cutoff
    ]
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE ev (profile_id VARCHAR, event VARCHAR, timestamp TIMESTAMP, send_id VARCHAR)"
    )
    connection.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", rows)
    got = connection.sql(activity_sql("ev", monday + timedelta(hours=23))).df()
    counts = {
        (ACTIVITY_KINDS[k], int(h)): int(n)
        for k, h, n in got[["kind", "hour_of_week", "events"]].itertuples(index=False)
    }
    assert counts == {
        ("activity", 8): 3,
        ("engagement", 11): 2,
        ("engagement", 14): 1,
        ("active_hours", 8): 1,
        ("engaged_send_hours", 9): 1,
        ("engaged_send_hours", 14): 1,
    }


def test_evaluation_tables_put_paired_differences_in_a_table_of_their_own(capsys) -> None:
    from kairos.cli_training import _print_metrics

    rows = [
        ("intent", "sequence_model", "roc_auc", 0.71),
        ("intent", "lightgbm", "roc_auc", 0.70),
        ("intent", "sequence_model", "roc_auc_minus_lightgbm", 0.01),
        ("engagement", "sequence_model", "log_loss", 0.35),
    ]
    table = pd.DataFrame(rows, columns=["section", "model", "metric", "value"])
    _print_metrics(table.assign(low=np.nan, high=np.nan, n=100), "Evaluation")
    printed = capsys.readouterr().out
    main, paired = printed.split("intent: ROC-AUC minus the column model's, paired")
    assert "roc_auc" in main and "roc_auc_minus" not in main and "0.7100" in main
    head, engagement = paired.split("engagement")
    assert "lightgbm" in head and "0.0100" in head and "0.7100" not in head
    assert "0.3500" in engagement
