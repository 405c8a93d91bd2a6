"""``kairos identity``: resolve profiles, explain, unmerge, export and count them.

Added to the main command with ``app.add_typer(identity_app, name="identity")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kairos.options import JsonOption, WorkspaceOption
from kairos.workspace import open_workspace

identity_app = typer.Typer(
    help="Identity resolution: one profile per person, explainable and reversible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


@identity_app.command()
def resolve(
    rules: Annotated[
        Path | None,
        typer.Option(
            help="Identity rules YAML (see features/identity_rules.yaml); kept for later "
            "updates (default: the rules last used, else the shipped defaults).",
            show_default=False,
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild every profile from the event store (the batch path).

    Ingest keeps profiles up to date incrementally; both paths give the same profiles.
    """
    from features.identity import IdentityError, RulesError, load_rules, resolve_identities

    try:
        chosen = load_rules(rules) if rules is not None else None
    except RulesError as error:
        _fail(str(error), code=2)
    with _store(workspace, read_only=False) as store:
        try:
            with (
                console.status("Resolving identities ...", spinner="dots")
                if not as_json
                else _nothing()
            ):
                report = resolve_identities(store, chosen)
        except (IdentityError, RulesError) as error:
            _fail(str(error))
    result = report.as_dict()
    if as_json:
        print(json.dumps(result, default=str))
        return
    table = Table(title="Identity resolution (batch)")
    for column in ("events", "identifiers", "profiles", "merges", "shared", "blocked", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        *(
            f"{result[k]:,}"
            for k in ("events", "identifiers", "profiles", "merges", "shared", "blocked")
        ),
        f"{result['seconds']:.2f}",
    )
    out.print(table)
    if report.refused:
        out.print(
            "Links refused by rule: " + ", ".join(f"{k} {v:,}" for k, v in report.refused.items())
        )


@identity_app.command()
def explain(
    identifier: Annotated[
        str,
        typer.Argument(
            help="TYPE:VALUE (user_id, email, phone, device_id, anonymous_id) or a bare value."
        ),
    ],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an identifier's profile, all its identifiers and the chain of links that joined them."""
    from features.identity import IdentityError, RulesError
    from features.identity import explain as explain_identifier

    with _store(workspace, read_only=True) as store:
        try:
            result = explain_identifier(store, identifier)
        except (IdentityError, RulesError) as error:
            _fail(str(error))
    if as_json:
        print(json.dumps(result, default=str))
        return
    _print_explanation(result)


@identity_app.command()
def unmerge(
    identifier: Annotated[
        str | None,
        typer.Option(
            "--identifier",
            help="Make this identifier shared (a device found to be shared): it leaves its "
            "profile and links nothing from now on.",
            show_default=False,
        ),
    ] = None,
    link: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--link",
            help="Two identifiers (A B) of one profile that belong to different people: they "
            "are kept apart from now on.",
            show_default=False,
        ),
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="Why; kept in the merge log.", show_default=False)
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo a wrong merge; only the profiles involved are recomputed and the split is logged."""
    from features.identity import IdentityError, RulesError
    from features.identity import unmerge as unmerge_identity

    if (identifier is None) == (link is None):
        _fail("give either --identifier X or --link A B", code=2)
    with _store(workspace, read_only=False) as store:
        try:
            result = unmerge_identity(store, identifier=identifier, link=link, note=note)
        except (IdentityError, RulesError) as error:
            _fail(str(error))
    if as_json:
        print(json.dumps(result, default=str))
        return
    out.print(f"[bold]{result['summary']}[/bold]")
    out.print(f"profile before: {result['profile_before']}")
    out.print(f"profiles after: {', '.join(result['profiles_after']) or '(none)'}")
    out.print(f"identifiers recomputed: {result['identifiers_recomputed']:,}")


@identity_app.command()
def export(
    out_file: Annotated[
        Path, typer.Option("--out", help="Output file, .parquet or .csv.", show_default=False)
    ],
    include_shared: Annotated[
        bool,
        typer.Option(help="Also list shared identifiers (with an empty profile_id)."),
    ] = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write identifier_type, identifier, profile_id for every identifier of a profile."""
    from features.identity import IdentityError, RulesError, export_identities

    with _store(workspace, read_only=True) as store:
        try:
            rows = export_identities(store, out_file, include_shared=include_shared)
        except (IdentityError, RulesError) as error:
            _fail(str(error))
    if as_json:
        print(json.dumps({"rows": rows, "out": str(out_file)}))
        return
    out.print(f"Wrote {rows:,} identifiers to {out_file}")


@identity_app.command()
def stats(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Profiles, identifiers per profile, the largest profile, merges refused by each rule."""
    from features.identity import IdentityError, RulesError, identity_stats

    with _store(workspace, read_only=True) as store:
        try:
            result = identity_stats(store)
        except (IdentityError, RulesError) as error:
            _fail(str(error))
    if as_json:
        print(json.dumps(result, default=str))
        return
    per = result["identifiers_per_profile"]
    table = Table(title="Identity graph", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("profiles", f"{result['profiles']:,}")
    table.add_row("identifiers", f"{result['identifiers']:,}")
    for kind, count in result["identifiers_by_type"].items():
        table.add_row(f"  {kind}", f"{count:,}")
    table.add_row(
        "identifiers per profile (mean / median / p99)",
        f"{per['mean']:.2f} / {per['median']:g} / {per['p99']:g}",
    )
    largest = result["largest_profile"]
    if largest:
        table.add_row("largest profile", f"{largest['profile_id']} ({largest['identifiers']})")
    table.add_row("merges", f"{result['merges']:,}")
    for rule, count in result["refused_by_rule"].items():
        table.add_row(f"refused: {rule}", f"{count:,}")
    for kind, count in result["shared_identifiers"].items():
        table.add_row(f"shared: {kind}", f"{count:,}")
    for reason, count in result["blocked_values"].items():
        table.add_row(f"blocked: {reason}", f"{count:,}")
    for reason, count in result["issues"].items():
        table.add_row(f"issue: {reason}", f"{count:,}")
    table.add_row("manual unmerges", f"{result['overrides']:,}")
    table.add_row("events resolved", f"{result['events_resolved']:,}")
    out.print(table)


# --- helpers -------------------------------------------------------------------------------------


def _store(workspace: Path | None, read_only: bool):
    from features.store import EventStore

    ws = open_workspace(workspace)
    try:
        return EventStore(ws.event_store, read_only=read_only)
    except FileNotFoundError as error:
        _fail(str(error))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _print_explanation(result: dict[str, Any]) -> None:
    label = f"{result['identifier_type']}:{result['identifier']}"
    if result.get("blocked_reason"):
        out.print(f"{label} is blocked ({result['blocked_reason']}): it never links anything.")
        return
    if result["profile_id"] is None:
        out.print(f"{label} is [bold]shared[/bold] and belongs to no profile.")
        if result["shared_reason"]:
            out.print(f"  why: {result['shared_reason']}")
    else:
        out.print(
            f"{label} belongs to profile [bold]{result['profile_id']}[/bold]"
            + (f" (founded by {result['founder']})" if result.get("founder") else "")
        )
    table = Table(title="Identifiers")
    for column in ("type", "identifier", "first seen", "first message"):
        table.add_column(column)
    for row in result["identifiers"]:
        table.add_row(
            row["identifier_type"],
            row["identifier"],
            str(row["first_seen"]),
            row["first_message_id"],
        )
    out.print(table)
    if result["path"]:
        out.print(f"How {label} joined the profile:")
        for step in result["path"]:
            out.print(
                f"  {step['timestamp']}  {step['identifier_a']} <-> {step['identifier_b']}"
                f"  ({step['message_type']} {step['message_id']})"
            )
    if result["links"]:
        table = Table(title="All links of the profile (merges, in time order)")
        for column in ("time", "message", "type", "a", "b"):
            table.add_column(column)
        for link in result["links"]:
            table.add_row(
                str(link["timestamp"]),
                link["message_id"],
                link["message_type"],
                link["identifier_a"],
                link["identifier_b"],
            )
        out.print(table)
    if result["refused"]:
        table = Table(title=f"Links refused ({result.get('refused_total', 0)} in all)")
        for column in ("time", "message", "a", "b", "rule"):
            table.add_column(column)
        for link in result["refused"]:
            table.add_row(
                str(link["timestamp"]),
                link["message_id"],
                link["identifier_a"],
                link["identifier_b"],
                link["decision"],
            )
        out.print(table)
    history = [e for e in result["log"] if e["action"] != "merge"]
    if history:
        out.print("Splits and unmerges:")
        for entry in history:
            out.print(
                f"  {entry['recorded_at']}  {entry['action']}  {entry['profile_id']}"
                f" -> {entry['other_profile_ids']}  ({entry['detail']})"
            )


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)
