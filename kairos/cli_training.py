"""``kairos train | tune | evaluate | score``: the model stages of the CLI.

``register(app)`` adds the four commands to the main Typer app. Human-friendly tables by
default; ``--json`` prints one JSON object on stdout (train / evaluate: the metrics table).
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kairos.options import JsonOption, WorkspaceOption
from kairos.workspace import disable_telemetry, open_workspace

console = Console(stderr=True)

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="YAML or JSON config file (sections data, model, optim, "
        "evaluation); unknown keys fail.",
        show_default=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override one config key, repeatable: --set model.d_model=32. "
        "Unknown keys and wrong types fail.",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Read no event after this instant, labels included (ISO, UTC "
        "unless an offset is given) (default: midnight before the last event).",
        show_default=False,
    ),
]
HorizonOption = Annotated[
    int | None,
    typer.Option(
        "--horizon-days",
        min=1,
        help="Intent horizon H: P(order within H days) (default: data.horizon_days, 7).",
        show_default=False,
    ),
]
TruthOption = Annotated[
    str | None,
    typer.Option(
        "--truth",
        help="Simulated data only: truth.parquet from `kairos simulate`, for the oracle rows "
        "of the evaluation: the future path (oracle), the present state (oracle_present) and "
        "the best any reader of each person's history could do (oracle_history).",
        show_default=False,
    ),
]
ExperimentOption = Annotated[
    str, typer.Option("--experiment", help="MLflow experiment name in the workspace store.")
]


def register(app: typer.Typer) -> None:
    """Add ``train``, ``tune``, ``evaluate`` and ``score`` to the main app."""
    app.command("train")(train)
    app.command("tune")(tune)
    app.command("evaluate")(evaluate)
    app.command("score")(score)


def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    until: UntilOption = None,
    horizon_days: HorizonOption = None,
    truth: TruthOption = None,
    experiment: ExperimentOption = "kairos",
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the sequence model with its baselines on a time split, log the run to MLflow and
    register it; it becomes `champion` only if it beats the current champion on validation."""
    from training.pipeline import run_training

    _setup(as_json)
    train_config = _config(config, set_, horizon_days)
    ws = open_workspace(workspace)
    result = _guard(
        lambda: run_training(
            ws,
            train_config,
            until=_instant(until),
            truth_path=_path(truth),
            experiment=experiment,
            progress=not as_json,
        )
    )
    summary = result.summary()
    if as_json:
        print(json.dumps(summary, default=_json_default))
        return
    _print_metrics(result.evaluation.table(), "Test evaluation (same split for every model)")
    for note in result.evaluation.notes:
        console.print(f"[dim]note: {note}[/dim]")
    verdict = "[green]new champion[/green]" if result.promoted else "registered, not champion"
    console.print(
        f"run {result.run_id}: model version {result.model_version} {verdict} "
        f"(validation intent ROC-AUC {summary['validation']['intent_roc_auc']:.4f}); "
        f"{summary['examples_per_second']:,.0f} training examples/s; engagement head "
        f"{summary['engagement_head']}"
    )


def tune(
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials to run.")] = 10,
    config: ConfigOption = None,
    set_: SetOption = None,
    until: UntilOption = None,
    horizon_days: HorizonOption = None,
    truth: TruthOption = None,
    study: Annotated[
        str, typer.Option(help="Optuna study name (resumed if it exists).")
    ] = "kairos",
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
    experiment: ExperimentOption = "kairos",
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tune model and optimiser settings with Optuna (TPE, median pruning on validation loss),
    each trial a nested MLflow run; then train the best config as a normal run."""
    from training.tuning import run_tuning

    _setup(as_json)
    base = _config(config, set_, horizon_days)
    ws = open_workspace(workspace)
    result = _guard(
        lambda: run_tuning(
            ws,
            base,
            trials,
            until=_instant(until),
            truth_path=_path(truth),
            experiment=experiment,
            study_name=study,
            timeout_seconds=timeout,
            progress=not as_json,
        )
    )
    out: dict[str, Any] = {
        "study": result.study_name,
        "trials": result.trials,
        "completed": result.completed,
        "pruned": result.pruned,
        "best_validation_loss": result.best_value,
        "best_params": result.best_params,
        "config": str(result.config_path),
        "tune_run_id": result.parent_run_id,
    }
    if result.final is not None:
        out["final"] = result.final.summary()
    if as_json:
        print(json.dumps(out, default=_json_default))
        return
    console.print(
        f"study {result.study_name}: {result.completed} trials completed, {result.pruned} "
        f"pruned; best validation loss {result.best_value:.4f}\n  best: {result.best_params}\n"
        f"  written to {result.config_path}"
    )
    if result.final is not None:
        _print_metrics(result.final.evaluation.table(), "Tuned model, test evaluation")
        verdict = "new champion" if result.final.promoted else "registered, not champion"
        console.print(
            f"tuned run {result.final.run_id}: version {result.final.model_version} {verdict}"
        )


def evaluate(
    run: Annotated[
        str | None,
        typer.Option("--run", help="MLflow run id to evaluate (default: the champion's run)."),
    ] = None,
    truth: TruthOption = None,
    experiment: ExperimentOption = "kairos",
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a run's model on its test cutoffs against baselines on the same split: intent
    metrics with bootstrap intervals, engagement log loss / AUC, off-policy and true send-time
    value. Written into the run in MLflow and printed."""
    from training.pipeline import run_evaluation

    _setup(as_json)
    ws = open_workspace(workspace)
    run_id, evaluation = _guard(
        lambda: run_evaluation(
            ws, run or None, truth_path=_path(truth), experiment=experiment, progress=not as_json
        )
    )
    if as_json:
        print(json.dumps({"run_id": run_id, **evaluation.as_json()}, default=_json_default))
        return
    _print_metrics(evaluation.table(), f"Evaluation of run {run_id}")
    for note in evaluation.notes:
        console.print(f"[dim]note: {note}[/dim]")


def score(
    at: Annotated[
        str,
        typer.Option(
            "--at", help="Score every profile as of this instant (ISO; nothing later is read)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output file, .parquet or .csv.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="MLflow model URI (default: models:/kairos@champion)."),
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """One row per profile: p_convert, best_hour_of_week, p_engage_email/sms/push,
    engagement_tier, how much history they rest on, and the model version."""
    from features.profile_source import default_profile_source
    from training import registry
    from training.pipeline import open_events
    from training.scoring import score_at

    _setup(as_json)
    if out.suffix.lower() not in (".parquet", ".csv"):
        _fail(f"--out must end in .parquet or .csv, got {out.name}", code=2)
    instant = _instant(at)
    ws = open_workspace(workspace)

    def run() -> tuple[Any, float]:
        registry.use_workspace(ws)
        bundle, version = registry.load_bundle(model or registry.champion_uri())
        started = time.perf_counter()
        with open_events(ws) as connection:
            frame = score_at(
                connection, default_profile_source(connection, instant), instant, bundle, version
            )
        return frame, time.perf_counter() - started

    frame, seconds = _guard(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    result = {
        "profiles": len(frame),
        "seconds": round(seconds, 3),
        "profiles_per_second": round(len(frame) / max(seconds, 1e-9), 1),
        "model_version": frame["model_version"].iloc[0] if len(frame) else None,
        "out": str(out),
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"scored {result['profiles']:,} profiles at {instant:%Y-%m-%d %H:%M} with "
        f"{result['model_version']} in {seconds:.1f} s "
        f"({result['profiles_per_second']:,.0f}/s) -> {out}"
    )


# --- helpers ---------------------------------------------------------------------------------


def _setup(quiet: bool) -> None:
    disable_telemetry()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "optuna", "lightgbm"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not quiet else logging.ERROR)


def _config(file: str | None, overrides: list[str] | None, horizon_days: int | None):
    from training.config import ConfigError, build_config

    try:
        pairs = [pair for pair in overrides or [] if pair.strip()]
        if horizon_days is not None:
            pairs.append(f"data.horizon_days={horizon_days}")
        return build_config(_path(file), pairs)
    except ConfigError as error:
        _fail(str(error), code=2)


def _path(text: str | None) -> Path | None:
    """Empty means not given (MLproject parameters cannot be absent)."""
    return Path(text) if text and text.strip() else None


def _instant(text: str | None) -> datetime | None:
    from training.datasets import parse_instant

    if text is None or not text.strip():
        return None
    try:
        return parse_instant(text)
    except ValueError as error:
        _fail(str(error), code=2)


def _guard(action):
    try:
        return action()
    except (FileNotFoundError, LookupError, ValueError, RuntimeError) as error:
        _fail(str(error))


_PAIRED = "roc_auc_minus_"  # metric names of paired ROC-AUC differences: model minus the rest


def _print_metrics(table, title: str) -> None:
    """One rich table per section: models as rows, that section's metrics as columns. Paired
    ROC-AUC differences get a table of their own, so that neither is too wide to read."""
    from training.evaluation import format_table

    if table.empty:
        console.print("(no evaluation rows)")
        return
    Console().rule(title)
    for section, rows in table.groupby("section", sort=False):
        paired = rows["metric"].str.startswith(_PAIRED)
        differences = f"{section}: ROC-AUC minus the column model's, paired"
        for name, part in ((section, rows[~paired]), (differences, rows[paired])):
            if part.empty:
                continue
            shown = format_table(part)
            Console().print(name, style="italic")  # a table's own title wraps at its width
            out = Table()
            out.add_column("model")
            for metric in shown.columns:
                out.add_column(str(metric).removeprefix(_PAIRED), justify="right")
            for (_, model), row in shown.iterrows():
                out.add_row(model, *[v if isinstance(v, str) else "" for v in row])
            Console().print(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, datetime | Path):
        return str(value)
    return str(value)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)
