"""The typed training configuration: data, model and optimisation settings in one object.

A config comes from defaults, then a YAML/JSON file, then ``--set section.key=value``
overrides. Every key is checked: an unknown key or a value of the wrong type fails loudly with
the list of known keys (nanoGPT's ``Unknown config key`` check, without its ``exec``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from training.model import ModelConfig


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class DataConfig:
    horizon_days: int = 7  # intent label: an order within this many days after the cutoff
    send_window_days: int = 3  # engagement labels: sends this many days after each cutoff
    stride_days: int = 7  # days between consecutive cutoffs
    max_train_cutoffs: int = 8  # most recent training cutoffs kept (older ones are dropped)
    validation_cutoffs: int = 1  # cutoffs for early stopping, calibration and the champion test
    test_cutoffs: int = 1  # the last cutoffs, evaluated once
    min_history_days: int = 7  # the first cutoff is at least this long after the first event
    sequence_length: int = 64  # most recent events per profile fed to the encoder
    category_buckets: int = 1024  # hashed product categories
    max_profiles_per_cutoff: int = 0  # training cutoffs only: random subsample; 0 keeps all

    def __post_init__(self) -> None:
        for name in (
            "horizon_days",
            "send_window_days",
            "stride_days",
            "max_train_cutoffs",
            "validation_cutoffs",
            "test_cutoffs",
            "sequence_length",
            "category_buckets",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.min_history_days < 0 or self.max_profiles_per_cutoff < 0:
            raise ConfigError("data.min_history_days and data.max_profiles_per_cutoff must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 8  # passes over the training examples (early stopping may end sooner)
    batch_size: int = 512  # profiles per gradient step
    learning_rate: float = 2e-3  # AdamW peak rate, cosine-decayed to 10% over the epochs
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    engagement_weight: float = 1.0  # weight of the engagement loss next to the intent loss
    patience: int = 2  # epochs without validation improvement before stopping
    gradient_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.0  # exponential moving average of the weights per step; 0 = off
    seed: int = 7  # seeds data order, initialisation and subsampling
    threads: int = 2  # torch CPU threads

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.threads < 1:
            raise ConfigError("optim.epochs, batch_size, patience and threads must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.engagement_weight < 0:
            raise ConfigError(
                "optim.learning_rate must be > 0, weight_decay and engagement_weight >= 0"
            )


@dataclass(frozen=True)
class EvaluationConfig:
    bootstrap_resamples: int = 200  # resamples for every confidence interval
    registered_model: str = "kairos"  # MLflow registered model name
    champion_metric: Literal["intent_roc_auc", "intent_log_loss"] = "intent_roc_auc"

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 10:
            raise ConfigError("evaluation.bootstrap_resamples must be at least 10")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"data.horizon_days": 7, ...}``: the form MLflow params and ``--set`` use."""
        return {
            f"{section}.{key}": value
            for section, values in self.as_dict().items()
            for key, value in values.items()
        }


def known_keys() -> list[str]:
    return sorted(TrainConfig().flat())


def build_config(
    file: Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``), then ``file`` (YAML or JSON, sections as in TrainConfig), then
    ``overrides`` (``["model.d_model=32", ...]`` or a flat dict). Raises ConfigError."""
    values: dict[str, dict[str, Any]] = (base or TrainConfig()).as_dict()
    if file is not None:
        _merge(values, _read_file(Path(file)), source=str(file))
    if overrides:
        pairs = overrides.items() if isinstance(overrides, dict) else map(_split, overrides)
        for key, value in pairs:
            section, name = _check_key(key)
            values[section][name] = value
    return _construct(values)


def _split(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. model.d_model=32)")
    return key.strip(), value.strip()


def _check_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if key not in TrainConfig().flat():
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known_keys())}")
    return section, name


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text()
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {loaded!r}")
    return loaded


def _merge(values: dict[str, dict[str, Any]], loaded: dict[str, Any], source: str) -> None:
    for section, entries in loaded.items():
        if section not in values:
            raise ConfigError(
                f"{source}: unknown config section {section!r}; known: {', '.join(values)}"
            )
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for name, value in entries.items():
            _check_key(f"{section}.{name}")
            values[section][name] = value


def _construct(values: dict[str, dict[str, Any]]) -> TrainConfig:
    sections = {}
    for section_field in dataclasses.fields(TrainConfig):
        cls = section_field.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        kwargs = {
            name: _coerce(f"{section_field.name}.{name}", value, hints[name])
            for name, value in values[section_field.name].items()
        }
        try:
            sections[section_field.name] = cls(**kwargs)
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(str(error)) from error
    return TrainConfig(**sections)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (int, float, bool, str, a Literal, or ``X | None``)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(key, value, options[0])
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {kind!r}")
