"""`flow-agent flow-runs ls|delete|cancel`: list, delete or cancel many flow runs at once.

Mounted by `agent/cli.py` (through `agent.cli.runs`, which re-exports `flow_runs_app`).

`flow-agent flow-runs delete|cancel` exit 0 when every selected run was handled (or nothing
matched), 1 when some could not be or the server stopped answering, 4 on bad input.
"""

# No `from __future__ import annotations` here: `_batch_command` builds each command's
# `--limit` option at run time, and typer reads the annotations of the function it makes.

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from agent.api.client import PrefectClient
from agent.api.models import RunInfo, StateType
from agent.cli.common import bad, err, out, run_with_client, state_text, when
from agent.orchestrate.batch import (
    CANCELLABLE,
    BatchResult,
    RunFilter,
    Selection,
    cancel_flow_runs,
    delete_flow_runs,
    describe_runs,
    select_flow_runs,
    split_states,
)
from agent.orchestrate.parse import parse_duration

__all__ = ["flow_runs_app"]

flow_runs_app = typer.Typer(
    name="flow-runs",
    help="List, delete or cancel many flow runs at once, selected by filters.",
    no_args_is_help=True,
)

StateOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--state", "-s", help="State type (COMPLETED, FAILED, ...) or name (Late, AwaitingRetry). Repeatable."
    ),
]
DeploymentOpt = Annotated[
    list[str] | None, typer.Option("--deployment", "-d", help="'flow/deployment' or id. Repeatable.")
]
FlowOpt = Annotated[list[str] | None, typer.Option("--flow", "-f", help="Flow name. Repeatable.")]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", "-t", help="Runs with this tag (all given). Repeatable.")
]
PoolOpt = Annotated[list[str] | None, typer.Option("--pool", "-p", help="Work pool name. Repeatable.")]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Expected to start more than this long ago (7d, 12h).")
]
NewerOpt = Annotated[
    str | None, typer.Option("--newer-than", help="Expected to start within this long ago (1h).")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", metavar="", help="Show what would be done; change nothing.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", metavar="", help="Do not ask for confirmation.")]
AllOpt = Annotated[
    bool, typer.Option("--all", metavar="", help="Allow acting without any filter (every run).")
]


# the state names Prefect gives besides its types' own (`Late` is a SCHEDULED state)
KNOWN_STATE_NAMES = frozenset(
    {
        "Late",
        "AwaitingRetry",
        "AwaitingConcurrencySlot",
        "Retrying",
        "Cached",
        "Suspended",
        "RolledBack",
        "InfrastructurePending",
        "NotReady",
        "Submitting",
        "TimedOut",
    }
    | {t.value.capitalize() for t in StateType}
)


def _check_states(states: Sequence[str]) -> None:
    _, names = split_states(states)
    unknown = [name for name in names if name not in KNOWN_STATE_NAMES]
    if unknown:
        # one line, as every other error (click's usage box spreads it over several)
        typer.echo(
            f"error: --state {unknown[0]!r} is no state: give a type (COMPLETED, FAILED, CRASHED, ...) "
            "or a name (Late, AwaitingRetry, Retrying, ...)",
            err=True,
        )
        raise typer.Exit(2)


def _filter(
    state: list[str] | None,
    deployment: list[str] | None,
    flow: list[str] | None,
    tag: list[str] | None,
    pool: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
) -> RunFilter:
    _check_states(state or [])
    try:
        older = parse_duration(older_than) if older_than else None
        newer = parse_duration(newer_than) if newer_than else None
    except ValueError as exc:
        raise bad(str(exc)) from None
    return RunFilter(
        states=tuple(state or ()),
        deployments=tuple(deployment or ()),
        flows=tuple(flow or ()),
        tags=tuple(tag or ()),
        pools=tuple(pool or ()),
        older_than=older,
        newer_than=newer,
    )


async def _table(
    client: PrefectClient, runs: Sequence[RunInfo], *, title: str, show: int | None = None
) -> Table:
    shown = list(runs if show is None else runs[:show])
    names = await describe_runs(client, shown)
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("ID", "Name", "Flow", "Deployment", "State", "Expected start", "Pool"):
        if column == "ID":
            table.add_column(column, min_width=36, no_wrap=True)  # a full id, to copy
        else:
            table.add_column(column, overflow="ellipsis", no_wrap=True)
    for run in shown:
        flow, deployment = names.get(run.id, ("", ""))
        table.add_row(
            run.id,
            run.name,
            flow,
            deployment,
            state_text(run),
            when(run.expected_start_time),
            run.work_pool_name or "",
        )
    if show is not None and len(runs) > show:
        table.caption = f"... and {len(runs) - show} more"
    return table


def _print_table(table: Table) -> None:
    # piped into grep or a file: full ids on one line, whatever COLUMNS says
    console = out if out.is_terminal else Console(highlight=False, width=220)
    console.print(table)


def _matched(selection: Selection) -> str:
    if selection.total > len(selection.runs):
        return f"{len(selection.runs)} of {selection.total} matching flow runs (--limit)"
    return f"{len(selection.runs)} matching flow run{'s' if len(selection.runs) != 1 else ''}"


@flow_runs_app.command("ls")
def ls(
    state: StateOpt = None,
    deployment: DeploymentOpt = None,
    flow: FlowOpt = None,
    tag: TagOpt = None,
    pool: PoolOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List flow runs matching the filters, newest expected start first."""
    flt = _filter(state, deployment, flow, tag, pool, older_than, newer_than)

    async def main(client: PrefectClient) -> int:
        selection = await select_flow_runs(client, flt, limit=limit)
        _print_table(await _table(client, selection.runs, title=_matched(selection)))
        return 0

    raise typer.Exit(run_with_client(main))


def _act(
    verb: str,
    flt: RunFilter,
    *,
    limit: int | None,
    dry_run: bool,
    yes: bool,
    everything: bool,
    only: Sequence[Any] | None,
    action: Callable[..., Awaitable[BatchResult]],
) -> int:
    if flt.is_empty and not everything:
        raise bad(f"no filter given: this would {verb} every flow run; add filters, or --all if you mean it")

    async def main(client: PrefectClient) -> int:
        selection = await select_flow_runs(client, flt, limit=limit, only=only)
        if not selection.runs:
            out.print(f"No flow runs to {verb}.")
            return 0
        _print_table(await _table(client, selection.runs, title=_matched(selection), show=20))
        if dry_run:
            out.print(f"Dry run: would {verb} {len(selection.runs)} flow run(s); nothing changed.")
            return 0
        if not yes and not await anyio.to_thread.run_sync(
            lambda: typer.confirm(f"{verb.capitalize()} {len(selection.runs)} flow run(s)?", default=False)
        ):
            out.print("Nothing changed.")
            return 1
        with Progress(
            SpinnerColumn(),
            TextColumn(f"{verb.capitalize()} flow runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task(verb, total=len(selection.runs))
            result = await action(client, selection, on_progress=lambda n: progress.advance(task, n))
        return _report(verb, result, len(selection.runs))

    return run_with_client(main)


def _report(verb: str, result: BatchResult, selected: int) -> int:
    past = {"delete": "Deleted", "cancel": "Cancelled"}[verb]
    how = "" if result.used_bulk else " (one by one: the server has no bulk endpoint)"
    out.print(f"{past} {len(result.done)} of {selected} flow run(s){how}.")
    if result.skipped:
        out.print(f"Skipped {result.skipped}: they changed or disappeared since they were listed.")
    for run_id, reason in result.failed[:20]:
        err.print(f"[yellow]not {past.lower()}[/] {run_id}: {reason}")
    if result.error:
        err.print(f"[red]error:[/] stopped early, the server did not answer: {result.error}")
    return 1 if result.failed or result.error else 0


def _batch_command(
    verb: str,
    *,
    only: Sequence[Any] | None,
    action: Callable[..., Awaitable[BatchResult]],
    doc: str,
) -> Callable[..., None]:
    """`flow-runs delete` and `flow-runs cancel`: the same options and steps, another action."""
    LimitOpt = Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help=f"{verb.capitalize()} at most this many.")
    ]

    def command(
        state: StateOpt = None,
        deployment: DeploymentOpt = None,
        flow: FlowOpt = None,
        tag: TagOpt = None,
        pool: PoolOpt = None,
        older_than: OlderOpt = None,
        newer_than: NewerOpt = None,
        limit: LimitOpt = None,
        dry_run: DryRunOpt = False,
        yes: YesOpt = False,
        everything: AllOpt = False,
    ) -> None:
        flt = _filter(state, deployment, flow, tag, pool, older_than, newer_than)
        code = _act(
            verb,
            flt,
            limit=limit,
            dry_run=dry_run,
            yes=yes,
            everything=everything,
            only=only,
            action=action,
        )
        raise typer.Exit(code)

    command.__name__ = command.__qualname__ = verb
    command.__doc__ = doc
    return command


delete = flow_runs_app.command("delete")(
    _batch_command(
        "delete",
        only=None,
        action=delete_flow_runs,
        doc="""Delete the flow runs matching the filters (50 per request), after showing them.""",
    )
)

cancel = flow_runs_app.command("cancel")(
    _batch_command(
        "cancel",
        only=CANCELLABLE,
        action=cancel_flow_runs,
        doc="""Cancel the unfinished flow runs matching the filters.

    Scheduled runs become CANCELLED at once; pending and running ones become CANCELLING, and
    the agent serving their pool kills the infrastructure and marks them CANCELLED.
    """,
    )
)
