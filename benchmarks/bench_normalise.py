"""Normalisation throughput: the Python reference path against the vectorised SQL path.

    python benchmarks/bench_normalise.py [--lines 500000] [--file events.jsonl] [--batch 100000]

Generates realistic Segment JSON lines with the simulator (or reads a JSON-lines file), then times
- python: ``orjson.loads`` + ``normalise_message`` per line, in this process;
- sql: ``features.vectorised.normalise_lines`` over Arrow batches (DuckDB uses every core);
- sql_with_fallback: the same plus the Python path for the lines SQL leaves unclaimed, i.e. the
  cost of normalising every line.
Prints one JSON line with events/s of each path, CPU µs per line (all threads; comparable even
on a busy machine), the share of lines SQL claims and the share the common-shape query claims.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa

from features.contract import NormaliseOptions, RejectedRecord, normalise_message
from features.vectorised import common_shape_rows, normalise_lines

LINES_PER_CUSTOMER_MONTH = 55  # what the default simulator writes, roughly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000, help="lines to normalise")
    parser.add_argument("--file", type=Path, help="a JSON-lines file (default: simulate one)")
    parser.add_argument("--batch", type=int, default=100_000, help="lines per SQL query")
    args = parser.parse_args()

    raws = _read_lines(args.file, args.lines) if args.file else _simulated_lines(args.lines)
    options = NormaliseOptions()

    started, cpu_started = time.perf_counter(), time.process_time()
    for raw in raws:
        _python_row(raw, options)
    python_seconds = time.perf_counter() - started
    python_cpu = time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    claimed = 0
    leftovers: list[str] = []
    for first in range(0, len(raws), args.batch):
        batch = raws[first : first + args.batch]
        lines = pa.table(
            {
                "position": pa.array(range(first, first + len(batch)), pa.int64()),
                "raw": pa.array(batch, pa.string()),
            }
        )
        events, unclaimed = normalise_lines(lines, options)
        claimed += events.num_rows
        leftovers.extend(unclaimed.column("raw").to_pylist())
    sql_seconds = time.perf_counter() - started
    sql_cpu = time.process_time() - cpu_started
    for raw in leftovers:
        _python_row(raw, options)
    fallback_seconds = time.perf_counter() - started
    common = sum(  # outside the timings: the share of lines the leaner query claims alone
        common_shape_rows(
            pa.table(
                {
                    "position": pa.array(range(first, first + len(batch)), pa.int64()),
                    "raw": pa.array(batch, pa.string()),
                }
            )
        ).num_rows
        for first in range(0, len(raws), args.batch)
        for batch in [raws[first : first + args.batch]]
    )

    print(
        json.dumps(
            {
                "lines": len(raws),
                "source": str(args.file) if args.file else "simulated",
                "batch": args.batch,
                "cpus": os.cpu_count(),
                "python_events_per_s": round(len(raws) / python_seconds),
                "sql_events_per_s": round(len(raws) / sql_seconds),
                "sql_with_fallback_events_per_s": round(len(raws) / fallback_seconds),
                "claimed_share": round(claimed / len(raws), 4),
                "common_shape_share": round(common / len(raws), 4),
                # CPU time of all threads per line: comparable even on a busy machine
                "python_cpu_us_per_line": round(python_cpu / len(raws) * 1e6, 2),
                "sql_cpu_us_per_line": round(sql_cpu / len(raws) * 1e6, 2),
            }
        )
    )


def _python_row(raw: str, options: NormaliseOptions) -> tuple | None:
    try:
        return normalise_message(orjson.loads(raw), options)
    except (RejectedRecord, orjson.JSONDecodeError):
        return None


def _read_lines(path: Path, limit: int) -> list[str]:
    raws: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                raws.append(line.rstrip("\r\n"))
                if len(raws) >= limit:
                    break
    return raws


def _simulated_lines(count: int) -> list[str]:
    from features.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        customers = max(100, count // LINES_PER_CUSTOMER_MONTH + 1)
        world = simulate(Path(tmp), customers=customers, days=30, seed=1, bad_record_rate=0.01)
        return _read_lines(world.events_path, count)


if __name__ == "__main__":
    main()
