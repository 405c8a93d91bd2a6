"""Ingest throughput: simulated Segment JSON lines and the real Online Retail Parquet files.

    python benchmarks/bench_ingest.py [--customers 20000] [--days 60] [--workers N]

Prints one JSON line per measurement. Each run ingests into a fresh store in a temp folder,
then ingests the same file again (all duplicates) to time the dedupe path.
"""

from __future__ import annotations

import argparse
import json
import tempfile
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
    parser.add_argument("--workers", type=int, default=None, help="default: 2 for big files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = simulate(tmp / "world", customers=args.customers, days=args.days, seed=1)
        with EventStore(tmp / "store.duckdb") as store:
            options = IngestOptions(workers=args.workers)
            for label in ("first", "again"):
                report = ingest_file(store, world.events_path, options)
                print(
                    json.dumps(
                        {
                            "input": "simulated segment jsonl",
                            "pass": label,
                            "bytes": world.events_path.stat().st_size,
                            **report.as_dict(),
                        }
                    )
                )
            for name, specific in RETAIL.items():
                path = DATA / name
                if not path.exists():
                    print(json.dumps({"input": name, "skipped": f"{path} not found"}))
                    continue
                options = IngestOptions(
                    mapping=parse_mapping(specific + COMMON, event="Order Completed"),
                    normalise=NormaliseOptions(timezone="Europe/London"),
                )
                report = ingest_file(store, path, options)
                result = report.as_dict()
                result["rows_per_second"] = round(report.rows / report.seconds, 1)
                print(json.dumps({"input": name, **result}))


if __name__ == "__main__":
    main()
