"""Optuna tuning: TPE over model and optimiser settings, median pruning on validation loss.

The study lives in the workspace's Optuna storage; every trial is a nested MLflow run under one
``tune`` parent run (logging inside the objective, the lasting way in Optuna 5). Trials never
see the test cutoffs. The best config is written to ``<workspace>/tuned_config.yaml`` and
trained as a normal run, which becomes champion only if it beats the current one.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kairos.workspace import Workspace
from training.config import TrainConfig, build_config
from training.pipeline import TrainingResult, build_splits, open_events, run_training
from training.train import TrainingStopped, fit

logger = logging.getLogger(__name__)

TUNED_CONFIG = "tuned_config.yaml"


def suggest(trial: Any) -> dict[str, Any]:
    """The search space, as ``section.key`` overrides."""
    encoder = trial.suggest_categorical("model.encoder", ["transformer", "gru"])
    params: dict[str, Any] = {
        "model.encoder": encoder,
        "model.d_model": trial.suggest_categorical("model.d_model", [32, 64, 96]),
        "model.layers": trial.suggest_int("model.layers", 1, 3),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
        "optim.learning_rate": trial.suggest_float("optim.learning_rate", 3e-4, 5e-3, log=True),
        "optim.weight_decay": trial.suggest_float("optim.weight_decay", 1e-6, 1e-2, log=True),
        "optim.batch_size": trial.suggest_categorical("optim.batch_size", [256, 512, 1024]),
        "optim.engagement_weight": trial.suggest_float(
            "optim.engagement_weight", 0.3, 3.0, log=True
        ),
    }
    if encoder == "transformer":
        params["model.heads"] = trial.suggest_categorical("model.heads", [2, 4])
    return params


@dataclass
class TuningResult:
    study_name: str
    trials: int
    completed: int
    pruned: int
    best_value: float
    best_params: dict[str, Any]
    config_path: Path
    parent_run_id: str
    final: TrainingResult | None


def run_tuning(
    ws: Workspace,
    base: TrainConfig,
    trials: int,
    until: datetime | None = None,
    truth_path: Path | None = None,
    experiment: str = "kairos",
    study_name: str = "kairos",
    timeout_seconds: float | None = None,
    train_best: bool = True,
    progress: bool = True,
) -> TuningResult:
    import mlflow
    import optuna

    from training import registry

    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    with open_events(ws) as connection:
        splits = build_splits(connection, base, until, ws.root / "cache" / "examples")
    registry.use_workspace(ws, experiment)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=ws.optuna_storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=base.optim.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )

    with mlflow.start_run(run_name=f"tune-{study_name}") as parent:
        os.environ.pop("MLFLOW_RUN_ID", None)  # the tuned model gets a run of its own
        mlflow.set_tags({"kairos.stage": "tune", "kairos.study": study_name})
        mlflow.log_params({**base.flat(), **splits.params(), "kairos.trials": trials})

        def objective(trial: optuna.Trial) -> float:
            overrides = suggest(trial)
            try:
                config = build_config(overrides=overrides, base=base)
            except ValueError as error:
                raise optuna.TrialPruned(f"invalid combination: {error}") from error
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                mlflow.set_tags({"kairos.stage": "trial", "kairos.trial": trial.number})
                mlflow.log_params(config.flat())
                best = math.inf

                def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                    nonlocal best
                    registry.log_epoch(metrics, epoch)
                    best = min(best, metrics["val_loss"])
                    trial.report(metrics["val_loss"], epoch)
                    if trial.should_prune():
                        raise TrainingStopped(f"pruned at epoch {epoch}")

                try:
                    fit(splits.train, splits.validation, config, on_epoch=on_epoch, progress=False)
                except TrainingStopped as stopped:
                    mlflow.set_tag("kairos.pruned", "true")
                    mlflow.log_metric("validation.best_loss", best)
                    raise optuna.TrialPruned(str(stopped)) from stopped
                mlflow.log_metric("validation.best_loss", best)
                if progress:
                    _say(f"trial {trial.number}: validation loss {best:.4f} ({overrides})")
                return best

        study.optimize(objective, n_trials=trials, timeout=timeout_seconds, catch=(RuntimeError,))
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        if not completed:
            raise RuntimeError("no tuning trial completed; try more trials or a longer timeout")
        best_params = dict(study.best_trial.params)
        best_config = build_config(overrides=best_params, base=base)
        config_path = ws.root / TUNED_CONFIG
        config_path.write_text(yaml.safe_dump(best_config.as_dict(), sort_keys=False))
        mlflow.log_metric("validation.best_loss", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in best_params.items()})
        mlflow.log_artifact(str(config_path))
        parent_id = parent.info.run_id

    final = None
    if train_best:
        final = run_training(
            ws,
            best_config,
            until=until,
            truth_path=truth_path,
            experiment=experiment,
            progress=progress,
            splits=splits,
            run_name=f"tuned-{study_name}",
        )
        if final.run_id:
            mlflow.MlflowClient().set_tag(final.run_id, "kairos.tuned_by", parent_id)
    return TuningResult(
        study_name,
        len(study.trials),
        len(completed),
        len(pruned),
        float(study.best_value),
        best_params,
        config_path,
        parent_id,
        final,
    )


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message)
