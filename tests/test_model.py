"""The network: shapes, losses, the cold-start prior, both encoders, config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from features.sequences import VOCABULARY_SIZE
from training.model import ACTIVITY_KINDS, CHANNELS, HOURS_PER_WEEK, KairosModel, ModelConfig

B, T, F = 5, 8, 6
K = len(ACTIVITY_KINDS)
ACTIVE_HOURS = ACTIVITY_KINDS.index("active_hours")


def batch(seed: int = 0, events: int = T) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, T - events :] = True
    activity = torch.zeros(B, K, HOURS_PER_WEEK)
    activity[:, ACTIVE_HOURS, 20] = 5.0  # everyone active Monday 20:00
    return {
        "tokens": torch.randint(1, VOCABULARY_SIZE, (B, T), generator=g) * mask,
        "hour_of_week": torch.randint(0, HOURS_PER_WEEK, (B, T), generator=g),
        "category": torch.randint(0, 17, (B, T), generator=g),
        "gap_previous": torch.rand(B, T, generator=g),
        "gap_to_cutoff": torch.rand(B, T, generator=g),
        "value": torch.rand(B, T, generator=g),
        "mask": mask,
        "activity": activity,
        "static": torch.randn(B, F, generator=g),
    }


@pytest.mark.parametrize("encoder", ["transformer", "gru"], ids=["transformer", "gru"])
def test_forward_returns_hidden_and_heads_have_documented_shapes(encoder: str) -> None:
    model = KairosModel(ModelConfig(encoder=encoder, d_model=16, heads=2), VOCABULARY_SIZE, 16, F)
    hidden = model(batch())
    assert hidden.shape == (B, 16)
    assert model.intent_logits(hidden).shape == (B,)
    assert model.engagement_logits(hidden, batch()["activity"]).shape == (
        B,
        len(CHANNELS),
        HOURS_PER_WEEK,
    )
    out = model.predict(batch())
    assert out["p_engage"].shape == (B, len(CHANNELS), HOURS_PER_WEEK)
    assert torch.all((out["p_intent_raw"] > 0) & (out["p_intent_raw"] < 1))


def test_losses_are_finite_and_backpropagate() -> None:
    model = KairosModel(ModelConfig(d_model=16, heads=2), VOCABULARY_SIZE, 16, F)
    b = batch()
    hidden = model(b)
    loss = model.intent_loss(hidden, torch.tensor([1.0, 0, 0, 1, 0])) + model.engagement_loss(
        hidden,
        b["activity"],
        torch.tensor([0, 0, 3]),
        torch.tensor([0, 1, 2]),
        torch.tensor([10, 20, 167]),
        torch.tensor([1.0, 0.0, 1.0]),
    )
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.send_window.kernel_logits.grad is not None
    assert model.encoder.token.weight.grad is not None


def test_no_sends_gives_a_zero_engagement_loss() -> None:
    model = KairosModel(ModelConfig(d_model=16, heads=2), VOCABULARY_SIZE, 16, F)
    b = batch()
    empty = torch.zeros(0, dtype=torch.long)
    loss = model.engagement_loss(model(b), b["activity"], empty, empty, empty, empty.float())
    assert float(loss) == 0.0


def test_profile_without_events_is_defined_and_falls_back_to_the_population_prior() -> None:
    model = KairosModel(ModelConfig(d_model=16, heads=2), VOCABULARY_SIZE, 16, F).eval()
    prior = torch.full((HOURS_PER_WEEK,), 1.0)
    prior[100] = 50.0  # the population is most active at hour 100
    model.send_window.activity_prior.copy_(prior / prior.sum())
    b = batch(events=0)
    b["activity"] = torch.zeros(B, K, HOURS_PER_WEEK)
    density, evidence = model.send_window.density(b["activity"])
    assert torch.all(evidence == 0)
    assert torch.all(density.argmax(dim=1) == 100)
    assert torch.allclose(density.sum(dim=1), torch.ones(B))
    assert torch.isfinite(model(b)).all()


def test_activity_hours_move_the_send_window_to_the_persons_hour() -> None:
    model = KairosModel(ModelConfig(d_model=16, heads=2), VOCABULARY_SIZE, 16, F).eval()
    b = batch()
    b["activity"] = torch.zeros(B, K, HOURS_PER_WEEK)
    b["activity"][:, ACTIVE_HOURS, 42] = 30.0
    logits = model.engagement_logits(model(b), b["activity"])
    assert torch.all(logits.mean(dim=1).argmax(dim=1) == 42)


def test_hour_of_day_is_pooled_across_days_and_sessions_outweigh_raw_events() -> None:
    """Active hours on Monday-Thursday 19:00 point to 19:00 on Friday too (people keep their
    hours of the day); 40 raw events of one long session at 03:00 weigh less than that."""
    model = KairosModel(ModelConfig(d_model=16, heads=2), VOCABULARY_SIZE, 16, F).eval()
    activity = torch.zeros(1, K, HOURS_PER_WEEK)
    for day in range(4):
        activity[0, ACTIVE_HOURS, 24 * day + 19] = 1.0
    activity[0, ACTIVITY_KINDS.index("activity"), 24 * 4 + 3] = 40.0
    activity[0, ACTIVE_HOURS, 24 * 4 + 3] = 1.0
    density, evidence = model.send_window.density(activity)
    friday = density[0, 24 * 4 : 24 * 5]
    assert int(friday.argmax()) == 19
    assert float(evidence[0]) == pytest.approx(5.0 + 0.01 * 40, rel=1e-3)


def test_padding_does_not_change_the_output() -> None:
    """Left padding: the same events with more padding in front give the same hidden state."""
    torch.manual_seed(0)
    model = KairosModel(ModelConfig(d_model=16, heads=2, dropout=0.0), VOCABULARY_SIZE, 16, 0)
    model.eval()
    short = batch(events=3)
    shorter = {k: v.clone() for k, v in short.items()}
    for k in ("tokens", "hour_of_week", "category", "gap_previous", "gap_to_cutoff", "value"):
        shorter[k][:, : T - 3] = torch.randint(0, 5, (B, T - 3)).to(shorter[k].dtype)
    np.testing.assert_allclose(model(short).detach(), model(shorter).detach(), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder": "transformer", "d_model": 30, "heads": 4}, "must divide"),
        ({"dropout": 1.0}, "dropout"),
        ({"layers": 0}, "layers"),
        ({"prior_strength": 0.0}, "prior_strength"),
        ({"members": 0}, "members"),
    ],
    ids=["heads-divide", "dropout", "layers", "prior", "members"],
)
def test_model_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)
