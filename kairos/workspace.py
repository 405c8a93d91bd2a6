"""Where a run keeps its files: one workspace directory per brand.

Resolution order: an explicit ``--workspace DIR``, else ``$KAIROS_HOME``, else ``./.kairos``.
Nothing is created at import time; :func:`open_workspace` creates the folder on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = Path(".kairos")

# Telemetry calls stall commands by 10-20 s on a closed network (DESIGN.md, pitfalls); every
# process Kairos starts inherits these unless the user set them explicitly.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
}


def disable_telemetry() -> None:
    """Turn MLflow and BentoML telemetry off for this process and its children."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class Workspace:
    """Paths of everything one brand's runs write."""

    root: Path

    @property
    def event_store(self) -> Path:
        return self.root / "events.duckdb"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{(self.root / 'optuna.db').resolve()}"

    @property
    def exports(self) -> Path:
        return self.root / "exports"


def resolve_workspace(explicit: Path | None = None) -> Path:
    """Return the workspace folder the user asked for, without creating it."""
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get("KAIROS_HOME")
    return Path(from_env) if from_env else DEFAULT_WORKSPACE


def open_workspace(explicit: Path | None = None) -> Workspace:
    """Resolve and create the workspace folder."""
    root = resolve_workspace(explicit)
    root.mkdir(parents=True, exist_ok=True)
    return Workspace(root)
