"""Speed of point-in-time features: aggregates and sequences at one cutoff, examples at 8.

    python benchmarks/bench_features.py [--customers 100000] [--days 90] [--store PATH]
        [--example-cutoffs 8] [--memory-limit 3GB]

Simulates a world (or reuses an event store given with --store), then times aggregates and
sequences for every profile at the last day, and training examples at 8 weekly cutoffs.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from features.examples import ExampleConfig, build_examples, profile_events_table
from features.ingest import ingest_file
from features.profile_source import default_profile_source
from features.sequences import SequenceConfig
from features.simulate import simulate
from features.store import EventStore


def cpu_seconds() -> float:
    """User + system CPU of this process and its DuckDB threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--store", type=Path, help="reuse this event store instead of simulating")
    parser.add_argument(
        "--example-cutoffs", type=int, default=8, help="cutoffs for the examples timing (0: skip)"
    )
    parser.add_argument(
        "--memory-limit", help="DuckDB memory_limit, e.g. 3GB (default: DuckDB's, 80%% of RAM)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store_path = args.store
        if store_path is None:
            world = simulate(Path(tmp) / "world", customers=args.customers, days=args.days, seed=3)
            store_path = Path(tmp) / "store.duckdb"
            with EventStore(store_path) as store:
                ingest_file(store, world.events_path)
        with EventStore(store_path, read_only=True) as store:
            connection = store.connection
            if args.memory_limit:
                connection.execute("SET memory_limit = ?", [args.memory_limit])
            events = store.count()
            last = connection.sql("SELECT max(timestamp) FROM events").fetchall()[0][0]
            source = default_profile_source(store.connection)

            started, cpu = time.perf_counter(), cpu_seconds()
            config = SequenceConfig()
            # As the pipeline does: profiles as of the cutoff, events mapped to them once.
            with profile_events_table(connection, source, last) as view:
                profile_events_seconds = time.perf_counter() - started
                aggregates = view.aggregates(connection, last)
                aggregate_seconds = time.perf_counter() - started - profile_events_seconds
                lap = time.perf_counter()
                sequences = view.sequences(connection, last, config)
                sequence_seconds = time.perf_counter() - lap
            one_cutoff_cpu = cpu_seconds() - cpu
            print(
                json.dumps(
                    {
                        "measure": "one cutoff",
                        "events": events,
                        "profiles": len(aggregates),
                        "profile_events_seconds": round(profile_events_seconds, 2),
                        "aggregate_seconds": round(aggregate_seconds, 2),
                        "sequence_seconds": round(sequence_seconds, 2),
                        "wall_seconds": round(
                            profile_events_seconds + aggregate_seconds + sequence_seconds, 2
                        ),
                        "cpu_seconds": round(one_cutoff_cpu, 2),
                        "load_average": round(os.getloadavg()[0], 2),
                        "sequence_length": config.length,
                        "sequence_profiles": len(sequences),
                        "peak_rss_mb": round(peak_rss_mb()),
                    }
                )
            )

            if args.example_cutoffs < 1:
                return
            # Oldest first, as training reads them: the identity graph advances between them.
            cutoffs = sorted(last - timedelta(days=7 * k + 14) for k in range(args.example_cutoffs))
            source = default_profile_source(store.connection)  # nothing cached from above
            started, cpu = time.perf_counter(), cpu_seconds()
            examples = sends = 0
            per_cutoff = []
            for cutoff in cutoffs:
                lap = time.perf_counter()
                built = build_examples(connection, source, cutoff, ExampleConfig())
                examples += len(built.profiles)
                sends += len(built.sends)
                per_cutoff.append(round(time.perf_counter() - lap, 1))
            seconds = time.perf_counter() - started
            print(
                json.dumps(
                    {
                        "measure": f"examples at {len(cutoffs)} cutoffs",
                        "examples": examples,
                        "send_labels": sends,
                        "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu_seconds() - cpu, 2),
                        "load_average": round(os.getloadavg()[0], 2),
                        "examples_per_second": round(examples / seconds),
                        "seconds_per_cutoff": per_cutoff,
                        "peak_rss_mb": round(peak_rss_mb()),
                    }
                )
            )


if __name__ == "__main__":
    main()
