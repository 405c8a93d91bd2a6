"""What the day functions share: the run's tools, the day's clock and the people's state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.simulator.config import SimulationConfig
from features.simulator.wire import DAY_MS, Stamper, WireObjects
from features.simulator.world import World


@dataclass(frozen=True)
class Day:
    """One simulated day."""

    index: int  # days since the start
    start_ms: int  # its first instant, ms since the epoch (UTC)
    day_of_week: int  # 0 = Monday

    @property
    def end_ms(self) -> int:
        return self.start_ms + DAY_MS


@dataclass
class People:
    """What changes about people from one day to the next."""

    intent: np.ndarray  # (N,) int8: 0 dormant, 1 browsing, 2 ready
    engagement: np.ndarray  # (N,) float64 engagement level in [0, 1]
    pair_logged_in: np.ndarray  # (P,) bool: the person is logged in on that device
    email_stop_day: np.ndarray  # (N,) int: day of bounce / unsubscribe / spam, -1: receiving
    sms_stop_day: np.ndarray  # (N,) int: day of opt-out, -1: receiving


@dataclass
class Counters:
    """Running numbers that keep order, session and send ids unique within a run."""

    orders: int = 0
    sessions: int = 0
    sends: int = 0


@dataclass
class Run:
    """What lives for the whole simulation."""

    world: World
    wire: WireObjects
    config: SimulationConfig
    rng: np.random.Generator
    stamper: Stamper
    counters: Counters
