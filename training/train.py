"""The training loop: seeded, early-stopped on validation loss, calibrated on validation.

``fit`` takes example sets (``training.datasets``) and a :class:`~training.config.TrainConfig`
and returns a :class:`TrainedModel`: the network, its feature spec, the intent calibrator and
the per-epoch history. ``infer`` turns any example set into predictions. No I/O here: MLflow
logging lives in ``training.registry``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig
from training.datasets import ExampleSet, FeatureSpec, attach_static, model_inputs
from training.metrics import PlattCalibrator, log_loss, roc_auc
from training.model import CHANNELS, HOURS_PER_WEEK, KIND_WEIGHTS, KairosEnsemble, KairosModel

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised by an ``on_epoch`` callback to end training early (Optuna pruning)."""


@dataclass
class TrainedModel:
    model: KairosModel | KairosEnsemble
    spec: FeatureSpec
    calibrator: PlattCalibrator
    config: TrainConfig
    engagement_trained: bool  # False when the data had no logged sends
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    train_seconds: float = 0.0
    examples_per_second: float = 0.0  # training examples (profile x cutoff) per second


@dataclass
class Predictions:
    """Model outputs for every row of an example set (and each of its logged sends)."""

    p_intent_raw: np.ndarray  # (P,) uncalibrated
    p_intent: np.ndarray  # (P,) calibrated
    best_hour: np.ndarray  # (P,) argmax over the 168 hours of the week
    best_hour_by_day: np.ndarray  # (P, 7) argmax hour of week within each day of the week
    p_engage_at_best: np.ndarray  # (P, C) at best_hour, per channel
    hour_evidence: np.ndarray  # (P,) weighted events behind the send window
    send_probability: np.ndarray  # (S,) P(engage) at each logged send's channel and hour
    curves: np.ndarray | None = None  # (P, C, 168) float16 when asked for


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.set_num_threads(threads)


def population_activity(examples: ExampleSet) -> np.ndarray:
    """(168,) share of all activity per hour of week (the kinds weighted as the head starts
    out weighting them), with one pseudo-event per hour."""
    activity = examples.arrays["activity"]
    weights = np.asarray(KIND_WEIGHTS[: activity.shape[1]], dtype=np.float64)
    totals = np.einsum("pkh,k->h", activity, weights, dtype=np.float64) + 1.0
    return totals / totals.sum()


def static_bin_edges(static: np.ndarray, bins: int) -> np.ndarray:
    """(F, bins + 1) quantile edges of each feature, strictly increasing."""
    quantiles = np.quantile(static, np.linspace(0, 1, bins + 1), axis=0).T  # (F, bins + 1)
    steps = np.maximum(np.diff(quantiles, axis=1), 1e-4)  # collapsed bins get a tiny width
    edges = np.concatenate([quantiles[:, :1], quantiles[:, :1] + np.cumsum(steps, axis=1)], 1)
    return edges.astype(np.float32)


def fit(
    train: ExampleSet,
    validation: ExampleSet,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train on ``train``, stop early and calibrate on ``validation``."""
    if not train.has_labels or not validation.has_labels:
        raise ValueError("training and validation examples need labels (column `ordered`)")
    if len(train) == 0 or len(validation) == 0:
        raise ValueError(f"empty split: {len(train)} training, {len(validation)} validation rows")
    optim = config.optim
    seed_everything(optim.seed, optim.threads)
    spec = FeatureSpec.fit(train.profiles, config.data)
    attach_static(train, spec)
    attach_static(validation, spec)
    engagement_trained = train.has_sends
    if not engagement_trained:
        logger.warning(
            "no logged sends in the training data: the engagement head is not trained; the "
            "send window falls back to each profile's activity hours"
        )
    members, history, best_epoch, train_seconds, trained_examples = [], [], 0, 0.0, 0
    for member in range(config.model.members):
        # Member 0 uses the configured seed (a one-member "ensemble" is the plain model);
        # only its epochs reach ``on_epoch`` (MLflow steps, Optuna pruning).
        seed_everything(optim.seed + member, optim.threads)
        fitted = _fit_network(
            train,
            validation,
            config,
            spec,
            engagement_trained,
            optim.seed + member,
            on_epoch if member == 0 else None,
            progress,
        )
        members.append(fitted.model)
        history += (
            [{**row, "member": member} for row in fitted.history] if member else fitted.history
        )
        best_epoch = best_epoch or fitted.best_epoch
        train_seconds += fitted.train_seconds
        trained_examples += fitted.trained_examples
    model = members[0] if len(members) == 1 else KairosEnsemble(members).eval()
    raw = infer_intent(model, validation, spec)
    calibrator = PlattCalibrator.fit(validation.profiles["ordered"].to_numpy(float), raw)
    return TrainedModel(
        model=model,
        spec=spec,
        calibrator=calibrator,
        config=config,
        engagement_trained=engagement_trained,
        history=history,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        examples_per_second=trained_examples / max(train_seconds, 1e-9),
    )


@dataclass
class _FittedNetwork:
    model: KairosModel
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    trained_examples: int


def _fit_network(
    train: ExampleSet,
    validation: ExampleSet,
    config: TrainConfig,
    spec: FeatureSpec,
    engagement_trained: bool,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    progress: bool,
) -> _FittedNetwork:
    """One network: initialised from the training data, trained with early stopping on the
    validation loss; its best weights."""
    optim = config.optim
    model = KairosModel(config.model, spec.vocabulary_size, spec.category_buckets, spec.width)
    model.send_window.activity_prior.copy_(torch.from_numpy(population_activity(train)).float())
    if model.encoder.static_edges is not None:
        model.encoder.static_edges.copy_(
            torch.from_numpy(static_bin_edges(train.arrays["static"], config.model.static_bins))
        )
    base_rate = float(np.clip(train.profiles["ordered"].mean(), 1e-4, 1 - 1e-4))
    torch.nn.init.constant_(model.intent.bias, math.log(base_rate / (1 - base_rate)))
    trainable = [
        p
        for name, p in model.named_parameters()
        if engagement_trained or not name.startswith("send_window.")
    ]
    optimizer = torch.optim.AdamW(
        trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(len(train) / optim.batch_size))
    total_steps = steps_per_epoch * optim.epochs
    warmup = min(100, total_steps // 10 + 1)

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_share = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_share)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    # Validation peaks within the first epochs (each profile recurs at every cutoff), while the
    # learning rate is still high; the weights' moving average (Polyak & Juditsky, 1992) is the
    # cheap ensemble of the last few hundred steps. It is what gets validated and kept.
    average = _WeightAverage(model, optim.ema_decay) if optim.ema_decay > 0 else None
    rng = np.random.default_rng(seed)
    best_loss, best_state, best_epoch, stale = math.inf, None, 0, 0
    history: list[dict[str, float]] = []
    trained_examples, train_seconds = 0, 0.0
    with _epoch_progress(progress, optim.epochs, steps_per_epoch) as bar:
        for epoch in range(1, optim.epochs + 1):
            model.train()
            order = rng.permutation(len(train))
            started = time.perf_counter()
            running, seen = 0.0, 0
            for first in range(0, len(order), optim.batch_size):
                rows = order[first : first + optim.batch_size]
                loss = _batch_loss(
                    model, train, spec, rows, optim.engagement_weight, engagement_trained
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, optim.gradient_clip)
                optimizer.step()
                scheduler.step()
                if average is not None:
                    average.update(model)
                running += loss.item() * len(rows)
                seen += len(rows)
                bar.step(f"epoch {epoch}/{optim.epochs} loss {running / seen:.4f}")
            train_seconds += time.perf_counter() - started
            trained_examples += seen
            live = average.swap_in(model) if average is not None else None
            metrics = {
                "train_loss": running / seen,
                **_validation_metrics(
                    model, validation, spec, optim.engagement_weight, engagement_trained
                ),
            }
            metrics["epoch"] = epoch
            history.append(metrics)
            bar.note(
                f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, validation loss "
                f"{metrics['val_loss']:.4f}, intent AUC {metrics['val_intent_roc_auc']:.4f}"
                + (
                    f", engagement log loss {metrics['val_engagement_log_loss']:.4f}"
                    if engagement_trained
                    else ""
                )
            )
            if metrics["val_loss"] < best_loss - 1e-5:
                best_loss, best_epoch, stale = metrics["val_loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            if live is not None:
                model.load_state_dict(live)  # keep training the live weights
            if on_epoch is not None:
                on_epoch(epoch, metrics)  # may raise TrainingStopped
            if stale >= optim.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return _FittedNetwork(model, history, best_epoch, train_seconds, trained_examples)


class _WeightAverage:
    """Exponential moving average of a model's floating-point state, with the warm-up of
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` so that early steps do not keep
    the random initialisation: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[name].lerp_(value, 1.0 - decay)
            else:
                self.state[name].copy_(value)

    def swap_in(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights; return a copy of the live ones to restore later."""
        live = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.state)
        return live


def _batch_loss(
    model: KairosModel,
    examples: ExampleSet,
    spec: FeatureSpec,
    rows: np.ndarray,
    engagement_weight: float,
    engagement_trained: bool,
) -> torch.Tensor:
    batch = model_inputs(examples, spec, rows)
    hidden = model(batch)
    ordered = torch.from_numpy(examples.profiles["ordered"].to_numpy(np.float32)[rows])
    loss = model.intent_loss(hidden, ordered)
    if engagement_trained and engagement_weight > 0:
        position, index = examples.batch_sends(rows)
        sends = examples.sends
        loss = loss + engagement_weight * model.engagement_loss(
            hidden,
            batch["activity"],
            torch.from_numpy(position),
            torch.from_numpy(sends["channel"].to_numpy(np.int64)[index]),
            torch.from_numpy(sends["hour_of_week"].to_numpy(np.int64)[index]),
            torch.from_numpy(sends["engaged"].to_numpy(np.float32)[index]),
        )
    return loss


@torch.no_grad()
def _validation_metrics(
    model: KairosModel,
    validation: ExampleSet,
    spec: FeatureSpec,
    engagement_weight: float,
    engagement_trained: bool,
) -> dict[str, float]:
    model.eval()
    predictions = infer(model, validation, spec, PlattCalibrator())
    y = validation.profiles["ordered"].to_numpy(float)
    metrics = {
        "val_intent_log_loss": log_loss(y, predictions.p_intent_raw),
        "val_intent_roc_auc": roc_auc(y, predictions.p_intent_raw),
    }
    loss = metrics["val_intent_log_loss"]
    if engagement_trained and validation.has_sends:
        engaged = validation.sends["engaged"].to_numpy(float)
        metrics["val_engagement_log_loss"] = log_loss(engaged, predictions.send_probability)
        metrics["val_engagement_roc_auc"] = roc_auc(engaged, predictions.send_probability)
        loss += engagement_weight * metrics["val_engagement_log_loss"]
    metrics["val_loss"] = loss
    return metrics


@torch.no_grad()
def infer_intent(
    model: KairosModel, examples: ExampleSet, spec: FeatureSpec, batch_size: int = 2048
) -> np.ndarray:
    model.eval()
    out = []
    for first in range(0, len(examples), batch_size):
        rows = np.arange(first, min(first + batch_size, len(examples)))
        out.append(torch.sigmoid(model.intent_logits(model(model_inputs(examples, spec, rows)))))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@torch.no_grad()
def infer(
    model: KairosModel,
    examples: ExampleSet,
    spec: FeatureSpec,
    calibrator: PlattCalibrator,
    batch_size: int = 2048,
    curves: bool = False,
) -> Predictions:
    """Every prediction the evaluation and scoring need, batch by batch."""
    model.eval()
    n = len(examples)
    p_raw = np.zeros(n)
    best_hour = np.zeros(n, dtype=np.int64)
    best_by_day = np.zeros((n, 7), dtype=np.int64)
    at_best = np.zeros((n, len(CHANNELS)))
    evidence = np.zeros(n)
    send_probability = np.zeros(len(examples.sends))
    all_curves = np.zeros((n, len(CHANNELS), HOURS_PER_WEEK), np.float16) if curves else None
    send_channel = examples.sends["channel"].to_numpy(np.int64) if len(examples.sends) else None
    send_hour = examples.sends["hour_of_week"].to_numpy(np.int64) if len(examples.sends) else None
    for first in range(0, n, batch_size):
        rows = np.arange(first, min(first + batch_size, n))
        batch = model_inputs(examples, spec, rows)
        hidden = model(batch)
        p_raw[rows] = torch.sigmoid(model.intent_logits(hidden)).numpy()
        logits = model.engagement_logits(hidden, batch["activity"])  # (B, C, 168)
        hour_score = logits.mean(dim=1)  # the hour term is shared by the channels
        best = hour_score.argmax(dim=1)
        best_hour[rows] = best.numpy()
        best_by_day[rows] = (
            hour_score.view(-1, 7, 24).argmax(dim=2) + 24 * torch.arange(7)
        ).numpy()
        probabilities = torch.sigmoid(logits)
        at_best[rows] = probabilities[torch.arange(len(rows)), :, best].numpy()
        evidence[rows] = model.send_window.density(batch["activity"])[1].numpy()
        if all_curves is not None:
            all_curves[rows] = probabilities.numpy().astype(np.float16)
        if send_channel is not None:
            position, index = examples.batch_sends(rows)
            send_probability[index] = probabilities[
                torch.from_numpy(position),
                torch.from_numpy(send_channel[index]),
                torch.from_numpy(send_hour[index]),
            ].numpy()
    return Predictions(
        p_intent_raw=p_raw,
        p_intent=calibrator(p_raw),
        best_hour=best_hour,
        best_hour_by_day=best_by_day,
        p_engage_at_best=at_best,
        hour_evidence=evidence,
        send_probability=send_probability,
        curves=all_curves,
    )


class _EpochProgress:
    def __init__(self, progress: Any, task: Any, steps: int):
        self.progress, self.task, self.steps = progress, task, steps

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=description)

    def note(self, message: str) -> None:
        logger.info(message)
        if self.progress is not None:
            self.progress.console.print(message)
            self.progress.reset(self.task, total=self.steps)


class _NoProgress:
    def __enter__(self) -> _EpochProgress:
        return _EpochProgress(None, None, 0)

    def __exit__(self, *args: object) -> None:
        return None


class _RichProgress:
    def __init__(self, steps: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.steps = steps
        self.progress = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )

    def __enter__(self) -> _EpochProgress:
        self.progress.__enter__()
        task = self.progress.add_task("training", total=self.steps)
        return _EpochProgress(self.progress, task, self.steps)

    def __exit__(self, *args: object) -> None:
        self.progress.__exit__(*args)


def _epoch_progress(enabled: bool, epochs: int, steps: int) -> Any:
    return _RichProgress(steps) if enabled else _NoProgress()
