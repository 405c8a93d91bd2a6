"""The ``kairos`` command: one sub-command per pipeline stage (see DESIGN.md, CLI contract).

Human-friendly output by default; ``--json`` prints one JSON object on stdout for scripts.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from kairos.options import JsonOption, WorkspaceOption
from kairos.workspace import disable_telemetry, open_workspace

app = typer.Typer(
    help="Kairos: real-time predictive segmentation for email, SMS and push marketing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _main() -> None:
    disable_telemetry()


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder for events.jsonl and truth.parquet.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of true people.")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Days of history to simulate.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 7,
    start: Annotated[
        datetime | None,
        typer.Option(help="First simulated instant, UTC (default: 2026-01-05, a Monday)."),
    ] = None,
    bad_record_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            help="Extra dirty lines (duplicates, malformed JSON, missing fields) per clean one.",
        ),
    ] = 0.0,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate a brand's cross-channel world with ground truth (Segment Spec JSON lines)."""
    from features.simulate import simulate as run_simulation

    summary = run_simulation(
        out_dir=out,
        customers=customers,
        days=days,
        seed=seed,
        start=start,
        bad_record_rate=bad_record_rate,
        progress=not as_json,
    )
    result = {
        "customers": summary.customers,
        "days": summary.days,
        "events": summary.events,
        "seconds": round(summary.seconds, 3),
        "events_per_second": round(summary.events / max(summary.seconds, 1e-9), 1),
        "events_path": str(summary.events_path),
        "truth_path": str(summary.truth_path),
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"Simulated {summary.customers:,} customers x {summary.days} days: "
        f"{summary.events:,} events in {summary.seconds:.1f} s "
        f"({result['events_per_second']:,.0f}/s)\n"
        f"  events: {summary.events_path}\n  truth:  {summary.truth_path}"
    )


@app.command()
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Segment JSON lines / JSON files (.gz too), or CSV / Parquet files."),
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", help="segment, csv or parquet (default: from the extension)."),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="Tabular files: FIELD=COLUMN, repeatable. Fields: user_id, anonymous_id, email, "
            "phone, device_id, timestamp, event, order_id, product_id, name, category, quantity, "
            "price, revenue, currency, channel, message_id, properties.NAME.",
        ),
    ] = None,
    event: Annotated[
        str | None,
        typer.Option(help='Tabular files: event name of every row, e.g. "Order Completed".'),
    ] = None,
    timezone: Annotated[
        str, typer.Option(help="Time zone of timestamps written without an offset (IANA name).")
    ] = "UTC",
    phone_region: Annotated[
        str | None,
        typer.Option(help="Region for phone numbers without a country code, e.g. GB or US."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Records per atomic append to the store, at least (whole blocks are merged "
            "until they reach it; default: 122,880, one DuckDB row group, as the ingest "
            "benchmark measures).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Decode JSON lines with the per-record Python normaliser in this many "
            "processes instead of the default DuckDB path (which uses threads).",
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate, normalise and store events; every record is accepted, duplicate or rejected.

    Rejected records go to the dead-letter table with their raw payload and the reason.
    Re-ingesting a file changes nothing. Exits 1 when an input could not be read at all.
    """
    from features.contract import NormaliseOptions, parse_timestamp
    from features.ingest import (
        DEFAULT_BATCH_SIZE,
        IngestOptions,
        InputError,
        detect_format,
        ingest_file,
    )
    from features.store import EventStore
    from features.tabular import MappingError, parse_mapping

    try:
        parse_timestamp("2000-01-01T00:00:00", timezone=timezone)  # fail fast on a bad zone
        table_mapping = parse_mapping(mapping, event) if mapping or event else None
    except (MappingError, ValueError) as error:
        _fail(str(error), code=2)
    options = IngestOptions(
        format=format,
        mapping=table_mapping,
        normalise=NormaliseOptions(phone_region=phone_region, timezone=timezone),
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        workers=workers,
        vectorised=workers is None,  # asking for worker processes means the Python path
    )
    ws = open_workspace(workspace)
    reports, failures = [], []
    with EventStore(ws.event_store) as store, _byte_progress(paths, quiet=as_json) as progress:
        for path in paths:
            task = progress.add_task(path.name, total=_size(path))
            try:
                detect_format(path, format)
                report = ingest_file(
                    store, path, options, on_progress=lambda n, t=task: progress.advance(t, n)
                )
            except InputError as error:
                failures.append(str(error))
                console.print(f"[red]error:[/red] {error}")
                continue
            finally:
                progress.update(task, completed=_size(path))
            reports.append(report)
    totals = {
        key: sum(getattr(r, key) for r in reports)
        for key in ("read", "accepted", "duplicate", "rejected")
    }
    seconds = sum(r.seconds for r in reports)
    totals["seconds"] = round(seconds, 3)
    totals["events_per_second"] = round(totals["read"] / seconds, 1) if seconds else 0.0
    if as_json:
        print(
            json.dumps(
                {
                    **totals,
                    "files": [r.as_dict() for r in reports],
                    "errors": failures,
                    "store": str(ws.event_store),
                }
            )
        )
    else:
        _print_ingest_table(reports, totals, ws.event_store)
    if failures:
        raise typer.Exit(1)


def _mount_stage_commands() -> None:
    """Each pipeline stage keeps its commands in its own module; they all hang off `kairos`."""
    from kairos.cli_identity import identity_app
    from kairos.cli_segments import segments_app
    from kairos.cli_training import register as register_training

    app.add_typer(identity_app, name="identity")
    app.add_typer(segments_app, name="segments")
    register_training(app)


features_app = typer.Typer(
    help="Point-in-time profile features.", no_args_is_help=True, add_completion=False
)
app.add_typer(features_app, name="features")


@features_app.command("build")
def features_build(
    at: Annotated[
        datetime,
        typer.Option(help="The instant (UTC) profiles are described at; nothing later is read."),
    ],
    out: Annotated[Path, typer.Option(help="Output file, .parquet or .csv.")],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one row per profile with its aggregates at --at (columns: features/aggregates.py)."""
    from features.aggregates import aggregates_sql
    from features.examples import profile_events_table
    from features.profile_source import default_profile_source
    from features.store import EventStore
    from kairos.output import OutputError, check_output_path, write_table

    try:
        check_output_path(out)
    except OutputError as error:
        _fail(str(error), code=2)
    ws = open_workspace(workspace)
    with (
        EventStore(ws.event_store, read_only=True) as store,
        console.status("resolving profiles as of --at, then aggregating their events"),
    ):
        source = default_profile_source(store.connection)
        with profile_events_table(store.connection, source, at) as events:
            aggregates = events.decoded(aggregates_sql(events.table, at))
            table = store.connection.sql(aggregates).to_arrow_table()
    write_table(table, out)
    if as_json:
        print(
            json.dumps({"profiles": table.num_rows, "columns": table.num_columns, "out": str(out)})
        )
    else:
        console.print(f"{table.num_rows:,} profiles x {table.num_columns} columns at {at} -> {out}")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=1, help="Simulated customers.")] = 2000,
    days: Annotated[int, typer.Option(min=28, help="Simulated days.")] = 56,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    workspace: WorkspaceOption = None,
) -> None:
    """The main job on the embedded default, end to end: simulate a brand, ingest it (identity
    resolved on the way), train the sequence model against its baselines (MLflow run, champion
    alias), score every profile and compute the default segments with those scores.

    Everything lands in the workspace: events.duckdb, mlruns/ (see `mlflow ui
    --backend-store-uri <workspace>/mlruns`), demo/scores.parquet, demo/segments.parquet.
    """
    from features.ingest import ingest_file
    from features.simulate import simulate as run_simulation
    from features.store import EventStore

    ws = open_workspace(workspace)
    out = ws.root / "demo"
    console.rule("[bold]1/5 simulate a brand")
    summary = run_simulation(
        out_dir=out,
        customers=customers,
        days=days,
        seed=seed,
        bad_record_rate=0.002,
        progress=True,
    )
    console.print(f"{summary.events:,} events for {customers:,} people -> {summary.events_path}")
    console.rule("[bold]2/5 ingest into the event store, resolve identities")
    with EventStore(ws.event_store) as store, _byte_progress([summary.events_path]) as progress:
        task = progress.add_task("events.jsonl", total=_size(summary.events_path))
        report = ingest_file(
            store, summary.events_path, on_progress=lambda n: progress.advance(task, n)
        )
        totals = {k: getattr(report, k) for k in ("read", "accepted", "duplicate", "rejected")}
        _print_ingest_table([report], totals, ws.event_store)
        by_channel = store.query(
            "SELECT channel, count(*) AS events FROM events GROUP BY channel ORDER BY events DESC"
        ).to_pylist()
        reasons = store.query(
            "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY n DESC LIMIT 5"
        ).to_pylist()
        last = store.connection.sql("SELECT max(timestamp) FROM events").fetchall()[0][0]
    console.print(
        "Events by channel: " + ", ".join(f"{r['channel']} {r['events']:,}" for r in by_channel)
    )
    if reasons:
        console.print("Top dead-letter reasons:")
        for row in reasons:
            console.print(f"  {row['n']:>5,}  {row['reason']}")
    root = ["--workspace", str(ws.root)]
    _run_stage(["identity", "stats", *root])

    console.rule("[bold]3/5 train the sequence model against its baselines")
    _run_stage(["train", "--truth", str(summary.truth_path), *root])

    at = last.isoformat(timespec="seconds")
    console.rule(f"[bold]4/5 score every profile at {at} with the champion")
    scores = out / "scores.parquet"
    _run_stage(["score", "--at", at, "--out", str(scores), *root])

    console.rule(f"[bold]5/5 segments at {at}")
    members = out / "segments.parquet"
    _run_stage(["segments", "--at", at, "--scores", str(scores), "--out", str(members), *root])
    console.print(
        f"\nRuns and plots: mlflow ui --backend-store-uri {ws.mlflow_tracking_uri}\n"
        "Next: the real-time service and send plans."
    )


def _run_stage(args: list[str]) -> None:
    """Run one `kairos` command as typed on the command line; stop the demo if it fails."""
    command = typer.main.get_command(app)
    try:
        command.main(args, prog_name="kairos", standalone_mode=False)
    except SystemExit as stop:
        if stop.code:
            raise
    except click.ClickException as error:
        error.show()
        raise typer.Exit(error.exit_code) from error


def _print_ingest_table(reports: list, totals: dict, store_path: Path) -> None:
    table = Table(title=f"Ingested into {store_path}")
    for column in ("source", "read", "accepted", "duplicate", "rejected", "events/s"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for r in reports:
        table.add_row(
            Path(r.source).name,
            f"{r.read:,}",
            f"{r.accepted:,}",
            f"{r.duplicate:,}",
            f"{r.rejected:,}",
            f"{r.events_per_second:,.0f}",
        )
    if len(reports) > 1:
        counts = (f"{totals[k]:,}" for k in ("read", "accepted", "duplicate", "rejected"))
        table.add_row("total", *counts, "")
    Console().print(table)
    if totals.get("rejected"):
        console.print(
            "Rejected records are in the dead_letters table with their raw payload and reason."
        )


def _byte_progress(paths: list[Path], quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


_mount_stage_commands()
