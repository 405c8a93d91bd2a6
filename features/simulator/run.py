"""The day loop: simulate day by day over all people at once and stream the events to disk."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import pyarrow.parquet as pq

from features.simulator.config import SimulationConfig
from features.simulator.context import Counters, Day, People, Run
from features.simulator.dirty import add_dirty_lines
from features.simulator.messaging import MessagingDay, simulate_messaging
from features.simulator.model import next_engagement_level, purchase_hazard, transition_thresholds
from features.simulator.sessions import simulate_sessions
from features.simulator.truth import History, truth_table
from features.simulator.wire import DAY_MS, Batch, Stamper, WireObjects
from features.simulator.world import ROLE_KIOSK, ROLE_OWN, World, build_world

logger = logging.getLogger(__name__)

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
MAX_BAD_RECORD_RATE = 0.5
EVENTS_FILE, TRUTH_FILE = "events.jsonl", "truth.parquet"


@dataclass(frozen=True)
class SimulationSummary:
    """What one simulation wrote."""

    customers: int
    days: int
    events: int  # lines written to events.jsonl, dirty lines included
    seconds: float  # wall time of the whole simulation, truth included
    events_path: Path
    truth_path: Path
    dirty_lines: int = 0  # of ``events``: lines added for bad_record_rate
    seed: int = 0
    start: datetime = DEFAULT_START


def simulate(
    out_dir: Path,
    customers: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    bad_record_rate: float = 0.0,
    progress: bool = False,
    config: SimulationConfig | None = None,
) -> SimulationSummary:
    """Simulate ``customers`` people for ``days`` days; write events.jsonl and truth.parquet.

    Same arguments, same bytes. ``start`` must be a midnight UTC (naive means UTC); the default
    is 2026-01-05, a Monday. ``bad_record_rate`` adds that many dirty lines per clean line.
    """
    start = _check_arguments(customers, days, seed, start, bad_record_rate)
    customers, days, seed = int(customers), int(days), int(seed)
    config = config or SimulationConfig()
    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path, truth_path = out_dir / EVENTS_FILE, out_dir / TRUTH_FILE

    rng = np.random.Generator(np.random.PCG64(seed))
    dirty_rng = rng.spawn(1)[0]  # its own stream: the clean lines do not depend on the rate
    prefix = f"{int(rng.integers(2**32)):08x}"
    world = build_world(customers, days, rng, config)
    run = Run(
        world,
        WireObjects(world),
        config,
        rng,
        Stamper(rng, config.non_utc_timestamp_share, prefix),
        Counters(),
    )
    people = _people_at_start(world, rng, config)
    history = History.allocate(world.n, days)
    clicks_carried = np.zeros(world.n, np.int64)  # clicks on yesterday's sends made today
    start_ms = int(start.timestamp() * 1000)

    tmp_path = events_path.with_name(events_path.name + ".tmp")  # replaces the file when done
    with (
        _removed_on_error(tmp_path),
        tmp_path.open("wb") as handle,
        _day_progress(progress, days) as advance,
        _garbage_collection_paused(),
    ):
        writer = _DayWriter(handle, bad_record_rate, dirty_rng, Stamper(dirty_rng, 0, prefix + "x"))
        for index in range(days):
            day = Day(index, start_ms + index * DAY_MS, (start.weekday() + index) % 7)
            hazard = purchase_hazard(people.intent, world.purchase_propensity, config)
            history.record_day(index, people.intent, hazard, people.engagement)

            messages = simulate_messaging(day, people, run)
            ordered = rng.random(world.n) < hazard
            shopping = simulate_sessions(day, people, ordered, messages.landings, run)

            # Tonight: engagement moves with today's messages, intent with today's clicks.
            clicks = messages.clicks_today + clicks_carried
            clicks_carried = messages.clicks_tomorrow
            history.orders[:, index] = ordered
            history.clicks[:, index] = np.minimum(clicks, np.iinfo(np.int16).max)
            history.record_shopping(index, shopping)
            _end_of_day(people, messages, clicks > 0, world, rng, config)

            writer.write_day(Batch.concat([messages.batch, shopping.batch]), day.end_ms)
            advance()
        history.engagement_final[:] = people.engagement
    tmp_path.replace(events_path)

    metadata = {
        b"kairos.simulation": orjson.dumps(
            {
                "customers": customers,
                "days": days,
                "seed": seed,
                "start": start.isoformat(),
                "config": dataclasses.asdict(config),
            }
        )
    }
    table = truth_table(
        world, history, people.email_stop_day, people.sms_stop_day, config, metadata
    )
    pq.write_table(table, truth_path, compression="zstd")

    summary = SimulationSummary(
        customers=customers,
        days=days,
        events=writer.clean + writer.dirty,
        seconds=time.perf_counter() - began,
        events_path=events_path,
        truth_path=truth_path,
        dirty_lines=writer.dirty,
        seed=seed,
        start=start,
    )
    logger.info(
        "simulated %d customers x %d days: %d events (%d dirty) in %.1f s",
        customers,
        days,
        summary.events,
        summary.dirty_lines,
        summary.seconds,
    )
    return summary


def _people_at_start(world: World, rng: np.random.Generator, config: SimulationConfig) -> People:
    logged_in = (
        (world.pair_role == ROLE_OWN)
        & (world.account_created_day[world.pair_person] < 0)
        & (rng.random(len(world.pair_person)) < config.logged_in_at_start_share)
    )
    return People(
        intent=rng.choice(3, p=config.initial_state_mix, size=world.n).astype(np.int8),
        engagement=world.engagement_baseline.copy(),
        pair_logged_in=logged_in,
        email_stop_day=np.full(world.n, -1),
        sms_stop_day=np.full(world.n, -1),
    )


def _end_of_day(
    people: People,
    messages: MessagingDay,
    clicked: np.ndarray,
    world: World,
    rng: np.random.Generator,
    config: SimulationConfig,
) -> None:
    """Overnight: engagement follows today's messages, intent moves (up faster after a click),
    some devices log out."""
    people.engagement = next_engagement_level(
        people.engagement, world.engagement_baseline, messages.engaged, messages.ignored, config
    )
    stay_low, stay_mid = transition_thresholds(
        people.intent, world.intent_propensity, clicked, config
    )
    u = rng.random(world.n)
    people.intent = ((u >= stay_low).astype(np.int8) + (u >= stay_mid)).astype(np.int8)
    logs_out = (world.pair_role != ROLE_KIOSK) & (
        rng.random(len(people.pair_logged_in)) < config.daily_logout
    )
    people.pair_logged_in &= ~logs_out


class _DayWriter:
    """Writes each day's events in time order; events due after midnight wait for their day."""

    def __init__(
        self, handle: BinaryIO, bad_record_rate: float, rng: np.random.Generator, stamper: Stamper
    ) -> None:
        self.handle = handle
        self.bad_record_rate = bad_record_rate
        self.rng = rng
        self.stamper = stamper
        self.pending = Batch.empty()
        self.clean = 0
        self.dirty = 0

    def write_day(self, batch: Batch, day_end_ms: int) -> None:
        merged = Batch.concat([self.pending, batch])
        order = np.argsort(merged.t_ms, kind="stable")
        cut = int(np.searchsorted(merged.t_ms[order], day_end_ms, side="left"))
        today = merged.select(order[:cut])
        self.pending = merged.select(order[cut:])
        self.clean += len(today)
        if self.bad_record_rate > 0:
            lines, dirty = add_dirty_lines(
                today.lines(), self.bad_record_rate, self.rng, self.stamper
            )
            self.dirty += dirty
            self.handle.writelines(lines)
        else:
            for chunk in today.chunks():
                self.handle.write(chunk)
        # Whatever is still pending after the last day lies past the end and is dropped.


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(
    customers: int, days: int, seed: int, start: datetime | None, bad_record_rate: float
) -> datetime:
    if not _is_integer(customers) or customers < 1:
        raise ValueError(f"customers must be an integer of at least 1, got {customers!r}")
    if not _is_integer(days) or days < 1:
        raise ValueError(f"days must be an integer of at least 1, got {days!r}")
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(bad_record_rate, int | float) or not (
        math.isfinite(bad_record_rate) and 0.0 <= bad_record_rate <= MAX_BAD_RECORD_RATE
    ):
        raise ValueError(
            f"bad_record_rate must be between 0 and {MAX_BAD_RECORD_RATE}, got {bad_record_rate!r}"
        )
    if start is None:
        return DEFAULT_START
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    if (start.hour, start.minute, start.second, start.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"start must be a midnight UTC, got {start.isoformat()}")
    return start


@contextmanager
def _day_progress(enabled: bool, days: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over the simulated days on stderr; yields its advance callback."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("simulating days", total=days)
        yield lambda: bar.advance(task)


@contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """The simulation builds millions of acyclic dicts; cyclic GC passes over them cost 4x."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
