"""Model quality and speed: the sequence model against every baseline on the same time split.

    python benchmarks/bench_model.py simulated --customers 20000 --days 120 --workdir /tmp/kb
    python benchmarks/bench_model.py real --workdir /tmp/kb-real
    python benchmarks/bench_model.py speed --profiles 100000 --cutoffs 8
    python benchmarks/bench_model.py ceiling --workdir /tmp/kb   # after `simulated` there

``simulated``: simulate a world, ingest it, train (MLflow run in the bench workspace) and print
every evaluation row (intent metrics with bootstrap intervals, engagement, off-policy and true
send-time value against the simulator's oracle), training examples/s and scoring profiles/s.
``real``: the two Online Retail files as one two-year log; predict an order in the 30 days after
2011-11-09 from history up to then. ``speed``: one epoch over synthetic arrays of the shape of
``--profiles`` x ``--cutoffs`` examples, and batch scoring throughput. ``ceiling``: on a
``simulated`` workdir, what a perfect reader of each person's history could gain: the history
ceiling (``oracle_history``) and the present-knowing oracle per person, and LightGBM on the
aggregates with and without the ceiling's probability as one more feature, on the same split
(pass the same ``--set`` as to ``simulated``). Every command prints
one JSON object on stdout (``--out`` also writes it) and a Markdown table on stderr.
``--set section.key=value`` overrides the training config as in ``kairos train``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_MAPS = {
    "online_retail_ii_2009_2010.parquet": {
        "user_id": "Customer ID",
        "order_id": "Invoice",
        "price": "Price",
    },
    "online_retail_2010_2011.parquet": {
        "user_id": "CustomerID",
        "order_id": "InvoiceNo",
        "price": "UnitPrice",
    },
}
REAL_UNTIL = datetime(2011, 12, 9)  # the test cutoff is 30 days earlier: 2011-11-09
REAL_SETTINGS = [
    "data.horizon_days=30",
    "data.stride_days=14",
    "data.validation_cutoffs=2",
    "data.max_train_cutoffs=40",
    "data.min_history_days=30",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="task", required=True)
    simulated = sub.add_parser("simulated", help="simulated world with oracle")
    simulated.add_argument("--customers", type=int, default=20_000)
    simulated.add_argument("--days", type=int, default=120)
    simulated.add_argument("--seed", type=int, default=11)
    real = sub.add_parser("real", help="Online Retail, order in the 30 days after 2011-11-09")
    real.add_argument("--data", type=Path, default=REAL_DATA)
    real.add_argument(
        "--until",
        type=datetime.fromisoformat,
        default=REAL_UNTIL,
        help="read nothing after this instant; the test cutoff is 30 days earlier (default "
        f"{REAL_UNTIL:%Y-%m-%d}; an earlier one backtests a setting on another month)",
    )
    ceiling = sub.add_parser("ceiling", help="what reading each person's whole history could gain")
    for p in (simulated, real, ceiling):
        p.add_argument("--workdir", type=Path, required=True, help="kept between runs (cache)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            help="config override, repeatable",
        )
        p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    speed = sub.add_parser("speed", help="training and scoring throughput on synthetic arrays")
    speed.add_argument("--profiles", type=int, default=100_000)
    speed.add_argument("--cutoffs", type=int, default=8)
    speed.add_argument("--set", dest="overrides", action="append", default=[])
    speed.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from kairos.workspace import disable_telemetry

    disable_telemetry()
    if args.task == "simulated":
        result = bench_simulated(args)
    elif args.task == "real":
        result = bench_real(args)
    elif args.task == "ceiling":
        result = bench_ceiling(args)
    else:
        result = bench_speed(args)
    text = json.dumps(result, default=_plain)
    print(text)
    if args.out:
        args.out.write_text(text)
    if "metrics" in result:
        print(markdown(result["metrics"]), file=sys.stderr)
    return 0


def _train(
    ws_root: Path, overrides: list[str], until: datetime | None, truth: Path | None
) -> dict[str, Any]:
    from kairos.workspace import open_workspace
    from training.config import build_config
    from training.pipeline import run_training

    ws = open_workspace(ws_root)
    config = build_config(overrides=overrides)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_training(
        ws, config, until=until, truth_path=truth, progress=True, experiment="bench"
    )
    summary = result.summary()
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    summary["load_average"] = {"before": load_before, "after": os.getloadavg()}
    summary["data_build_seconds"] = round(result.splits.build_seconds, 1)
    summary["train_seconds"] = round(result.trained.train_seconds, 1)
    summary["scoring"] = _score_speed(ws, result)
    summary["config"] = config.as_dict()
    return summary


def _score_speed(ws, result) -> dict[str, float]:
    """Profiles/s of batch scoring at the test cutoff: model only, and features + model."""
    from features.profile_source import default_profile_source
    from training.pipeline import open_events
    from training.registry import ModelBundle
    from training.scoring import score_at, score_examples

    trained = result.trained
    bundle = ModelBundle(
        trained.model, trained.spec, trained.calibrator, trained.config, trained.engagement_trained
    )
    test = result.splits.test
    test.arrays.pop("static", None)
    started, cpu_started = time.perf_counter(), time.process_time()
    score_examples(bundle, test, "bench")
    model_seconds = time.perf_counter() - started
    model_cpu_seconds = time.process_time() - cpu_started
    at = result.splits.split.test[-1]
    with open_events(ws) as connection:
        started, cpu_started = time.perf_counter(), time.process_time()
        frame = score_at(connection, default_profile_source(connection, at), at, bundle, "bench")
        total_seconds = time.perf_counter() - started
        total_cpu_seconds = time.process_time() - cpu_started
    return {
        "profiles": len(frame),
        "model_profiles_per_second": round(len(test) / model_seconds, 1),
        "model_profiles_per_cpu_second": round(len(test) / model_cpu_seconds, 1),
        "end_to_end_profiles_per_second": round(len(frame) / total_seconds, 1),
        "end_to_end_profiles_per_cpu_second": round(len(frame) / total_cpu_seconds, 1),
        "load_average": os.getloadavg(),
    }


def bench_simulated(args: argparse.Namespace) -> dict[str, Any]:
    from features.ingest import ingest_file
    from features.simulate import simulate
    from features.store import EventStore
    from kairos.workspace import open_workspace

    work = args.workdir
    sim = work / "sim"
    ws = open_workspace(work / "ws")
    if not (sim / "truth.parquet").exists():
        simulate(sim, customers=args.customers, days=args.days, seed=args.seed, progress=True)
    if not ws.event_store.exists():
        with EventStore(ws.event_store) as store:
            ingest_file(store, sim / "events.jsonl")
    out = _train(ws.root, args.overrides, None, sim / "truth.parquet")
    out["world"] = {"customers": args.customers, "days": args.days, "seed": args.seed}
    return out


def bench_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    from kairos.workspace import open_workspace
    from training.baselines import fit_lightgbm
    from training.config import build_config
    from training.evaluation import addressable_profiles, per_cutoff
    from training.metrics import bootstrap, paired_difference, roc_auc
    from training.pipeline import build_splits, load_truth, open_events

    ws = open_workspace(args.workdir / "ws")
    truth_path = args.workdir / "sim" / "truth.parquet"
    if not (ws.event_store.exists() and truth_path.exists()):
        raise SystemExit(f"no simulated run in {args.workdir}: run the `simulated` task first")
    config = build_config(overrides=args.overrides)
    with open_events(ws) as connection:
        splits = build_splits(connection, config, None, ws.root / "cache" / "examples")
    truth = load_truth(ws, truth_path)
    if not truth.has_observed_history:
        raise SystemExit(f"{truth_path} predates the browsing columns: simulate it again")
    horizon = config.data.horizon_days
    test_at = splits.split.test[-1]
    day = truth.day_of(test_at)
    everyone = np.arange(len(truth.truth))
    ordered = np.stack(truth.truth["daily_orders"].to_numpy())[:, day : day + horizon].max(axis=1)
    accounts = truth.truth["user_id"].notna().to_numpy()
    people: dict[str, Any] = {}
    for name, probability in (
        ("history_ceiling", truth.history_conversion_probability),
        ("oracle_present", truth.present_conversion_probability),
    ):
        p = probability(everyone, test_at, horizon)
        people[name] = {
            "all_people": roc_auc(ordered, p),
            "account_holders": roc_auc(ordered[accounts], p[accounts]),
        }

    plain = fit_lightgbm(splits.train, splits.validation, config.optim.seed)
    p_plain = plain.predict(splits.test)
    for examples in (splits.train, splits.validation, splits.test):
        rows = truth.person_rows(examples.profiles["label_profile_id"].to_numpy())
        examples.profiles["history_ceiling"] = per_cutoff(
            truth.history_conversion_probability, examples, rows, horizon
        )
    assisted = fit_lightgbm(splits.train, splits.validation, config.optim.seed)
    p_assisted = assisted.predict(splits.test)

    y = splits.test.profiles["ordered"].to_numpy(np.float64)
    rows = truth.person_rows(splits.test.profiles["label_profile_id"].to_numpy())
    addressable, _ = addressable_profiles(splits.test, truth, rows)
    metrics = []
    resamples = config.evaluation.bootstrap_resamples
    for section, where in (("intent", np.ones(len(y), bool)), ("intent_addressable", addressable)):
        for model, p in (("lightgbm", p_plain), ("lightgbm_with_history_ceiling", p_assisted)):
            estimate = bootstrap(roc_auc, y[where], p[where], resamples)
            metrics.append(
                {"section": section, "model": model, "metric": "roc_auc"}
                | estimate.as_dict()
                | {"n": int(where.sum())}
            )
        gain = paired_difference(roc_auc, y[where], p_assisted[where], p_plain[where], resamples)
        metrics.append(
            {
                "section": section,
                "model": "lightgbm_with_history_ceiling",
                "metric": "roc_auc_minus_lightgbm",
            }
            | gain.as_dict()
            | {"n": int(where.sum())}
        )
    return {"test_cutoff": str(test_at), "person_level_roc_auc": people, "metrics": metrics}


def bench_real(args: argparse.Namespace) -> dict[str, Any]:
    from features.contract import NormaliseOptions
    from features.ingest import IngestOptions, ingest_file
    from features.store import EventStore
    from features.tabular import parse_mapping
    from kairos.workspace import open_workspace

    ws = open_workspace(args.workdir / "ws")
    if not ws.event_store.exists():
        with EventStore(ws.event_store) as store:
            for name, specific in REAL_MAPS.items():
                mapping = {
                    "timestamp": "InvoiceDate",
                    "product_id": "StockCode",
                    "name": "Description",
                    "quantity": "Quantity",
                    **specific,
                }
                options = IngestOptions(
                    mapping=parse_mapping(
                        [f"{k}={v}" for k, v in mapping.items()], "Order Completed"
                    ),
                    normalise=NormaliseOptions(timezone="Europe/London"),
                )
                ingest_file(store, args.data / name, options)
    out = _train(ws.root, [*REAL_SETTINGS, *args.overrides], args.until, None)
    test_cutoff = args.until - timedelta(days=30)
    out["task"] = f"order within 30 days after {test_cutoff:%Y-%m-%d}, history up to then"
    return out


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Training examples/s over synthetic arrays shaped like real examples (event tokens,
    gaps, 50 aggregates, 3 sends per profile), one epoch, and batch scoring throughput."""
    import pandas as pd
    import torch

    from features.sequences import VOCABULARY_SIZE
    from training.config import build_config
    from training.datasets import SEQUENCE_ARRAYS, ExampleSet, FeatureSpec
    from training.metrics import PlattCalibrator
    from training.model import ACTIVITY_KINDS, KairosModel
    from training.train import _batch_loss, infer, seed_everything

    config = build_config(overrides=args.overrides)
    seed_everything(config.optim.seed, config.optim.threads)
    n, length = args.profiles * args.cutoffs, config.data.sequence_length
    rng = np.random.default_rng(0)
    features = 60
    arrays = {
        "tokens": rng.integers(1, VOCABULARY_SIZE, (n, length), dtype=np.int32),
        "hour_of_week": rng.integers(0, 168, (n, length), dtype=np.int32),
        "category": rng.integers(0, config.data.category_buckets, (n, length), dtype=np.int32),
        "gap_previous": rng.random((n, length), dtype=np.float32),
        "gap_to_cutoff": rng.random((n, length), dtype=np.float32),
        "value": rng.random((n, length), dtype=np.float32),
        "mask": rng.random((n, length)) < 0.7,
        "activity": rng.poisson(0.1, (n, len(ACTIVITY_KINDS), 168)).astype(np.float32),
        "reached": np.ones((n, 3), dtype=bool),
        "static": rng.standard_normal((n, features), dtype=np.float32),
    }
    assert set(SEQUENCE_ARRAYS) <= set(arrays)
    sends = pd.DataFrame(
        {
            "row": np.repeat(np.arange(n), 3),
            "channel": rng.integers(0, 3, 3 * n),
            "hour_of_week": rng.integers(0, 168, 3 * n),
            "propensity": 1 / 24,
            "engaged": rng.random(3 * n) < 0.15,
        }
    )
    profiles = pd.DataFrame(
        {"profile_id": np.arange(n).astype(str), "ordered": rng.random(n) < 0.05}
    )
    examples = ExampleSet(profiles, arrays, sends)
    spec = FeatureSpec(
        tuple(f"f{i}" for i in range(features)),
        (),
        (0.0,) * features,
        (1.0,) * features,
        length,
        config.data.category_buckets,
    )
    model = KairosModel(config.model, VOCABULARY_SIZE, config.data.category_buckets, features)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.learning_rate)
    order = rng.permutation(n)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    for first in range(0, n, config.optim.batch_size):
        loss = _batch_loss(
            model, examples, spec, order[first : first + config.optim.batch_size], 1.0, True
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    epoch_seconds = time.perf_counter() - started
    epoch_cpu_seconds = time.process_time() - cpu_started
    scoring = examples.subset(np.arange(min(n, 50_000)))
    started, cpu_started = time.perf_counter(), time.process_time()
    infer(model, scoring, spec, PlattCalibrator())
    score_seconds = time.perf_counter() - started
    score_cpu_seconds = time.process_time() - cpu_started
    return {
        "examples": n,
        "profiles": args.profiles,
        "cutoffs": args.cutoffs,
        "sequence_length": length,
        "model": config.as_dict()["model"],
        "epoch_seconds": round(epoch_seconds, 1),
        "epoch_cpu_seconds": round(epoch_cpu_seconds, 1),
        "training_examples_per_second": round(n / epoch_seconds, 1),
        # what the same work gets per CPU-second: comparable on a busy machine
        "training_examples_per_cpu_second": round(n / epoch_cpu_seconds, 1),
        "scoring_profiles_per_second": round(len(scoring) / score_seconds, 1),
        "scoring_profiles_per_cpu_second": round(len(scoring) / score_cpu_seconds, 1),
        "threads": config.optim.threads,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| section | model | metric | value [95% CI] | n |", "|---|---|---|---|---|"]
    for row in rows:
        interval = f" [{row['low']:.4f}, {row['high']:.4f}]" if np.isfinite(row["low"]) else ""
        lines.append(
            f"| {row['section']} | {row['model']} | {row['metric']} | "
            f"{row['value']:.4f}{interval} | {row['n']:,} |"
        )
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
