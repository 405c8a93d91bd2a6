"""Simulator speed: run ``kairos simulate``'s engine into a temporary folder, print one JSON line.

    python benchmarks/bench_simulate.py --customers 100000 --days 90

Prints ``customers, days, events, seconds, events_per_second, peak_rss_mb`` (peak resident
memory of this process, which is the simulator plus the interpreter) and file sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

from features.simulate import simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000, help="simulated people")
    parser.add_argument("--days", type=int, default=90, help="simulated days")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument("--bad-record-rate", type=float, default=0.0, help="dirty lines per clean")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write here and keep the files (default: a temp dir)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kairos-bench-simulate-") as tmp:
        out = args.keep or Path(tmp)
        summary = simulate(
            out,
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            bad_record_rate=args.bad_record_rate,
            progress=args.progress,
        )
        result = {
            "customers": summary.customers,
            "days": summary.days,
            "events": summary.events,
            "seconds": round(summary.seconds, 2),
            "events_per_second": round(summary.events / summary.seconds),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "events_mb": round(summary.events_path.stat().st_size / 2**20, 1),
            "truth_mb": round(summary.truth_path.stat().st_size / 2**20, 1),
        }
    print(json.dumps(result))
    return 0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


if __name__ == "__main__":
    raise SystemExit(main())
