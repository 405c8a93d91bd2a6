"""``kairos segments``: segment memberships at a cutoff, rule validation and explanations.

    kairos segments --at TIMESTAMP [--rules FILE] [--scores FILE] --out FILE
    kairos segments validate FILE
    kairos segments explain PROFILE SEGMENT [--at TIMESTAMP]

Mounted by ``kairos/cli.py``; all the logic lives in ``serving.segments``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kairos.options import JsonOption, WorkspaceOption
from kairos.workspace import open_workspace

segments_app = typer.Typer(
    help="Segments from YAML rules: memberships at a cutoff (--at, --out), validate, explain.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        help="Segments YAML file (default: the shipped default library).",
        show_default=False,
    ),
]
ScoresOption = Annotated[
    Path | None,
    typer.Option(
        "--scores",
        help="Model scores, Parquet or CSV (profile_id, p_convert, p_engage_email, p_engage_sms, "
        "p_engage_push, best_hour_of_week), e.g. from `kairos score`. Without it, segments use "
        "their fallback rules.",
        show_default=False,
    ),
]


@segments_app.callback(invoke_without_command=True)
def segments(
    ctx: typer.Context,
    at: Annotated[
        str | None,
        typer.Option(
            help="Cutoff instant, ISO 8601 (UTC unless it has an offset): memberships as of this "
            "instant, from events at or before it.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file, .parquet or .csv: profile_id, segment, entered_at.",
            show_default=False,
        ),
    ] = None,
    rules: RulesOption = None,
    scores: ScoresOption = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--segment",
            help="Only this segment (and those it refers to); repeatable (default: all).",
            show_default=False,
        ),
    ] = None,
    entered_at: Annotated[
        bool,
        typer.Option(
            "--entered-at/--no-entered-at",
            help="Compute when each membership started (exact; slower). Without it, entered_at "
            "is empty.",
        ),
    ] = True,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every profile's segments at --at, written to --out, with a size report per segment."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"workspace": workspace}
        return
    if at is None or out is None:
        _fail(
            "kairos segments needs --at and --out (or a subcommand: validate, explain); "
            "see `kairos segments --help`",
            code=2,
        )
    cutoff = _parse_at(at)
    _check_output(out)

    from serving.segments.batch import evaluate_batch, profile_events_at

    ws = open_workspace(workspace)
    connection = _open_store(ws.event_store)
    try:
        scores_relation = _register_scores(connection, scores)
        library = _load(rules, connection, scores_available=scores_relation is not None)
        if only:
            try:
                library = library.subset(only)
            except KeyError as error:
                _fail(str(error).strip('"'), code=2)
        with console.status("evaluating segments", spinner="dots") as status:
            status.update("segments: profiles as of --at")
            profile_events = profile_events_at(connection, cutoff)
            try:
                result = evaluate_batch(
                    connection,
                    profile_events,
                    library,
                    cutoff,
                    scores=scores_relation,
                    entered_at=entered_at,
                    on_step=lambda step: status.update(f"segments: {step}"),
                )
            except ValueError as error:
                _fail(str(error))
    finally:
        connection.close()
    _write(result.memberships, out)
    if as_json:
        print(
            json.dumps(
                {
                    "at": cutoff.isoformat(),
                    "profiles": result.profiles,
                    "rows": result.memberships.num_rows,
                    "segments": result.sizes,
                    "thresholds": result.thresholds,
                    "fallback": [s.name for s in library.segments.values() if s.uses_fallback],
                    "rules": library.source,
                    "out": str(out),
                    "seconds": round(result.seconds, 3),
                }
            )
        )
        return
    table = Table(title=f"Segments at {cutoff.isoformat(sep=' ')} ({result.profiles:,} profiles)")
    table.add_column("segment")
    table.add_column("members", justify="right")
    table.add_column("% of profiles", justify="right")
    for name, count in result.sizes.items():
        share = 100 * count / result.profiles if result.profiles else 0.0
        mark = " (fallback rule)" if library.segments[name].uses_fallback else ""
        table.add_row(name + mark, f"{count:,}", f"{share:.1f}")
    Console().print(table)
    console.print(
        f"{result.memberships.num_rows:,} memberships -> {out} in {result.seconds:.1f} s "
        f"(rules: {library.source})"
    )


@segments_app.command()
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Segments YAML file to check.")],
    with_scores: Annotated[
        bool,
        typer.Option(
            "--with-scores",
            help="Check as if model scores will be supplied (score conditions without a "
            "fallback are then allowed).",
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="Treat unknown event names as errors, not warnings.")
    ] = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a segments file: schema, references, cycles, event names, model scores.

    Every problem is listed with its YAML path and line. Event names are checked against the
    canonical events and those in the workspace's event store. Exits 1 when the file is invalid.
    """
    from serving.segments.library import SegmentDefinitionError, load_library

    known = _store_events(workspace or _parent_workspace(ctx))
    try:
        library = load_library(
            file, scores_available=with_scores, known_events=known, strict=strict
        )
    except SegmentDefinitionError as error:
        if as_json:
            print(json.dumps({"valid": False, "errors": [_problem(p) for p in error.problems]}))
        else:
            console.print(f"[red]invalid:[/red] {file}")
            for problem in error.problems:
                console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "segments": library.names,
                    "warnings": [_problem(p) for p in library.warnings],
                    "fallback": [s.name for s in library.segments.values() if s.uses_fallback],
                }
            )
        )
        return
    console.print(f"[green]valid:[/green] {file}: {len(library.names)} segments")
    for warning in library.warnings:
        console.print(f"  [yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    print("\n".join(library.names))


@segments_app.command()
def explain(
    ctx: typer.Context,
    profile: Annotated[
        str,
        typer.Argument(
            help="Profile id (as in `kairos segments --out`), or any identifier of the profile: "
            "email:ann@example.com, user_id:42, phone:+4479..., or a bare value."
        ),
    ],
    segment: Annotated[str, typer.Argument(help="Segment name, e.g. high_intent.")],
    at: Annotated[
        str | None,
        typer.Option(help="Instant to explain, ISO 8601 (default: now, UTC).", show_default=False),
    ] = None,
    rules: RulesOption = None,
    scores: ScoresOption = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Why PROFILE is or is not in SEGMENT: each condition, held or failed, with its values."""
    from serving.segments.batch import (
        find_profile,
        profile_events_at,
        profile_events_of,
        score_thresholds,
        scores_of,
    )
    from serving.segments.explain import explain as explain_profile

    cutoff = _parse_at(at) if at else datetime.now(UTC).replace(tzinfo=None)
    ws = open_workspace(workspace or _parent_workspace(ctx))
    connection = _open_store(ws.event_store)
    try:
        scores_relation = _register_scores(connection, scores)
        library = _load(rules, connection, scores_available=scores_relation is not None)
        if segment not in library.segments:
            try:
                library.segment(segment)
            except KeyError as error:
                _fail(str(error).strip('"'), code=2)
        profile_events = profile_events_at(connection, cutoff)
        try:
            found = find_profile(connection, profile_events, profile, cutoff)
        except ValueError as error:
            _fail(str(error))
        profile = found.profile_id
        events = profile_events_of(connection, profile_events, profile, cutoff)
        thresholds = (
            score_thresholds(connection, profile_events, library, cutoff, scores_relation)
            if scores_relation is not None and library.top_tests()
            else {}
        )
        profile_scores = scores_of(connection, scores_relation, profile)
    finally:
        connection.close()
    explanation = explain_profile(
        library, profile, segment, events, cutoff, scores=profile_scores, thresholds=thresholds
    )
    if as_json:
        print(json.dumps(explanation.as_dict() | {"found": found.how or None}))
    else:
        if found.how:
            console.print(found.how, highlight=False, soft_wrap=True)
        print(explanation.render())


# --- Helpers -----------------------------------------------------------------------------------


def _parent_workspace(ctx: typer.Context) -> Path | None:
    """--workspace given before the subcommand: kairos segments -w DIR explain ..."""
    return (ctx.obj or {}).get("workspace") if isinstance(ctx.obj, dict) else None


def _parse_at(value: str) -> datetime:
    from features.contract import RejectedRecord, parse_timestamp

    try:
        return parse_timestamp(value, field="--at")
    except RejectedRecord as error:
        _fail(str(error), code=2)
        raise  # unreachable


def _check_output(out: Path) -> None:
    if out.suffix.lower() not in (".parquet", ".csv"):
        _fail(f"--out {out}: use a .parquet or .csv file name", code=2)


def _open_store(path: Path):
    import duckdb

    if not path.exists():
        _fail(f"no event store at {path}; run `kairos ingest` first")
    return duckdb.connect(str(path), read_only=True)


def _register_scores(connection, scores: Path | None) -> str | None:
    if scores is None:
        return None
    if not scores.exists():
        _fail(f"--scores {scores}: no such file", code=2)
    reader = {".parquet": "read_parquet", ".csv": "read_csv_auto"}.get(scores.suffix.lower())
    if reader is None:
        _fail(f"--scores {scores}: use a .parquet or .csv file", code=2)
    literal = "'" + str(scores).replace("'", "''") + "'"
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW segment_scores AS SELECT * FROM {reader}({literal})"
    )
    return "segment_scores"


def _store_events(workspace: Path | None) -> list[str]:
    """Event names in the workspace's store (none when there is no store yet)."""
    from kairos.workspace import resolve_workspace

    path = resolve_workspace(workspace) / "events.duckdb"
    if not path.exists():
        return []
    import duckdb

    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return []
    try:
        return [row[0] for row in connection.sql("SELECT DISTINCT event FROM events").fetchall()]
    except duckdb.Error:
        return []
    finally:
        connection.close()


def _load(rules: Path | None, connection, scores_available: bool):
    from serving.segments.library import SegmentDefinitionError, load_library

    known = [row[0] for row in connection.sql("SELECT DISTINCT event FROM events").fetchall()]
    try:
        library = load_library(rules, scores_available=scores_available, known_events=known)
    except SegmentDefinitionError as error:
        console.print(f"[red]error:[/red] {error.source} is not a valid segments file:")
        for problem in error.problems:
            console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for warning in library.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    return library


def _write(table, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        import pyarrow.csv

        pyarrow.csv.write_csv(table, out)
    else:
        import pyarrow.parquet

        pyarrow.parquet.write_table(table, out)


def _problem(problem) -> dict:
    return {"path": problem.path, "line": problem.line, "message": problem.message}


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
