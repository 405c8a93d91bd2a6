"""MLflow: runs in the workspace store, the model as a loadable pyfunc, the ``champion`` alias.

A run logs its config (``section.key`` params), data range and split, per-epoch metrics, the
evaluation table (metrics, CSV and JSON), plots, and the model: an MLflow pyfunc whose input is
one row per profile (aggregates as columns, the event sequence and activity hours as arrays;
the signature is the feature spec) and whose output has the ``kairos score`` columns. A new
version gets the alias ``champion`` only if it beats the current champion on validation.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from kairos.workspace import Workspace
from training.config import TrainConfig, build_config
from training.datasets import SEQUENCE_ARRAYS, ExampleSet, FeatureSpec
from training.metrics import PlattCalibrator
from training.model import (
    ACTIVITY_KINDS,
    CHANNELS,
    HOURS_PER_WEEK,
    KairosEnsemble,
    KairosModel,
    ModelConfig,
    build_model,
)

logger = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_EXPERIMENT = "kairos"
MODEL_ARTIFACT = "model"
_BUNDLE_FILES = ("model.pt", "model.json")


def use_workspace(ws: Workspace, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the workspace's SQLite store; create the experiment with its artifacts
    under the workspace (not ./mlruns). Returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from kairos.workspace import disable_telemetry

    disable_telemetry()
    mlflow.set_tracking_uri(ws.mlflow_tracking_uri)
    mlflow.set_registry_uri(ws.mlflow_tracking_uri)
    outer = os.environ.get("MLFLOW_RUN_ID")
    if outer:  # started by `mlflow run`: log into that run if it lives in this store
        try:
            mlflow.MlflowClient().get_run(outer)
        except MlflowException:
            logger.warning(
                "`mlflow run` created run %s in another tracking store; logging a separate "
                "run in the workspace store %s (set MLFLOW_TRACKING_URI to it to log into one)",
                outer,
                ws.mlflow_tracking_uri,
            )
            os.environ.pop("MLFLOW_RUN_ID")
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(
            experiment, artifact_location=ws.mlflow_artifacts.resolve().as_uri()
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# --- the model bundle ------------------------------------------------------------------------


@dataclass
class ModelBundle:
    """Everything needed to score: network, feature spec, calibrator, config."""

    model: KairosModel | KairosEnsemble
    spec: FeatureSpec
    calibrator: PlattCalibrator
    config: TrainConfig
    engagement_trained: bool

    def save(self, folder: Path) -> Path:
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "model.pt")
        (folder / "model.json").write_text(
            json.dumps(
                {
                    "config": self.config.as_dict(),
                    "spec": self.spec.as_dict(),
                    "calibrator": {"scale": self.calibrator.scale, "shift": self.calibrator.shift},
                    "engagement_trained": self.engagement_trained,
                },
                indent=2,
            )
        )
        return folder

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        import torch

        folder = Path(folder)
        missing = [name for name in _BUNDLE_FILES if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(f"model bundle {folder} lacks {', '.join(missing)}")
        meta = json.loads((folder / "model.json").read_text())
        config = build_config(
            overrides={
                f"{section}.{key}": value
                for section, values in meta["config"].items()
                for key, value in values.items()
            }
        )
        spec = FeatureSpec.from_dict(meta["spec"])
        model = build_model(config.model, spec.vocabulary_size, spec.category_buckets, spec.width)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        model.eval()
        calibrator = PlattCalibrator(**meta["calibrator"])
        return cls(model, spec, calibrator, config, bool(meta["engagement_trained"]))


def model_frame(examples: ExampleSet, rows: np.ndarray | None = None) -> pd.DataFrame:
    """The pyfunc input: one row per profile, aggregates as columns, arrays as lists."""
    rows = np.arange(len(examples)) if rows is None else rows
    frame = (
        examples.profiles.iloc[rows]
        .drop(
            columns=[c for c in ("ordered", "label_profile_id") if c in examples.profiles.columns]
        )
        .reset_index(drop=True)
    )
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype("datetime64[us]")
        elif pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = frame[column].astype(bool)
        elif pd.api.types.is_integer_dtype(frame[column]):
            frame[column] = frame[column].astype("float64")  # NULL-safe for the signature
    for name in SEQUENCE_ARRAYS:
        array = examples.arrays[name][rows]
        kind = bool if name == "mask" else (float if array.dtype.kind == "f" else int)
        frame[name] = [list(map(kind, r)) for r in array]
    activity = examples.arrays["activity"][rows].reshape(len(rows), -1)
    frame["activity"] = [list(map(float, r)) for r in activity]
    reached = examples.arrays["reached"][rows]
    for c, channel in enumerate(CHANNELS):
        frame[f"reached_{channel}"] = reached[:, c].astype(bool)
    return frame


def examples_from_frame(frame: pd.DataFrame) -> ExampleSet:
    """Inverse of :func:`model_frame` (what the pyfunc does with its input)."""
    missing = [
        c for c in (*SEQUENCE_ARRAYS, "activity", "profile_id", "cutoff") if c not in frame.columns
    ]
    if missing:
        raise ValueError(
            f"model input lacks column(s) {', '.join(missing)}; have: "
            f"{', '.join(map(str, frame.columns))}"
        )
    dtypes = {"tokens": np.int32, "hour_of_week": np.int32, "category": np.int32, "mask": bool}
    arrays = {
        name: np.array([np.asarray(v) for v in frame[name]], dtype=dtypes.get(name, np.float32))
        for name in SEQUENCE_ARRAYS
    }
    arrays["activity"] = np.array(
        [np.asarray(v) for v in frame["activity"]], dtype=np.float32
    ).reshape(len(frame), len(ACTIVITY_KINDS), HOURS_PER_WEEK)
    arrays["reached"] = np.stack(
        [
            frame.get(f"reached_{c}", pd.Series(True, index=frame.index)).to_numpy(bool)
            for c in CHANNELS
        ],
        axis=1,
    )
    array_columns = [*SEQUENCE_ARRAYS, "activity", *(f"reached_{c}" for c in CHANNELS)]
    profiles = frame.drop(columns=[c for c in array_columns if c in frame.columns])
    return ExampleSet(
        profiles.reset_index(drop=True),
        arrays,
        pd.DataFrame({"row": pd.Series([], dtype=np.int64)}),
    )


class KairosPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper: profile rows (:func:`model_frame`) in, ``kairos score`` columns out."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None):
        from training.scoring import score_examples

        examples = examples_from_frame(model_input)
        return score_examples(self.bundle, examples, model_version="pyfunc")

    def __getstate__(self) -> dict[str, Any]:
        # The bundle travels as an artifact, not inside the pickle.
        return {k: v for k, v in self.__dict__.items() if k != "bundle"}


# --- logging a run ---------------------------------------------------------------------------


def log_epoch(metrics: dict[str, float], epoch: int, prefix: str = "") -> None:
    import mlflow

    mlflow.log_metrics(
        {f"{prefix}{k}": float(v) for k, v in metrics.items() if k != "epoch" and np.isfinite(v)},
        step=epoch,
    )


def log_model(
    bundle: ModelBundle, input_example: pd.DataFrame, registered_model: str | None
) -> Any:
    """Log the bundle as a pyfunc with signature and input example; register it if named."""
    import mlflow
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory(prefix="kairos-bundle-") as tmp:
        folder = bundle.save(Path(tmp) / "bundle")
        wrapper = KairosPyfunc()
        wrapper.bundle = bundle
        output = wrapper.predict(None, input_example)
        signature = infer_signature(input_example, output)
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=wrapper,
            artifacts={"bundle": str(folder)},
            signature=signature,
            input_example=input_example,
            registered_model_name=registered_model,
        )


def promote_if_better(
    name: str, version: str, metric: str, value: float, higher_is_better: bool
) -> tuple[bool, float | None]:
    """Give ``version`` the champion alias if it beats the champion's validation ``metric``
    (or there is no champion). Returns (promoted, champion's value before)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    previous = None
    if champion is not None:
        run = client.get_run(champion.run_id)
        previous = run.data.metrics.get(f"validation.{metric}")
    better = (
        previous is None
        or not np.isfinite(previous)
        or (value > previous if higher_is_better else value < previous)
    )
    client.set_model_version_tag(name, version, f"validation.{metric}", f"{value:.6f}")
    if better and np.isfinite(value):
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promoted", "true")
        logger.info(
            "model %s version %s is the new champion (%s %.4f, was %s)",
            name,
            version,
            metric,
            value,
            previous,
        )
        return True, previous
    client.set_model_version_tag(name, version, "promoted", "false")
    logger.info(
        "model %s version %s not promoted: %s %.4f vs champion %.4f",
        name,
        version,
        metric,
        value,
        previous,
    )
    return False, previous


def champion_uri(name: str = "kairos") -> str:
    return f"models:/{name}@{CHAMPION}"


def load_bundle(model_uri: str) -> tuple[ModelBundle, str]:
    """The bundle behind a model URI (``models:/kairos@champion``, ``runs:/ID/model``) and a
    version label for the score output."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as error:
        raise LookupError(f"no model at {model_uri}: {error.message}") from error
    bundles = list(local.rglob("model.json"))
    if not bundles:
        raise LookupError(f"{model_uri} holds no Kairos model bundle")
    label = model_uri
    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri.removeprefix("models:/").split("@", 1)
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        label = f"{name}/{version.version}"
    return ModelBundle.load(bundles[0].parent), label


def run_bundle_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def config_from_run(run_id: str) -> tuple[TrainConfig, dict[str, str]]:
    """The config and the kairos.* params of a logged run."""
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    params = run.data.params
    known = set(TrainConfig().flat())
    config = build_config(overrides={k: v for k, v in params.items() if k in known})
    return config, {k: v for k, v in params.items() if k not in known}


def model_config_dict(config: ModelConfig) -> dict[str, Any]:
    return asdict(config)
