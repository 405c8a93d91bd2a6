"""Ingest throughput: simulated Segment JSON lines and the real Online Retail Parquet files.

    python benchmarks/bench_ingest.py [--customers 20000] [--days 60] [--file events.jsonl]
                                      [--python] [--workers N] [--repeat N]

Prints one JSON line per measurement. Each run ingests into a fresh store in a temp folder,
then ingests the same file again (all duplicates) to time the dedupe path. ``seconds`` and
``events_per_second`` are the ingest's own (read, normalise, dedupe, append, dead letters);
``with_identity_seconds`` adds the identity update that ``ingest_file`` runs afterwards.
``cpu_us_per_event`` is the CPU time of every thread and worker process per record read, which
stays comparable on a busy machine; ``load`` is the 1-minute load average before and after.
``--python`` measures the reference (per-record Python) path instead of the DuckDB one.
``--repeat N`` times the JSON lines N times, each in a fresh process and a fresh store on the same
file (this machine's run-to-run spread is about 10%), then prints the median, minimum and maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from features.contract import NormaliseOptions
from features.ingest import IngestOptions, ingest_file
from features.simulate import simulate
from features.store import EventStore
from features.tabular import parse_mapping

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RETAIL = {
    "online_retail_ii_2009_2010.parquet": [
        "user_id=Customer ID",
        "order_id=Invoice",
        "price=Price",
    ],
    "online_retail_2010_2011.parquet": [
        "user_id=CustomerID",
        "order_id=InvoiceNo",
        "price=UnitPrice",
    ],
}
COMMON = [
    "timestamp=InvoiceDate",
    "product_id=StockCode",
    "name=Description",
    "quantity=Quantity",
    "properties.country=Country",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--file", type=Path, help="JSON lines (default: simulate)")
    parser.add_argument("--python", action="store_true", help="the reference Python path")
    parser.add_argument("--workers", type=int, default=None, help="Python path: processes")
    parser.add_argument("--skip-retail", action="store_true", help="only the JSON lines")
    parser.add_argument("--repeat", type=int, default=1, help="time the JSON lines N times")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    vectorised = not args.python
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.file:
            events_path = args.file
        else:
            world = simulate(tmp / "world", customers=args.customers, days=args.days, seed=1)
            events_path = world.events_path
            # The simulator's file is still being written back to disk; without this the kernel
            # flushes it during the timed ingest (about 10% slower in interleaved runs), which
            # measures the simulator's writes, not ingest from a file.
            os.sync()
        if args.repeat > 1:
            _repeat(args, events_path)
            return
        with EventStore(tmp / "store.duckdb") as store:
            options = IngestOptions(workers=args.workers, vectorised=vectorised)
            for label in ("first", "again"):
                result = _measure(store, events_path, options)
                print(
                    json.dumps(
                        {
                            "input": "segment jsonl",
                            "path": "duckdb" if vectorised else "python",
                            "pass": label,
                            "bytes": events_path.stat().st_size,
                            **result,
                        }
                    )
                )
            if args.skip_retail:
                return
            for name, specific in RETAIL.items():
                path = DATA / name
                if not path.exists():
                    print(json.dumps({"input": name, "skipped": f"{path} not found"}))
                    continue
                options = IngestOptions(
                    mapping=parse_mapping(specific + COMMON, event="Order Completed"),
                    normalise=NormaliseOptions(timezone="Europe/London"),
                )
                result = _measure(store, path, options)
                result["rows_per_second"] = round(result["rows"] / result["seconds"], 1)
                print(json.dumps({"input": name, **result}))


def _repeat(args: argparse.Namespace, events_path: Path) -> None:
    """Run this benchmark ``args.repeat`` times on ``events_path`` in fresh processes and
    summarise their first passes (retail files are not repeated: use a plain run)."""
    command = [sys.executable, __file__, "--file", str(events_path), "--skip-retail"]
    if args.python:
        command.append("--python")
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    firsts = []
    for _ in range(args.repeat):
        lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        for line in lines.splitlines():
            print(line, flush=True)
            record = json.loads(line)
            if record.get("pass") == "first":
                firsts.append(record)
    rates = [record["events_per_second"] for record in firsts]
    print(
        json.dumps(
            {
                "summary": "first pass",
                "runs": len(rates),
                "events_per_second_median": round(statistics.median(rates), 1),
                "events_per_second_min": min(rates),
                "events_per_second_max": max(rates),
                "runs_at_or_above_100k": sum(rate >= 100_000 for rate in rates),
                "cpu_us_per_event_median": statistics.median(
                    record["cpu_us_per_event"] for record in firsts
                ),
            }
        )
    )


def _measure(store: EventStore, path: Path, options: IngestOptions) -> dict:
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    report = ingest_file(store, path, options)
    with_identity = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    return {
        **report.as_dict(),
        "with_identity_seconds": round(with_identity, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_event": round(cpu / max(report.read, 1) * 1e6, 2),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _cpu_seconds() -> float:
    """User + system time of this process's threads and its finished worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
