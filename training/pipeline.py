"""The train and evaluate stages end to end: store -> examples -> model + baselines -> MLflow.

``run_training`` is what ``kairos train`` (and each tuning trial) runs; ``run_evaluation`` is
``kairos evaluate``: it rebuilds a logged run's split from its params and evaluates its model
against freshly fitted baselines on the same cutoffs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from features.examples import TimeSplit
from features.identity import tables
from features.profile_source import default_profile_source
from kairos.workspace import Workspace
from training.baselines import fit_intent_baselines
from training.config import TrainConfig
from training.datasets import (
    ExampleSet,
    build_split,
    default_until,
    describe_split,
    event_range,
    plan_cutoffs,
    store_fingerprint,
)
from training.evaluation import Evaluation, evaluate, write_plots
from training.metrics import log_loss, roc_auc
from training.oracle import SimulatorTruth
from training.train import TrainedModel, fit, infer

logger = logging.getLogger(__name__)


@dataclass
class Splits:
    split: TimeSplit
    train: ExampleSet
    validation: ExampleSet
    test: ExampleSet
    first_event: datetime
    last_event: datetime
    until: datetime
    fingerprint: str
    build_seconds: float
    source: str  # how events map to profiles: IdentityProfiles or IdentifierProfiles

    def params(self) -> dict[str, str]:
        described = describe_split(self.split)
        return {
            "kairos.first_event": f"{self.first_event:%Y-%m-%d %H:%M:%S}",
            "kairos.last_event": f"{self.last_event:%Y-%m-%d %H:%M:%S}",
            "kairos.until": self.until.isoformat(),
            "kairos.cutoffs_train": described["train"],
            "kairos.cutoffs_validation": described["validation"],
            "kairos.cutoffs_test": described["test"],
            "kairos.examples_train": str(len(self.train)),
            "kairos.examples_validation": str(len(self.validation)),
            "kairos.examples_test": str(len(self.test)),
            "kairos.sends_train": str(len(self.train.sends)),
            "kairos.store_fingerprint": self.fingerprint,
        }


@dataclass
class TrainingResult:
    run_id: str | None
    model_version: str | None
    promoted: bool
    champion_before: float | None
    trained: TrainedModel
    evaluation: Evaluation
    validation_metrics: dict[str, float]
    splits: Splits

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "promoted_to_champion": self.promoted,
            "champion_validation_before": self.champion_before,
            "validation": self.validation_metrics,
            "best_epoch": self.trained.best_epoch,
            "epochs_run": len(self.trained.history),
            "engagement_head": "trained"
            if self.trained.engagement_trained
            else "untrained (no logged sends)",
            "examples_per_second": round(self.trained.examples_per_second, 1),
            "split": describe_split(self.splits.split),
            "metrics": self.evaluation.rows,
            "notes": self.evaluation.notes,
        }


def open_events(ws: Workspace) -> duckdb.DuckDBPyConnection:
    if not ws.event_store.exists():
        raise FileNotFoundError(
            f"no event store at {ws.event_store}; run `kairos ingest` (or `kairos demo`) first"
        )
    connection = duckdb.connect(str(ws.event_store), read_only=True)
    connection.execute("SET enable_progress_bar = false")
    connection.execute("SET enable_progress_bar = false")
    return connection


def build_splits(
    connection: duckdb.DuckDBPyConnection,
    config: TrainConfig,
    until: datetime | None,
    cache_dir: Path | None,
    on_cutoff: Callable[[datetime], Any] | None = None,
) -> Splits:
    started = time.perf_counter()
    first_event, last_event = event_range(connection)
    until = until or default_until(last_event)
    if until <= first_event:
        raise ValueError(f"--until {until} is not after the first event ({first_event})")
    split = plan_cutoffs(first_event, until, config.data)
    source = default_profile_source(connection, until)
    seed = config.optim.seed
    parts = {
        name: build_split(
            connection,
            source,
            getattr(split, name),
            config.data,
            seed=seed,
            cache_dir=cache_dir,
            on_cutoff=on_cutoff,
            # evaluation always sees the whole population
            max_profiles_per_cutoff=config.data.max_profiles_per_cutoff if name == "train" else 0,
        )
        for name in ("train", "validation", "test")
    }
    fingerprint = store_fingerprint(connection)
    return Splits(
        split,
        parts["train"],
        parts["validation"],
        parts["test"],
        first_event,
        min(last_event, until),
        until,
        fingerprint,
        time.perf_counter() - started,
        type(source).__name__,
    )


def validation_metrics(trained: TrainedModel, validation: ExampleSet) -> dict[str, float]:
    predictions = infer(trained.model, validation, trained.spec, trained.calibrator)
    y = validation.profiles["ordered"].to_numpy(float)
    return {
        "intent_roc_auc": roc_auc(y, predictions.p_intent),
        "intent_log_loss": log_loss(y, predictions.p_intent),
    }


def load_truth(ws: Workspace, truth_path: Path | None) -> SimulatorTruth | None:
    """The simulator's truth, with the store's identity profiles mapped to true people."""
    if truth_path is None:
        return None
    truth = SimulatorTruth.load(truth_path)
    with open_events(ws) as connection:
        if tables.has_state(connection):
            truth.add_profiles(
                connection.sql("SELECT profile_id, identifier FROM identity_identifiers").df()
            )
    return truth


def run_training(
    ws: Workspace,
    config: TrainConfig,
    until: datetime | None = None,
    truth_path: Path | None = None,
    experiment: str = "kairos",
    progress: bool = True,
    splits: Splits | None = None,
    log_to_mlflow: bool = True,
    register: bool = True,
    nested: bool = False,
    run_name: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    evaluate_test: bool = True,
) -> TrainingResult:
    """Build (or reuse) the split, train, evaluate against the baselines, log and register."""
    if splits is None:
        with open_events(ws) as connection:
            splits = build_splits(
                connection,
                config,
                until,
                ws.root / "cache" / "examples",
                on_cutoff=_cutoff_logger(progress),
            )
    truth = load_truth(ws, truth_path)
    if not log_to_mlflow:
        return _train_and_evaluate(splits, config, truth, progress, on_epoch, evaluate_test)

    import mlflow

    from training import registry

    registry.use_workspace(ws, experiment)
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        mlflow.set_tags({"kairos.stage": "train", "kairos.source": splits.source})
        mlflow.log_params({**config.flat(), **splits.params()})
        if truth_path is not None:
            mlflow.log_param("kairos.truth", str(truth_path))

        def epoch_callback(epoch: int, metrics: dict[str, float]) -> None:
            registry.log_epoch(metrics, epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        result = _train_and_evaluate(splits, config, truth, progress, epoch_callback, evaluate_test)
        trained = result.trained
        mlflow.log_metrics(
            {f"validation.{k}": v for k, v in result.validation_metrics.items() if np.isfinite(v)}
        )
        mlflow.log_metrics(
            {
                "train.examples_per_second": trained.examples_per_second,
                "train.seconds": trained.train_seconds,
                "data.build_seconds": splits.build_seconds,
                "train.best_epoch": trained.best_epoch,
            }
        )
        mlflow.set_tag(
            "kairos.engagement_head",
            "trained" if trained.engagement_trained else "untrained: no logged sends",
        )
        _log_evaluation(result, splits)
        bundle = registry.ModelBundle(
            trained.model, trained.spec, trained.calibrator, config, trained.engagement_trained
        )
        example = registry.model_frame(splits.validation, np.arange(min(3, len(splits.validation))))
        name = config.evaluation.registered_model if register else None
        info = registry.log_model(bundle, example, name)
        result.run_id = run.info.run_id
        if register:
            result.model_version = str(info.registered_model_version)
            key = config.evaluation.champion_metric
            result.promoted, result.champion_before = registry.promote_if_better(
                name,
                result.model_version,
                key,
                result.validation_metrics[key],
                higher_is_better=key.endswith("roc_auc"),
            )
            mlflow.set_tag("kairos.promoted_to_champion", str(result.promoted).lower())
    return result


def _train_and_evaluate(
    splits: Splits,
    config: TrainConfig,
    truth: SimulatorTruth | None,
    progress: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    evaluate_test: bool,
) -> TrainingResult:
    trained = fit(splits.train, splits.validation, config, on_epoch=on_epoch, progress=progress)
    validation = validation_metrics(trained, splits.validation)
    evaluation = Evaluation()
    if evaluate_test:
        evaluation = evaluate_model(trained, splits, config, truth)
    return TrainingResult(None, None, False, None, trained, evaluation, validation, splits)


def evaluate_model(
    trained: TrainedModel, splits: Splits, config: TrainConfig, truth: SimulatorTruth | None
) -> Evaluation:
    baselines = fit_intent_baselines(
        splits.train, splits.validation, config.data.horizon_days, seed=config.optim.seed
    )
    predictions = infer(trained.model, splits.test, trained.spec, trained.calibrator, curves=True)
    evaluation = evaluate(
        splits.test,
        predictions,
        baselines,
        splits.train.sends,
        config.data.horizon_days,
        truth=truth,
        engagement_trained=trained.engagement_trained,
        resamples=config.evaluation.bootstrap_resamples,
        seed=config.optim.seed,
    )
    evaluation.curves["predictions"] = predictions
    return evaluation


def _log_evaluation(result: TrainingResult, splits: Splits) -> None:
    import mlflow

    evaluation = result.evaluation
    if not evaluation.rows:
        return
    mlflow.log_metrics(evaluation.mlflow_metrics())
    with tempfile.TemporaryDirectory(prefix="kairos-eval-") as tmp:
        folder = Path(tmp)
        evaluation.table().to_csv(folder / "evaluation.csv", index=False)
        (folder / "evaluation.json").write_text(
            json.dumps(evaluation.as_json(), indent=2, default=float)
        )
        mlflow.log_artifacts(str(folder), artifact_path="evaluation")
        predictions = evaluation.curves.get("predictions")
        if predictions is not None:
            plots = write_plots(evaluation, predictions, splits.test, folder / "plots")
            for path in plots:
                mlflow.log_artifact(str(path), artifact_path="plots")


def run_evaluation(
    ws: Workspace,
    run_id: str | None = None,
    truth_path: Path | None = None,
    experiment: str = "kairos",
    progress: bool = True,
) -> tuple[str, Evaluation]:
    """Evaluate a logged run's model (default: the champion) on its own test cutoffs against
    baselines refitted on its own train/validation cutoffs; log the table into that run."""
    import mlflow

    from training import registry

    registry.use_workspace(ws, experiment)
    client = mlflow.MlflowClient()
    if run_id is None:
        name = "kairos"
        try:
            run_id = client.get_model_version_by_alias(name, registry.CHAMPION).run_id
        except mlflow.exceptions.MlflowException as error:
            raise LookupError(
                "no champion model yet; run `kairos train` first or pass --run RUN_ID"
            ) from error
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise LookupError(f"no run {run_id} in the workspace's MLflow store") from error
    # The table goes into the run's own experiment, whatever ``experiment`` says (a run trained
    # by the benchmarks lives in "bench").
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    config, params = registry.config_from_run(run_id)
    until = datetime.fromisoformat(params["kairos.until"])
    if truth_path is None and params.get("kairos.truth"):
        candidate = Path(params["kairos.truth"])
        truth_path = candidate if candidate.exists() else None
    bundle, _ = registry.load_bundle(registry.run_bundle_uri(run_id))
    with open_events(ws) as connection:
        splits = build_splits(
            connection,
            config,
            until,
            ws.root / "cache" / "examples",
            on_cutoff=_cutoff_logger(progress),
        )
    if splits.fingerprint != params.get("kairos.store_fingerprint", splits.fingerprint):
        logger.warning(
            "the event store changed since run %s was trained; evaluating on the current events",
            run_id,
        )
    from training.datasets import attach_static

    attach_static(splits.test, bundle.spec)
    trained = TrainedModel(
        bundle.model, bundle.spec, bundle.calibrator, config, bundle.engagement_trained
    )
    truth = load_truth(ws, truth_path)
    evaluation = evaluate_model(trained, splits, config, truth)
    result = TrainingResult(run_id, None, False, None, trained, evaluation, {}, splits)
    with mlflow.start_run(run_id=run_id):
        _log_evaluation(result, splits)
        mlflow.set_tag("kairos.evaluated_at", datetime.now().isoformat(timespec="seconds"))
    return run_id, evaluation


def _cutoff_logger(progress: bool) -> Callable[[datetime], None]:
    started = time.perf_counter()

    def on_cutoff(cutoff: datetime) -> None:
        message = (
            f"examples at {cutoff:%Y-%m-%d %H:%M} ready ({time.perf_counter() - started:.0f} s)"
        )
        logger.info(message)
        if progress:
            from rich.console import Console

            Console(stderr=True).print(message)

    return on_cutoff
