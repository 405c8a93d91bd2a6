"""Evaluation pieces on tiny hand-made inputs: off-policy value, true send-time value, the
baselines (BG/NBD, hour heuristics, global hours), the cutoff plan and the feature spec."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from training.baselines import (
    BetaGeometricNBD,
    GlobalHours,
    most_frequent_hour,
    recency_frequency_score,
)
from training.config import DataConfig
from training.datasets import ExampleSet, FeatureSpec, plan_cutoffs
from training.evaluation import (
    Evaluation,
    _off_policy,
    _ratio_estimate,
    _true_value,
    addressable_profiles,
)
from training.model import HOURS_PER_WEEK


def sends_frame(rows, hours, engaged, propensity=1 / 24) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": np.array(rows, dtype=np.int64),
            "channel": np.zeros(len(rows), dtype=np.int64),
            "hour_of_week": np.array(hours, dtype=np.int64),
            "propensity": np.full(len(rows), propensity),
            "engaged": np.array(engaged, dtype=bool),
        }
    )


def test_off_policy_value_is_the_engagement_rate_of_matching_sends() -> None:
    # Profile 0 was sent at Monday 09:00 (engaged) and Tuesday 10:00 (not); profile 1 at
    # Monday 09:00 (not engaged).
    sends = sends_frame([0, 0, 1], [9, 24 + 10, 9], [True, False, False])
    always_nine = np.tile(np.arange(7) * 24 + 9, (2, 1))  # 09:00 every day
    always_ten = np.tile(np.arange(7) * 24 + 10, (2, 1))
    result = Evaluation()
    _off_policy(result, sends, {"nine": always_nine, "ten": always_ten}, resamples=20, seed=0)
    table = result.table().set_index("model")
    assert table.loc["nine", "value"] == pytest.approx(0.5)  # 1 of the 2 sends at 09:00
    assert table.loc["nine", "n"] == 2
    assert table.loc["ten", "value"] == pytest.approx(0.0)
    assert table.loc["logged_random_policy", "value"] == pytest.approx(1 / 3)


def test_off_policy_weights_by_the_inverse_propensity() -> None:
    sends = sends_frame([0, 1], [9, 9], [True, False])
    sends.loc[0, "propensity"] = 0.5  # a likely hour counts less than an unlikely one
    sends.loc[1, "propensity"] = 0.1
    policy = np.tile(np.arange(7) * 24 + 9, (2, 1))
    result = Evaluation()
    _off_policy(result, sends, {"nine": policy}, resamples=20, seed=0)
    assert result.value("send_time_ips", "nine", "engagement_rate") == pytest.approx(
        (1 / 0.5) / (1 / 0.5 + 1 / 0.1)
    )


def test_off_policy_is_skipped_without_propensities() -> None:
    sends = sends_frame([0], [9], [True], propensity=np.nan)
    result = Evaluation()
    _off_policy(result, sends, {"x": np.zeros((1, 7), dtype=np.int64)}, 20, 0)
    assert result.rows == []
    assert "no logged propensity" in result.notes[0]


def test_true_value_and_share_of_oracle_gain() -> None:
    curves = np.full((2, 3, HOURS_PER_WEEK), 0.1)
    curves[:, 1:] = np.nan  # only email reachable
    curves[0, 0, 5] = 0.5  # profile 0 peaks at hour 5
    curves[1, 0, 7] = 0.3  # profile 1 peaks at hour 7
    weekly = {
        "oracle": np.array([5, 7]),
        "global_best_hour": np.array([0, 0]),
        "half_right": np.array([5, 0]),
    }
    result = Evaluation()
    _true_value(result, curves, weekly, resamples=20, seed=0)
    assert result.value("send_time_truth", "oracle", "true_engagement_probability") == (
        pytest.approx(0.4)
    )
    assert result.value("send_time_truth", "global_best_hour", "true_engagement_probability") == (
        pytest.approx(0.1)
    )
    # half_right gains 0.4 of the oracle's 0.6 over global: 2/3
    assert result.value("send_time_truth", "half_right", "share_of_oracle_gain_over_global") == (
        pytest.approx(0.4 / 0.6)
    )


def test_ratio_estimate_interval_contains_the_point() -> None:
    rng = np.random.default_rng(0)
    numerator = rng.random(200)
    estimate = _ratio_estimate(numerator, np.ones(200), resamples=50, seed=1)
    assert estimate.low <= estimate.value <= estimate.high
    assert estimate.value == pytest.approx(numerator.mean())


def test_most_frequent_hour_with_fallback() -> None:
    activity = np.zeros((2, 2, HOURS_PER_WEEK), dtype=np.float32)
    activity[0, 1, 30] = 2  # engagement hours of profile 0
    activity[0, 1, 31] = 1
    activity[0, 0, 100] = 9  # activity, not engagement
    best, by_day = most_frequent_hour(
        activity, kind=1, fallback=12, fallback_by_day=np.arange(7) * 24
    )
    assert best.tolist() == [30, 12]
    assert by_day[0, 1] == 30  # Tuesday
    assert by_day[0, 0] == 0  # Monday: no engagement, the fallback hour of that day
    assert by_day[1].tolist() == (np.arange(7) * 24).tolist()


def test_global_hours_pick_the_best_rate() -> None:
    sends = sends_frame([0] * 60, [3] * 30 + [4] * 30, [True] * 20 + [False] * 10 + [False] * 30)
    hours = GlobalHours.fit(sends, prior_strength=1.0)
    assert hours.best_hour == 3
    assert hours.best_hour_by_day[0] == 3
    assert hours.probability(np.array([0]), np.array([3]))[0] > hours.rate[0, 4]


def test_bg_nbd_recovers_the_ordering_of_frequent_and_lapsed_customers() -> None:
    rng = np.random.default_rng(0)
    n = 400
    orders = rng.poisson(3, n) + 1
    first = rng.uniform(100, 300, n)
    last = first * rng.uniform(0, 1, n)
    profiles = pd.DataFrame(
        {
            "orders_total": orders,
            "days_since_first_order": first,
            "days_since_last_order": last,
        }
    )
    model = BetaGeometricNBD.fit(profiles)
    assert model.a > 1 and model.r > 0 and model.alpha > 0 and model.b > 0
    probe = pd.DataFrame(
        {
            "orders_total": [10, 10, 1, 0],
            "days_since_first_order": [200.0, 200.0, 200.0, np.nan],
            "days_since_last_order": [2.0, 190.0, 200.0, np.nan],
        }
    )
    expected = model.expected_orders(probe, 30)
    assert expected[0] > expected[1] > 0  # recent and frequent beats lapsed
    assert np.isfinite(expected).all()


def test_recency_frequency_rule_orders_profiles() -> None:
    at = pd.Timestamp("2026-03-01")
    profiles = pd.DataFrame(
        {
            "cutoff": [at] * 3,
            "first_seen_at": [at - pd.Timedelta(days=100)] * 3,
            "last_seen_at": [at - pd.Timedelta(days=1)] * 3,
            "orders_total": [5, 1, 0],
            "days_since_last_order": [3.0, 60.0, np.nan],
        }
    )
    score = recency_frequency_score(profiles)
    assert score[0] > score[1] > score[2]


START = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("days", "data", "expected"),
    [
        (
            60,
            DataConfig(horizon_days=7, send_window_days=3, stride_days=7, min_history_days=7),
            # until = day 60; test = day 53; validation labels end by 53 -> 46; train <= 39
            ([11, 18, 25, 32, 39], [46], [53]),
        ),
        (
            60,
            DataConfig(
                horizon_days=14,
                send_window_days=3,
                stride_days=7,
                min_history_days=7,
                max_train_cutoffs=2,
            ),
            ([11, 18], [32], [46]),
        ),
    ],
    ids=["weekly", "two-week-gap"],
)
def test_plan_cutoffs_leaves_a_gap_of_the_label_window(days, data, expected) -> None:
    split = plan_cutoffs(START, START + timedelta(days=days), data)
    as_days = [
        [(c - START).days for c in cutoffs]
        for cutoffs in (split.train, split.validation, split.test)
    ]
    train, validation, test = expected
    assert as_days[1] == validation and as_days[2] == test
    assert as_days[0][-len(train) :] == train
    gap = max(data.horizon_days, data.send_window_days + 1)
    assert max(as_days[0]) + gap <= min(as_days[1])
    assert max(as_days[1]) + gap <= min(as_days[2])


def test_plan_cutoffs_explains_too_little_history() -> None:
    with pytest.raises(ValueError, match="need at least"):
        plan_cutoffs(START, START + timedelta(days=20), DataConfig(horizon_days=14))


def test_feature_spec_round_trips_and_flags_missing_values() -> None:
    at = pd.Timestamp("2026-03-01")
    profiles = pd.DataFrame(
        {
            "profile_id": ["a", "b"],
            "cutoff": [at, at],
            "first_seen_at": [at - pd.Timedelta(days=10), at - pd.Timedelta(days=1)],
            "last_seen_at": [at - pd.Timedelta(days=1), at],
            "orders_total": [3, 0],
            "days_since_last_order": [2.0, np.nan],
            "email_unsubscribed": [True, False],
            "last_viewed_category": ["x", None],
            "ordered": [True, False],
        }
    )
    spec = FeatureSpec.fit(profiles, DataConfig())
    assert "ordered" not in spec.columns and "last_viewed_category" not in spec.columns
    assert spec.missing == ("days_since_last_order",)
    matrix = spec.transform(profiles)
    assert matrix.shape == (2, spec.width) and np.isfinite(matrix).all()
    np.testing.assert_allclose(matrix.mean(axis=0), 0, atol=1e-6)
    assert FeatureSpec.from_dict(spec.as_dict()) == spec
    with pytest.raises(ValueError, match="lack feature column"):
        spec.transform(profiles.drop(columns=["orders_total"]))


def test_example_set_subset_keeps_sends_with_their_rows() -> None:
    profiles = pd.DataFrame({"profile_id": ["a", "b", "c"]})
    arrays = {"mask": np.ones((3, 2), dtype=bool)}
    sends = sends_frame([0, 2, 2], [1, 2, 3], [True, False, True])
    examples = ExampleSet(profiles, arrays, sends)
    assert examples.send_offsets.tolist() == [0, 1, 1, 3]
    position, index = examples.batch_sends(np.array([2, 0]))
    assert position.tolist() == [0, 0, 1] and index.tolist() == [1, 2, 0]
    part = examples.subset(np.array([2]))
    assert part.profiles["profile_id"].tolist() == ["c"]
    assert part.sends["row"].tolist() == [0, 0] and part.sends["hour_of_week"].tolist() == [2, 3]


def test_addressable_profiles_are_keyed_by_one_persons_user_id_or_email_and_whole() -> None:
    """A profile merged into an addressable one after the cutoff is set apart, not addressable:
    its label follows a link its own history does not show."""
    from features.simulator.config import SimulationConfig
    from training.oracle import SimulatorTruth

    kinds = {"u1": "user_id", "e1": "emails", "a1": "anonymous_ids", "p1": "phones"}
    truth = SimulatorTruth(pd.DataFrame(), datetime(2026, 1, 5), 28, {}, kinds, SimulationConfig())
    profiles = pd.DataFrame(
        {
            "profile_id": ["u1", "e1", "a1", "p1", "d1", "d2", "u2"],
            # d1 logs in later (merged into u1), d2 stays anonymous; u2's person is unknown
            "label_profile_id": ["u1", "e1", "a1", "p1", "u1", "a1", "u2"],
        }
    )
    examples = ExampleSet(profiles, {}, pd.DataFrame({"row": np.zeros(0, np.int64)}))
    rows = np.array([0, 1, 2, 3, 0, 2, -1])
    addressable, merged_later = addressable_profiles(examples, truth, rows)
    assert addressable.tolist() == [True, True, False, False, False, False, False]
    assert merged_later.tolist() == [False, False, False, False, True, False, False]
