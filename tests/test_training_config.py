"""The training config: defaults, files, overrides; unknown keys and wrong types fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kairos.cli_training import register
from training.config import ConfigError, TrainConfig, build_config, known_keys


def test_defaults_and_flat_keys() -> None:
    config = build_config()
    assert config == TrainConfig()
    assert "model.d_model" in known_keys() and "data.horizon_days" in known_keys()


def test_overrides_are_typed() -> None:
    config = build_config(
        overrides=[
            "model.d_model=48",
            "optim.learning_rate=1e-3",
            "model.encoder=transformer",
            "model.heads=4",
        ]
    )
    assert config.model.d_model == 48 and isinstance(config.model.d_model, int)
    assert config.optim.learning_rate == pytest.approx(1e-3)
    assert config.model.encoder == "transformer"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  horizon_days: 30\nmodel:\n  d_model: 16\n  heads: 2\n")
    config = build_config(path, ["model.d_model=24"])
    assert config.data.horizon_days == 30
    assert config.model.d_model == 24


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.dmodel=32"], "unknown config key 'model.dmodel'"),
        (["learning_rate=0.1"], "unknown config key 'learning_rate'"),
        (["model.d_model=abc"], "model.d_model must be an integer"),
        (["optim.learning_rate=fast"], "optim.learning_rate must be a number"),
        (["model.encoder=lstm"], "model.encoder must be one of transformer, gru"),
        (["data.horizon_days=0"], "data.horizon_days must be at least 1"),
        (["model.d_model"], "is not KEY=VALUE"),
    ],
    ids=["typo", "no-section", "int", "float", "choice", "range", "no-equals"],
)
def test_bad_overrides_fail(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle:\n  d_model: 3\n", "unknown config section 'modle'"),
        ("model:\n  d_modle: 3\n", "unknown config key 'model.d_modle'"),
        ("model:\n  d_model: true\n", "model.d_model must be an integer"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
    ids=["section", "key", "type", "not-a-mapping"],
)
def test_bad_config_files_fail(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(path)


def test_cli_rejects_unknown_key_with_exit_code_2(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(
        app, ["train", "--set", "model.dmodel=32", "--workspace", str(tmp_path / "ws")]
    )
    assert result.exit_code == 2
    assert "unknown config key 'model.dmodel'" in result.output
    assert not (tmp_path / "ws" / "mlflow.db").exists()  # nothing ran


def test_cli_train_without_events_says_what_to_do(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert "kairos ingest" in result.output
