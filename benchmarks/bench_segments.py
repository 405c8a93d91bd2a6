"""Speed of the segment evaluators on the default library.

Batch: every profile's memberships at a cutoff (membership only, then with exact entered_at),
over synthetic profile events generated in DuckDB. Incremental: microseconds per event per
profile when a sample of those profiles is streamed through ``SegmentEngine`` (time-driven
changes between events included).

    python benchmarks/bench_segments.py --profiles 1000000 --events-per-profile 20
    python benchmarks/bench_segments.py --profiles 20000 --json     # quick

Targets (issue 6): batch 1M profiles x default library < 30 s; incremental < 200 us per event.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.segments.batch import evaluate_batch
from serving.segments.incremental import SegmentEngine
from serving.segments.library import load_library

AT = datetime(2026, 3, 1)
# (event, weight per 1000 events): a brand that emails more than it sells.
MIX = [
    ("Email Delivered", 250),
    ("Email Opened", 70),
    ("Email Link Clicked", 15),
    ("Email Bounced", 3),
    ("Unsubscribed", 2),
    ("Email Marked as Spam", 1),
    ("SMS Delivered", 50),
    ("SMS Link Clicked", 5),
    ("SMS Opted Out", 1),
    ("Push Notification Received", 40),
    ("Push Notification Tapped", 8),
    ("Page Viewed", 200),
    ("Product Viewed", 180),
    ("Product List Viewed", 60),
    ("Product Added", 40),
    ("Cart Viewed", 20),
    ("Checkout Started", 15),
    ("Order Completed", 12),
    ("Identify", 28),
]


def generate(
    connection: duckdb.DuckDBPyConnection, profiles: int, per_profile: int, days: int
) -> int:
    """Table profile_events: profiles x per_profile events (on average) over `days` days."""
    assert sum(w for _, w in MIX) == 1000
    cases, total = [], 0
    for name, weight in MIX:
        total += weight
        cases.append(f"WHEN r < {total} THEN '{name}'")
    span = days * 86_400_000_000
    connection.execute(
        f"""
        CREATE OR REPLACE TABLE profile_events AS
        WITH raw AS (
            SELECT (hash(i, 1) % {profiles})::BIGINT AS p, (hash(i, 2) % 1000)::INTEGER AS r,
                   (hash(i, 3) % {span})::BIGINT AS back, hash(i, 4) AS h
            FROM range({profiles * per_profile}) t(i)
        )
        SELECT 'p' || p AS profile_id,
               CASE {" ".join(cases)} END AS event,
               make_timestamp(epoch_us(TIMESTAMP '{AT.isoformat(sep=" ")}') - back) AS timestamp,
               CASE WHEN p % 10 < 7 THEN 'p' || p || '@example.com' END AS email,
               CASE WHEN p % 10 < 3 THEN '+4479' || lpad((p % 100000000)::VARCHAR, 8, '0')
                    END AS phone,
               CASE WHEN r >= 985 THEN (h % 20000) / 100.0 END AS revenue,
               'c' || (h % 20) AS category,
               NULL::VARCHAR AS channel,
               NULL::VARCHAR AS properties
        FROM raw
        """
    )
    return connection.sql("SELECT count(*) FROM profile_events").fetchall()[0][0]


def cpu_seconds() -> float:
    """CPU time of this process, DuckDB's threads included: on a machine shared with other
    work, wall time overstates what the evaluator needs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_batch(connection, library, entered_at: bool) -> tuple[float, float, int, dict]:
    started, cpu = time.perf_counter(), cpu_seconds()

    def step(name: str) -> None:  # progress on stderr, for long runs
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
        print(f"  {wall:7.1f} s wall {used:7.1f} s CPU  {name}", file=sys.stderr, flush=True)

    result = evaluate_batch(
        connection, "profile_events", library, AT, entered_at=entered_at, on_step=step
    )
    return (
        time.perf_counter() - started,
        cpu_seconds() - cpu,
        result.memberships.num_rows,
        result.sizes,
    )


def bench_incremental(connection, library, sample: int) -> dict:
    rows = (
        connection.sql(
            f"""
        SELECT * FROM profile_events
        WHERE profile_id IN (SELECT DISTINCT profile_id FROM profile_events
                             ORDER BY hash(profile_id) LIMIT {sample})
          AND timestamp <= $at
        ORDER BY profile_id, timestamp
        """,
            params={"at": AT},
        )
        .to_arrow_table()
        .to_pylist()
    )
    by_profile: dict[str, list[dict]] = {}
    for row in rows:
        by_profile.setdefault(row["profile_id"], []).append(row)
    ids, streams = list(by_profile), list(by_profile.values())
    engine = SegmentEngine(library)
    per_event = []
    events = 0
    started, cpu = time.perf_counter(), time.process_time()
    for pid, stream in zip(ids, streams, strict=True):
        state = engine.new_profile(pid)
        t0 = time.process_time()
        for event in stream:
            engine.apply(state, event)
        engine.advance(state, AT + timedelta(days=400))  # every remaining window runs out
        elapsed = time.process_time() - t0
        if stream:
            per_event.append(elapsed / len(stream) * 1e6)
            events += len(stream)
    total, total_cpu = time.perf_counter() - started, time.process_time() - cpu
    per_event.sort()
    return {
        "profiles": len(ids),
        "events": events,
        "us_per_event_wall": round(total / max(events, 1) * 1e6, 1),
        "us_per_event_mean": round(total_cpu / max(events, 1) * 1e6, 1),
        "us_per_event_median_profile": round(statistics.median(per_event), 1) if per_event else 0,
        "us_per_event_p99_profile": round(per_event[int(0.99 * (len(per_event) - 1))], 1)
        if per_event
        else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events-per-profile", type=int, default=20)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--sample", type=int, default=2000, help="profiles streamed incrementally")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="8GB")
    parser.add_argument("--skip-entered-at", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    connection = duckdb.connect()
    connection.execute(f"SET threads = {args.threads}; SET memory_limit = '{args.memory_limit}'")
    started = time.perf_counter()
    events = generate(connection, args.profiles, args.events_per_profile, args.days)
    generated = time.perf_counter() - started
    print(f"generated {events:,} events in {generated:.1f} s", file=sys.stderr, flush=True)
    library = load_library()
    report = {
        "profiles": args.profiles,
        "events": events,
        "days": args.days,
        "threads": args.threads,
        "segments": len(library.names),
        "generate_seconds": round(generated, 1),
    }
    seconds, cpu, rows, sizes = bench_batch(connection, library, entered_at=False)
    report |= {
        "batch_membership_seconds": round(seconds, 1),
        "batch_membership_cpu_seconds": round(cpu, 1),
        "memberships": rows,
    }
    if not args.skip_entered_at:
        seconds, cpu, rows_with, _ = bench_batch(connection, library, entered_at=True)
        assert rows_with == rows, "timeline and membership query disagree"
        report["batch_with_entered_at_seconds"] = round(seconds, 1)
        report["batch_with_entered_at_cpu_seconds"] = round(cpu, 1)
    report["load_average"] = round(os.getloadavg()[0], 1)
    report["incremental"] = bench_incremental(connection, library, args.sample)
    report["sizes"] = sizes
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['profiles']:,} profiles, {events:,} events over {args.days} days, "
        f"{report['segments']} segments, {args.threads} threads"
    )
    print(
        f"batch, membership at a cutoff:  {report['batch_membership_seconds']:>7.1f} s wall, "
        f"{report['batch_membership_cpu_seconds']:.1f} s CPU"
    )
    if "batch_with_entered_at_seconds" in report:
        wall = report["batch_with_entered_at_seconds"]
        cpu = report["batch_with_entered_at_cpu_seconds"]
        print(f"batch, with exact entered_at:   {wall:>7.1f} s wall, {cpu:.1f} s CPU")
    print(f"(load average {report['load_average']} on {os.cpu_count()} cores while measuring)")
    inc = report["incremental"]
    print(
        f"incremental, {inc['profiles']:,} profiles / {inc['events']:,} events: "
        f"{inc['us_per_event_mean']} us CPU per event "
        f"(median profile {inc['us_per_event_median_profile']}, "
        f"p99 profile {inc['us_per_event_p99_profile']}; wall {inc['us_per_event_wall']})"
    )


if __name__ == "__main__":
    main()
