"""The simulator: determinism, ground truth that matches the events, the world's shape,
behaviour the models must be able to learn, dirty records and argument checks."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from features.simulate import (
    DEFAULT_START,
    SimulationConfig,
    history_conversion_probability,
    present_conversion_probability,
    simulate,
    true_conversion_probability,
    true_engagement_probability,
)
from features.simulator import messaging
from features.simulator.model import transition_thresholds
from training.metrics import roc_auc

CUSTOMERS, DAYS, SEED = 500, 21, 11

SEND_EVENTS = {"Email Sent": "email", "SMS Sent": "sms", "Push Notification Sent": "push"}
OUTCOME_EVENTS = {
    "Email Delivered": "email",
    "Email Bounced": "email",
    "Email Opened": "email",
    "Email Link Clicked": "email",
    "Unsubscribed": "email",
    "Email Marked as Spam": "email",
    "SMS Delivered": "sms",
    "SMS Link Clicked": "sms",
    "SMS Opted Out": "sms",
    "Push Notification Received": "push",
    "Push Notification Tapped": "push",
}
SHOPPING_EVENTS = (
    "Product List Viewed",
    "Product Viewed",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Order Completed",
)


@dataclass
class World:
    """A simulated world as the tests read it."""

    path: Path
    lines: list[bytes]
    messages: list[dict]
    truth: pd.DataFrame

    def named(self, *names: str) -> list[dict]:
        return [m for m in self.messages if m.get("event") in names]


def run(tmp: Path, **overrides) -> World:
    args = {"customers": CUSTOMERS, "days": DAYS, "seed": SEED} | overrides
    summary = simulate(tmp, **args)
    lines = summary.events_path.read_bytes().splitlines()
    messages = [orjson.loads(line) for line in lines] if not args.get("bad_record_rate") else []
    return World(tmp, lines, messages, pd.read_parquet(summary.truth_path))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return run(tmp_path_factory.mktemp("world"))


def instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp).astimezone(UTC)


def canonical_email(email: str) -> str:
    return email.strip().lower()


def canonical_phone(phone: str) -> str:
    return phone.replace(" ", "")


def person_by_identifier(truth: pd.DataFrame) -> dict[str, str]:
    """Identifier -> person for every identifier that belongs to exactly one person."""
    owner: dict[str, set[str]] = defaultdict(set)
    for row in truth.itertuples():
        ids = [*row.emails, *row.phones, *row.anonymous_ids, *row.device_ids]
        if pd.notna(row.user_id):
            ids.append(row.user_id)
        for identifier in ids:
            owner[identifier].add(row.person_id)
    return {i: next(iter(p)) for i, p in owner.items() if len(p) == 1}


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    a = simulate(tmp_path / "a", customers=120, days=5, seed=3)
    b = simulate(tmp_path / "b", customers=120, days=5, seed=3)
    c = simulate(tmp_path / "c", customers=120, days=5, seed=4)
    assert a.events == b.events > 0
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    assert a.events_path.read_bytes() != c.events_path.read_bytes()


def test_progress_bar_and_numpy_integers_change_nothing(tmp_path: Path) -> None:
    plain = simulate(tmp_path / "plain", customers=60, days=3, seed=9)
    shown = simulate(
        tmp_path / "shown",
        customers=np.int64(60),
        days=np.int32(3),
        seed=np.uint8(9),
        progress=True,
    )
    assert plain.events_path.read_bytes() == shown.events_path.read_bytes()


def test_summary_describes_the_files(world: World) -> None:
    assert len(world.lines) > CUSTOMERS * DAYS  # about two events a person a day
    assert len(world.truth) == CUSTOMERS
    assert world.truth["person_id"].is_unique


# --- truth matches the events -------------------------------------------------------------


def test_every_identifier_but_shared_devices_belongs_to_one_person(world: World) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    for row in world.truth.itertuples():
        for identifier in [*row.emails, *row.phones, *row.anonymous_ids, *row.device_ids]:
            owners[identifier].add(row.person_id)
        if pd.notna(row.user_id):
            owners[row.user_id].add(row.person_id)
    shared = {i for ids in world.truth["shared_device_ids"] for i in ids}
    several = {i for i, people in owners.items() if len(people) > 1}
    assert several == shared
    assert shared, "some devices must be shared"


def test_every_identifier_in_the_events_is_in_the_truth(world: World) -> None:
    t = world.truth
    known = {
        "anonymousId": {i for ids in t["anonymous_ids"] for i in ids},
        "userId": set(t["user_id"].dropna()),
        "email": {e for ids in t["emails"] for e in ids},
        "phone": {p for ids in t["phones"] for p in ids},
        "device": {d for ids in t["device_ids"] for d in ids},
    }
    seen: dict[str, set[str]] = defaultdict(set)
    for m in world.messages:
        traits = m.get("traits") or m.get("context", {}).get("traits", {})
        for field in ("anonymousId", "userId"):
            if field in m:
                seen[field].add(m[field])
        if "previousId" in m:
            seen["anonymousId"].add(m["previousId"])
        if "email" in traits:
            seen["email"].add(canonical_email(traits["email"]))
        if "phone" in traits:
            seen["phone"].add(canonical_phone(traits["phone"]))
        if "device" in m.get("context", {}):
            seen["device"].add(m["context"]["device"]["id"])
    for field, values in seen.items():
        assert values, field
        assert values <= known[field], f"{field} not in truth: {sorted(values - known[field])[:3]}"


def test_every_outcome_follows_a_send_of_its_channel(world: World) -> None:
    sent: dict[str, tuple[str, datetime]] = {}
    outcomes = 0
    for m in world.messages:
        name, props = m.get("event"), m.get("properties", {})
        if name in SEND_EVENTS:
            assert props["channel"] == SEND_EVENTS[name]
            assert set(props) >= {"send_id", "campaign_id", "channel", "send_hour_propensity"}
            sent[props["send_id"]] = (SEND_EVENTS[name], instant(m["timestamp"]))
        elif name in OUTCOME_EVENTS:
            outcomes += 1
            channel, at = sent[props["send_id"]]  # KeyError: outcome before / without its send
            assert channel == OUTCOME_EVENTS[name]
            assert props["campaign_id"].startswith(f"cmp-{channel}-")
            assert at < instant(m["timestamp"]) < at + timedelta(hours=24)
    assert outcomes > len(sent)


def test_timestamps_lie_in_the_window_and_the_file_is_in_time_order(world: World) -> None:
    instants = [instant(m["timestamp"]) for m in world.messages]
    assert instants[0] >= DEFAULT_START
    assert instants[-1] < DEFAULT_START + timedelta(days=DAYS)
    assert all(a <= b for a, b in pairwise(instants))
    offsets = Counter(
        m["timestamp"][-6:] for m in world.messages if not m["timestamp"].endswith("Z")
    )
    assert 0 < sum(offsets.values()) < 0.1 * len(instants)  # a few non-UTC offsets


def test_message_ids_are_unique(world: World) -> None:
    ids = [m["messageId"] for m in world.messages]
    assert len(set(ids)) == len(ids)


def test_hour_of_week_preference_is_a_distribution(world: World) -> None:
    preference = np.stack(world.truth["hour_of_week_preference"].to_numpy())
    assert preference.shape == (CUSTOMERS, 168)
    assert (preference > 0).all()
    np.testing.assert_allclose(preference.sum(axis=1), 1.0, atol=1e-5)


def test_daily_truth_columns_have_one_value_per_day(world: World) -> None:
    for column in (
        "daily_state",
        "daily_purchase_hazard",
        "daily_engagement",
        "daily_orders",
        "daily_sessions",
        "daily_product_views",
        "daily_products_added",
    ):
        values = np.stack(world.truth[column].to_numpy())
        assert values.shape == (CUSTOMERS, DAYS), column
    states = np.stack(world.truth["daily_state"].to_numpy())
    assert set(np.unique(states)) == {0, 1, 2}


def test_orders_in_the_events_match_the_truth(world: World) -> None:
    owner = person_by_identifier(world.truth)
    orders: Counter[tuple[str, int]] = Counter()
    for m in world.named("Order Completed"):
        person = owner.get(m.get("userId")) or owner.get(
            canonical_email(m["context"]["traits"]["email"])
        )
        day = (instant(m["timestamp"]) - DEFAULT_START).days
        orders[person, day] += 1
    truth_orders = np.stack(world.truth["daily_orders"].to_numpy())
    expected = {
        (world.truth["person_id"].iloc[i], d): 1
        for i, d in zip(*np.nonzero(truth_orders), strict=True)
    }
    assert dict(orders) == expected


# --- the world has the required shape --------------------------------------------------------


def test_browsing_truth_follows_the_intent_state_and_stays_within_the_events(
    world: World,
) -> None:
    """Browsing sessions come at the state's rate; their views and adds are events too."""
    sessions, views, added = (
        np.stack(world.truth[c].to_numpy()).astype(np.int64)
        for c in ("daily_sessions", "daily_product_views", "daily_products_added")
    )
    states = np.stack(world.truth["daily_state"].to_numpy())
    rate = np.asarray(SimulationConfig().session_rate)[states]
    rate = rate * world.truth["browse_activity"].to_numpy()[:, None]
    for state in range(3):  # Poisson counts: within 4 standard deviations of their mean
        expected = rate[states == state].sum()
        assert abs(sessions[states == state].sum() - expected) < 4 * np.sqrt(expected)
    assert (views >= sessions).all() and (views <= 6 * sessions).all() and (added <= views).all()
    assert views.sum() <= len(world.named("Product Viewed"))
    assert added.sum() <= len(world.named("Product Added"))


def test_every_event_name_and_message_type_appears(world: World) -> None:
    names = Counter(m.get("event") for m in world.messages)
    for name in (*SEND_EVENTS, *OUTCOME_EVENTS, *SHOPPING_EVENTS):
        assert names[name] > 0, name
    types = Counter(m["type"] for m in world.messages)
    assert set(types) == {"track", "identify", "page", "screen", "alias"}


def test_some_guests_check_out_by_email_without_a_user_id(world: World) -> None:
    orders = world.named("Order Completed")
    guests = [m for m in orders if "userId" not in m]
    assert guests and all("email" in m["context"]["traits"] for m in guests)
    assert all("anonymousId" in m for m in guests)
    assert len(guests) < len(orders)
    products = orders[0]["properties"]["products"]
    assert set(products[0]) >= {"product_id", "category", "price", "quantity"}


def test_devices_browse_anonymously_before_they_identify(world: World) -> None:
    first_anonymous: dict[str, datetime] = {}
    identified_later = 0
    for m in world.messages:
        anonymous = m.get("anonymousId")
        if anonymous is None:
            continue
        if "userId" not in m and m["type"] != "identify":
            first_anonymous.setdefault(anonymous, instant(m["timestamp"]))
        elif m["type"] == "identify" and "userId" in m and anonymous in first_anonymous:
            identified_later += 1
    assert identified_later >= 10


def test_shared_devices_include_households_and_kiosks(world: World) -> None:
    users = Counter(d for ids in world.truth["shared_device_ids"] for d in ids)
    assert any(2 <= n <= 4 for n in users.values())  # households
    assert any(n >= 20 for n in users.values())  # kiosks
    anonymous_in_events = {m.get("anonymousId") for m in world.messages}
    assert anonymous_in_events & set(users)


def test_sends_spread_over_all_hours_with_logged_propensity(world: World) -> None:
    sends = world.named(*SEND_EVENTS)
    hours = Counter(instant(m["timestamp"]).hour for m in sends)
    assert set(hours) == set(range(24))
    assert min(hours.values()) > 0.4 * len(sends) / 24
    assert {m["properties"]["send_hour_propensity"] for m in sends} == {1 / 24}


def test_identifiers_ride_on_the_right_events(world: World) -> None:
    for m in world.named("Email Sent", "Email Opened"):
        assert "email" in m["context"]["traits"]
    for m in world.named("SMS Sent", "SMS Link Clicked"):
        assert m["context"]["traits"]["phone"].replace(" ", "").startswith("+447")
    for m in world.named("Push Notification Sent", "Push Notification Tapped"):
        assert m["anonymousId"] and m["context"]["device"]["type"] in ("ios", "android")
    for m in world.messages:
        if m["type"] in ("page", "screen"):
            assert m["name"] and "device" in m["context"]
        if m["type"] == "page":
            assert m["properties"]["url"].startswith("https://")
    for m in world.named("Product Viewed"):
        assert set(m["properties"]) >= {"product_id", "category", "price"}


# --- behaviour a model must be able to learn ---------------------------------------------------


def _email_sends(world: World) -> pd.DataFrame:
    """One row per email send: person, day, hour of week, opened."""
    owner = person_by_identifier(world.truth)
    opened = {m["properties"]["send_id"] for m in world.named("Email Opened")}
    rows = []
    for m in world.named("Email Sent"):
        at = instant(m["timestamp"])
        rows.append(
            {
                "person_id": owner[canonical_email(m["context"]["traits"]["email"])],
                "day": (at - DEFAULT_START).days,
                "hour_of_week": at.weekday() * 24 + at.hour,
                "opened": m["properties"]["send_id"] in opened,
            }
        )
    return pd.DataFrame(rows)


def _open_rate_top_vs_bottom_hours(world: World) -> tuple[float, float]:
    sends = _email_sends(world)
    position = pd.Series(np.arange(len(world.truth)), index=world.truth["person_id"])
    preference = np.stack(world.truth["hour_of_week_preference"].to_numpy())
    rank = preference.argsort(axis=1).argsort(axis=1)  # 0 = the person's least liked hour
    sends["rank"] = rank[position[sends["person_id"]].to_numpy(), sends["hour_of_week"]]
    top = sends.loc[sends["rank"] >= 168 * 3 // 4, "opened"].mean()
    bottom = sends.loc[sends["rank"] < 168 // 4, "opened"].mean()
    return top, bottom


def test_opens_follow_the_hour_of_week_preference(world: World, tmp_path: Path) -> None:
    top, bottom = _open_rate_top_vs_bottom_hours(world)
    assert top > 1.5 * bottom
    # Control: with no hour effect the same comparison shows no gap.
    flat = run(tmp_path, config=SimulationConfig(hour_preference_effect=0.0))
    top, bottom = _open_rate_top_vs_bottom_hours(flat)
    assert 0.75 < top / bottom < 1.33


def test_true_engagement_probability_is_calibrated_on_the_sends(world: World) -> None:
    sends = _email_sends(world)
    position = pd.Series(np.arange(len(world.truth)), index=world.truth["person_id"])
    p = np.empty(len(sends))
    for day, group in sends.groupby("day"):
        hours = np.zeros(len(world.truth), dtype=int)
        rows = position[group["person_id"]].to_numpy()
        hours[rows] = group["hour_of_week"].to_numpy()
        p[group.index] = true_engagement_probability(world.truth, "email", hours, day=day)[rows]
    expected, observed = p.sum(), sends["opened"].sum()
    assert abs(observed - expected) < 4 * np.sqrt((p * (1 - p)).sum())


def _daily(truth: pd.DataFrame, column: str) -> np.ndarray:
    return np.stack(truth[column].to_numpy())


def _up_moves_after_clicks(truth: pd.DataFrame) -> float:
    """Overnight moves up the intent chain after a click day: observed / expected without any
    click effect (1.0 when clicks do nothing)."""
    state, clicked = _daily(truth, "daily_state"), _daily(truth, "daily_clicks") > 0
    person, day = np.nonzero(clicked[:, :-1] & (state[:, :-1] < 2))
    today = state[person, day]
    propensity = truth["intent_propensity"].to_numpy()[person]
    stay_low, stay_mid = transition_thresholds(
        today, propensity, np.zeros(len(person), bool), SimulationConfig()
    )
    expected = np.where(today == 0, 1 - stay_low, 1 - stay_mid).sum()
    return (state[person, day + 1] > today).sum() / expected


def test_the_oracle_reproduces_every_engagement_probability_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[np.ndarray] = []  # per day: email, sms, push, each in person order
    original = messaging.engagement_probability
    monkeypatch.setattr(
        messaging, "engagement_probability", lambda *a: drawn.append(original(*a)) or drawn[-1]
    )
    small = run(tmp_path, customers=200, days=4)
    owner = person_by_identifier(small.truth)
    position = {p: i for i, p in enumerate(small.truth["person_id"])}
    sends: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    for m in small.named(*SEND_EVENTS):
        channel = SEND_EVENTS[m["event"]]
        traits = m["context"].get("traits", {})
        key = {
            "email": canonical_email(traits.get("email", "")),
            "sms": canonical_phone(traits.get("phone", "")),
            "push": m.get("anonymousId"),
        }[channel]
        at = instant(m["timestamp"])
        sends[(at - DEFAULT_START).days, channel].append(
            (position[owner[key]], at.weekday() * 24 + at.hour)
        )
    assert len(drawn) == 4 * 3
    for i, p in enumerate(drawn):
        day, channel = divmod(i, 3)
        persons, hours = np.array(sorted(sends[day, ("email", "sms", "push")[channel]])).T
        everyone = np.zeros(len(small.truth), dtype=int)
        everyone[persons] = hours
        oracle = true_engagement_probability(
            small.truth, ("email", "sms", "push")[channel], everyone, day=day, given="delivered"
        )
        np.testing.assert_array_equal(oracle[persons], p)


def _purchase_lift_after_click(truth: pd.DataFrame, window: int = 7) -> float:
    """Mean purchase hazard (per unit of purchase propensity) over the week after a click day
    / after a day without one, for people dormant that day."""
    clicked = _daily(truth, "daily_clicks") > 0
    dormant = _daily(truth, "daily_state") == 0
    hazard = _daily(truth, "daily_purchase_hazard") / truth[["purchase_propensity"]].to_numpy()
    days = hazard.shape[1] - window
    after = np.stack([hazard[:, d + 1 : d + 1 + window].mean(axis=1) for d in range(days)], 1)
    clicked, dormant = clicked[:, :days], dormant[:, :days]
    return after[clicked & dormant].mean() / after[~clicked & dormant].mean()


def test_clicks_raise_intent_and_later_purchase_rate(world: World, tmp_path: Path) -> None:
    assert _up_moves_after_clicks(world.truth) > 2.5
    assert _purchase_lift_after_click(world.truth) > 1.2
    # Control: clicks with no effect on intent leave the chain where it was (a bigger world,
    # for enough clicks).
    inert = run(tmp_path, customers=2000, days=14, config=SimulationConfig(click_intent_lift=1.0))
    assert 0.7 < _up_moves_after_clicks(inert.truth) < 1.3


def test_deliverability_unsubscribed_and_bounced_get_no_more_mail(world: World) -> None:
    owner = person_by_identifier(world.truth)
    stopped: dict[tuple[str, str], datetime] = {}
    stop_events = {
        "Unsubscribed": "email",
        "Email Marked as Spam": "email",
        "Email Bounced": "email",
        "SMS Opted Out": "sms",
    }
    for m in world.messages:
        name = m.get("event")
        if name not in stop_events and name not in ("Email Sent", "SMS Sent"):
            continue
        traits = m["context"]["traits"]
        key = canonical_email(traits["email"]) if "email" in traits else None
        key = key or canonical_phone(traits.get("phone", ""))
        if name in stop_events:
            stopped.setdefault((owner[key], stop_events[name]), instant(m["timestamp"]))
        else:
            since = stopped.get((owner[key], SEND_EVENTS[name]))
            assert since is None or instant(m["timestamp"]) < since + timedelta(days=1)
    assert stopped


# --- oracle functions ------------------------------------------------------------------------


def test_true_engagement_probability_shapes_and_reachability(world: World) -> None:
    t = world.truth
    n = len(t)
    one = true_engagement_probability(t, "sms", 20)
    per_person = true_engagement_probability(t, "sms", np.full(n, 20))
    week = true_engagement_probability(t, "sms", np.broadcast_to(np.arange(168), (n, 168)))
    assert one.shape == (n,) and week.shape == (n, 168)
    np.testing.assert_array_equal(one, per_person)
    np.testing.assert_array_equal(one, week[:, 20])
    no_phone = t["phones"].map(len).to_numpy() == 0
    assert np.isnan(one[no_phone]).all() and not np.isnan(one[~no_phone]).any()
    email = true_engagement_probability(t, "email", 20, day=3)
    assert ((email >= 0) & (email < 1)).all()
    assert (email[~t["email_valid"].to_numpy()] == 0).all()
    delivered = true_engagement_probability(t, "push", 20, given="delivered")
    sent = true_engagement_probability(t, "push", 20)
    reachable = ~np.isnan(sent)
    np.testing.assert_allclose(sent[reachable], 0.92 * delivered[reachable])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channel": "fax", "hour_of_week": 0}, "unknown channel 'fax'"),
        ({"channel": "email", "hour_of_week": 168}, "hour_of_week must be in 0..167"),
        ({"channel": "email", "hour_of_week": 1.5}, "hour_of_week must be integers"),
        ({"channel": "email", "hour_of_week": np.zeros(3, int)}, "must be a scalar, shape"),
        ({"channel": "email", "hour_of_week": 0, "day": DAYS}, "day must be in 0..20"),
    ],
    ids=["channel", "hour-range", "hour-dtype", "hour-shape", "day-range"],
)
def test_true_engagement_probability_rejects_bad_arguments(
    world: World, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        true_engagement_probability(world.truth, **kwargs)


def test_true_conversion_probability_matches_realised_orders(world: World) -> None:
    p = true_conversion_probability(world.truth, 0, DAYS)
    assert p.shape == (CUSTOMERS,) and ((p >= 0) & (p <= 1)).all()
    buyers = (np.stack(world.truth["daily_orders"].to_numpy()).sum(axis=1) > 0).sum()
    assert abs(buyers - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    week = true_conversion_probability(world.truth, 7, 7)
    assert (week <= true_conversion_probability(world.truth, 7, 14)).all()
    with pytest.raises(ValueError, match=r"window \[15, 25\) must lie within"):
        true_conversion_probability(world.truth, 15, 10)
    with pytest.raises(ValueError, match="horizon_days must be at least 1"):
        true_conversion_probability(world.truth, 0, 0)
    with pytest.raises(ValueError, match="lacks column"):
        true_conversion_probability(world.truth.drop(columns="daily_purchase_hazard"), 0, 1)


def test_present_conversion_probability_runs_the_chain_from_the_day_before() -> None:
    config = SimulationConfig(purchase_hazard=(0.0, 0.1, 0.5))
    truth = pd.DataFrame(
        {
            "daily_state": [[2, 0, 0], [1, 0, 0], [1, 0, 0]],
            "daily_clicks": [[0, 0, 0], [0, 0, 0], [3, 0, 0]],
            "intent_propensity": [1.0, 1.0, 1.0],
            "purchase_propensity": [1.0, 1.0, 1.0],
        }
    )
    # Ready on day 0: day 1 is dormant / browsing / ready with 0.2 / 0.3 / 0.5, and no order
    # with 1 / 0.9 / 0.5. Browsing: 0.25 / 0.65 / 0.1, or 0.25 / 0.35 / 0.4 after a click
    # (moves up x4).
    one_day = present_conversion_probability(truth, 1, 1, config)
    np.testing.assert_allclose(one_day, [0.28, 0.115, 0.235], rtol=1e-6)
    # Two days: the ready person's (0.2, 0.27, 0.25) moves on with the unlifted chain.
    two_days = present_conversion_probability(truth, 1, 2, config)
    assert two_days[0] == pytest.approx(1 - (0.3087 + 0.2585 * 0.9 + 0.1528 * 0.5), rel=1e-6)
    assert (two_days > one_day).all()
    with pytest.raises(ValueError, match=r"window \[0, 1\) must lie within"):
        present_conversion_probability(truth, 0, 1, config)
    with pytest.raises(ValueError, match=r"window \[2, 4\) must lie within"):
        present_conversion_probability(truth, 2, 2, config)
    with pytest.raises(ValueError, match="lacks column"):
        present_conversion_probability(truth.drop(columns="daily_clicks"), 1, 1, config)


def test_present_conversion_probability_is_calibrated_and_below_the_realised_path(
    world: World,
) -> None:
    """Knowing the present, not the path: as many orders expected as happened (up to the
    lift of future clicks it leaves out), and a lower AUC than the path's probability."""
    orders = np.stack(world.truth["daily_orders"].to_numpy())
    present = np.concatenate(
        [present_conversion_probability(world.truth, d, 7, SimulationConfig()) for d in (7, 14)]
    )
    realised = np.concatenate([true_conversion_probability(world.truth, d, 7) for d in (7, 14)])
    ordered = np.concatenate([orders[:, d : d + 7].max(axis=1) for d in (7, 14)])
    assert ((present > 0) & (present < 1)).all()
    assert abs(ordered.sum() - present.sum()) < 4 * np.sqrt((present * (1 - present)).sum())
    assert roc_auc(ordered, present) < roc_auc(ordered, realised)


def test_history_conversion_probability_filters_the_chain_by_hand() -> None:
    """Fixed propensities (sd 0): the filter is Bayes' rule over the three states, by hand."""
    config = SimulationConfig(
        intent_propensity_sd=0.0,
        purchase_propensity_sd=0.0,
        browse_activity_sd=0.0,
        initial_state_mix=(0.5, 0.3, 0.2),
        purchase_hazard=(0.0, 0.1, 0.5),
        session_rate=(0.1, 0.5, 1.0),
        product_views_mean=(0.2, 0.5, 1.0),
        add_to_cart=(0.1, 0.2, 0.5),
    )
    # A: a quiet day 0. B: one session, two products viewed, one added, and a click.
    truth = pd.DataFrame(
        {
            "daily_sessions": [[0, 0], [1, 0]],
            "daily_product_views": [[0, 0], [2, 0]],
            "daily_products_added": [[0, 0], [1, 0]],
            "daily_orders": [[0, 0], [0, 0]],
            "daily_clicks": [[0, 0], [1, 0]],
        }
    )
    mix, hazard = np.array([0.5, 0.3, 0.2]), np.array([0.0, 0.1, 0.5])
    rate, views_mean, add = (
        np.array([0.1, 0.5, 1.0]),
        np.array([0.2, 0.5, 1.0]),
        np.array([0.1, 0.2, 0.5]),
    )
    quiet = mix * np.exp(-rate) * (1 - hazard)
    # one session (Poisson 1), one view beyond the first (Poisson 1), one of two products added
    busy = mix * rate * np.exp(-rate) * views_mean * np.exp(-views_mean) * add * (1 - add)
    busy = busy * (1 - hazard)
    unlifted = np.array([[0.956, 0.04, 0.004], [0.25, 0.65, 0.10], [0.2, 0.3, 0.5]])
    lifted = np.array([[0.824, 0.16, 0.016], [0.25, 0.35, 0.40], [0.2, 0.3, 0.5]])  # moves up x4
    day1 = np.stack([quiet / quiet.sum() @ unlifted, busy / busy.sum() @ lifted])
    one_day = history_conversion_probability(truth, 1, 1, config)
    np.testing.assert_allclose(one_day, day1 @ hazard, rtol=1e-6)
    truth_3 = truth.map(lambda days: [*days, 0])
    two_days = history_conversion_probability(truth_3, 1, 2, config)
    no_order = (day1 * (1 - hazard)) @ unlifted @ (1 - hazard)
    np.testing.assert_allclose(two_days, 1 - no_order, rtol=1e-6)
    assert one_day[1] > one_day[0]  # browsing, adding to the cart and clicking raise intent
    with pytest.raises(ValueError, match=r"window \[0, 1\) must lie within"):
        history_conversion_probability(truth, 0, 1, config)
    with pytest.raises(ValueError, match="grid_points must be at least 1"):
        history_conversion_probability(truth, 1, 1, config, grid_points=0)
    with pytest.raises(ValueError, match="lacks column"):
        history_conversion_probability(truth.drop(columns="daily_sessions"), 1, 1, config)


def test_history_conversion_probability_is_what_the_present_oracle_averages_to(
    world: World,
) -> None:
    """Given the observed history, the expected present-knowing probability is the filter's
    (the tower property): people the filter ranks high have a higher present probability by
    as much as the filter says, and orders happen at its rate."""
    orders = np.stack(world.truth["daily_orders"].to_numpy())
    config = SimulationConfig()
    history = np.concatenate(
        [history_conversion_probability(world.truth, d, 7, config) for d in (7, 14)]
    )
    present = np.concatenate(
        [present_conversion_probability(world.truth, d, 7, config) for d in (7, 14)]
    )
    ordered = np.concatenate([orders[:, d : d + 7].max(axis=1) for d in (7, 14)])
    high = history > np.median(history)
    assert present[high].mean() - present[~high].mean() > 0.015
    for group in (high, ~high):
        assert abs(history[group].mean() - present[group].mean()) < 0.008
    assert abs(ordered.sum() - history.sum()) < 4 * np.sqrt((history * (1 - history)).sum())


# --- dirty records ---------------------------------------------------------------------------


def test_bad_records_are_extra_lines_and_leave_clean_lines_and_truth_alone(tmp_path: Path) -> None:
    clean = simulate(tmp_path / "clean", customers=300, days=7, seed=5)
    dirty = simulate(tmp_path / "dirty", customers=300, days=7, seed=5, bad_record_rate=0.1)
    clean_lines = clean.events_path.read_bytes().splitlines()
    dirty_lines = dirty.events_path.read_bytes().splitlines()
    assert clean.truth_path.read_bytes() == dirty.truth_path.read_bytes()

    # The clean lines are a subsequence of the dirty file; everything else is dirty.
    extra, written, repeats, j = [], set(), set(), 0
    for line in dirty_lines:
        if j < len(clean_lines) and line == clean_lines[j]:
            written.add(line)
            j += 1
        else:
            extra.append(line)
            if line in written:
                repeats.add(line)  # a re-send of a line already written
    assert j == len(clean_lines)
    assert len(extra) == dirty.dirty_lines == dirty.events - clean.events
    assert 0.08 < len(extra) / len(clean_lines) < 0.12

    clean_ids = Counter(orjson.loads(line)["messageId"] for line in clean_lines)
    kinds: Counter[str] = Counter()
    for line in extra:
        try:
            m = orjson.loads(line)
        except orjson.JSONDecodeError:
            kinds["malformed"] += 1
            continue
        if m["messageId"] in clean_ids:
            assert line in repeats
            kinds["duplicate"] += 1
        elif "timestamp" not in m:
            kinds["missing_timestamp"] += 1
        elif m["type"] not in ("track", "identify", "page", "screen", "alias"):
            kinds["unknown_type"] += 1
        elif not ({"userId", "anonymousId", "previousId"} & set(m)):
            kinds["no_identifier"] += 1
        else:
            kinds["unparseable_timestamp"] += 1
            with pytest.raises(ValueError):
                datetime.fromisoformat(m["timestamp"])
    assert set(kinds) == {
        "malformed",
        "duplicate",
        "missing_timestamp",
        "unknown_type",
        "no_identifier",
        "unparseable_timestamp",
    }
    assert all(n > len(extra) / 12 for n in kinds.values())


def test_every_clean_line_passes_the_event_contract_and_every_bad_one_fails(
    tmp_path: Path,
) -> None:
    contract = pytest.importorskip("features.contract")
    summary = simulate(tmp_path, customers=200, days=5, seed=8, bad_record_rate=0.2)
    seen: set[str] = set()
    rejected = duplicates = 0
    for line in summary.events_path.read_bytes().splitlines():
        try:
            row = contract.normalise_message(orjson.loads(line))
        except (orjson.JSONDecodeError, contract.RejectedRecord):
            rejected += 1
            continue
        message_id = row[0]
        duplicates += message_id in seen
        seen.add(message_id)
        assert row[-1] is None, row[-1]  # no field dropped with a warning
    assert rejected + duplicates == summary.dirty_lines


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"customers": 0}, "customers must be an integer of at least 1, got 0"),
        ({"days": 0}, "days must be an integer of at least 1, got 0"),
        ({"bad_record_rate": 0.6}, r"bad_record_rate must be between 0 and 0.5, got 0.6"),
        ({"bad_record_rate": -0.1}, r"bad_record_rate must be between 0 and 0.5, got -0.1"),
        ({"bad_record_rate": float("nan")}, "bad_record_rate must be between 0 and 0.5"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"start": datetime(2026, 1, 5, 10, tzinfo=UTC)}, "start must be a midnight UTC"),
    ],
    ids=["customers", "days", "rate-high", "rate-negative", "rate-nan", "seed", "start"],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"out_dir": tmp_path, "customers": 10, "days": 1, "seed": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate(**args)
    assert not (tmp_path / "events.jsonl").exists()


def test_a_naive_start_is_utc_and_moves_the_window(tmp_path: Path) -> None:
    summary = simulate(tmp_path, customers=50, days=2, seed=1, start=datetime(2026, 3, 4))
    assert summary.start == datetime(2026, 3, 4, tzinfo=UTC)
    first = orjson.loads(summary.events_path.read_bytes().splitlines()[0])
    assert instant(first["timestamp"]).date().isoformat() == "2026-03-04"


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="account_share must not be negative"):
        SimulationConfig(account_share=-0.1)
    with pytest.raises(ValueError, match="devices_per_person must sum to 1"):
        SimulationConfig(devices_per_person=(0.5, 0.5, 0.5, 0.0))
