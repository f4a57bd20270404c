"""`flow-agent run` and `flow-agent flow-runs ls|delete|cancel`.

Mounted by `agent/cli.py`:

    from agent.cli_runs import flow_runs_app, run_command
    app.command("run")(run_command)
    app.add_typer(flow_runs_app, name="flow-runs")

Exit codes of `flow-agent run` (one table: `agent.orchestrate.deployments.EXIT_CODES`):

    0  the run was created (no --watch), or it ended COMPLETED
    1  it ended FAILED or CRASHED
    2  it ended CANCELLED (or is CANCELLING); click also uses 2 for command-line usage errors
    3  --timeout ran out while the run was still scheduled, pending, running or paused
    4  the run could not be created or watched (unknown deployment, server error, bad input)

`flow-agent flow-runs delete|cancel` exit 0 when every selected run was handled (or nothing
matched), 1 when some could not be or the server stopped answering, 4 on bad input.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from agent.api.client import PrefectClient
from agent.api.errors import ApiError
from agent.orchestrate.api import DeploymentNotFound, RunInfo
from agent.orchestrate.batch import (
    CANCELLABLE,
    BatchResult,
    RunFilter,
    Selection,
    cancel_flow_runs,
    delete_flow_runs,
    describe_runs,
    select_flow_runs,
)
from agent.orchestrate.deployments import (
    EXIT_ERROR,
    arun_deployment,
    client_from_settings,
    exit_code_for,
    parse_assignments,
    parse_duration,
    parse_start,
    wait_for_flow_run,
)

__all__ = ["flow_runs_app", "run_command", "ui_url"]

T = TypeVar("T")

_err = Console(stderr=True, highlight=False)
_out = Console(highlight=False)

_STATE_STYLE = {
    "COMPLETED": "green",
    "FAILED": "red",
    "CRASHED": "bold red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "cyan",
    "PENDING": "blue",
    "SCHEDULED": "dim",
    "PAUSED": "magenta",
}


# -- shared plumbing ------------------------------------------------------------------------------


def _client() -> PrefectClient:
    # imported here: agent.cli imports this module to mount the commands
    from agent.cli import _settings
    from agent.observe.logging import configure_logging

    settings = _settings()
    # the retry policy's INFO lines would break the status line; warnings still show
    configure_logging(level="WARNING", fmt=settings.log_format, secrets=settings.secrets())
    return client_from_settings(settings)


def _run(main: Callable[[PrefectClient], Awaitable[int]]) -> int:
    """Run `main` with a client; server and input errors end the command with EXIT_ERROR."""
    client = _client()

    async def go() -> int:
        async with client:
            return await main(client)

    try:
        return anyio.run(go)
    except DeploymentNotFound as exc:
        _err.print(f"[red]error:[/] {exc}")
    except ValueError as exc:
        _err.print(f"[red]error:[/] {exc}")
    except ApiError as exc:
        _err.print(f"[red]error:[/] {exc}")
    return EXIT_ERROR


def ui_url(api_url: str, run_id: str) -> str | None:
    """The Prefect UI page of a flow run, for a self-hosted server or Prefect Cloud."""
    base = api_url.rstrip("/")
    if "api.prefect.cloud" in base and "/accounts/" in base:
        path = base.split("/api/", 1)[1]  # accounts/<a>/workspaces/<w>
        path = path.replace("accounts/", "account/", 1).replace("workspaces/", "workspace/", 1)
        return f"https://app.prefect.cloud/{path}/runs/flow-run/{run_id}"
    if base.endswith("/api"):
        return f"{base[: -len('/api')]}/runs/flow-run/{run_id}"
    return None


def _state_text(run: RunInfo) -> Text:
    kind = run.current_type.value if run.current_type else "UNKNOWN"
    return Text(run.state_label, style=_STATE_STYLE.get(kind, ""))


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _bad(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)


# -- flow-agent run --------------------------------------------------------------------------------


class _StatusLine:
    """One live line while watching: spinner, run, state, time in it, total time."""

    _FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.state = Text("Scheduled", style="dim")
        self.state_since = self.started
        self.message = ""

    def update(self, run: RunInfo) -> None:
        text = _state_text(run)
        if text.plain != self.state.plain:
            self.state, self.state_since = text, time.monotonic()
        self.message = (run.state.message or "") if run.state else ""

    def __rich__(self) -> Text:
        now = time.monotonic()
        frame = self._FRAMES[int(now * 8) % len(self._FRAMES)]
        line = Text.assemble(
            (f"{frame} ", "cyan"),
            self.label,
            " · ",
            self.state,
            f" for {_seconds(now - self.state_since)} · {_seconds(now - self.started)} in all",
        )
        if self.message:
            line.append(f" · {self.message[:80]}", style="dim")
        return line


def _seconds(value: float) -> str:
    value = int(value)
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def _read_params(params_json: Path | None, param: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            raw = sys.stdin.read() if str(params_json) == "-" else params_json.read_text()
            loaded = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise _bad(f"--params-json {params_json}: {exc}") from None
        if not isinstance(loaded, dict):
            raise _bad(f"--params-json {params_json}: must hold a JSON object of parameter names to values")
        params.update(loaded)
    try:
        params.update(parse_assignments(param, what="--param"))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return params


def run_command(
    deployment: Annotated[str, typer.Argument(help="'flow-name/deployment-name' or the deployment's id.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="A parameter, KEY=VALUE (VALUE is JSON if it parses). Repeatable."
        ),
    ] = None,
    params_json: Annotated[
        Path | None,
        typer.Option("--params-json", help="A JSON file of parameters ('-' for stdin); --param wins."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Start at this time: ISO 8601 (local time without offset) or HH:MM."),
    ] = None,
    in_: Annotated[
        str | None, typer.Option("--in", help="Start after this long: 30s, 5m, 5h, 7d, 1h30m.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", "-k", help="Runs triggered with the same key are one run."),
    ] = None,
    job_var: Annotated[
        list[str] | None,
        typer.Option(
            "--job-var",
            "-j",
            help="Infrastructure override for this run, KEY=VALUE (env.FOO=bar). Repeatable.",
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="A tag for the run. Repeatable.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The run's name.")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="Another work queue of the pool.")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Wait for the run to end; exit with its outcome.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", help="Watch at most this many seconds (implies --watch); exit 3 if not done."
        ),
    ] = None,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between status reads.")
    ] = 2.0,
) -> None:
    """Trigger a run of a deployment; with --watch, follow it and exit with its outcome.

    Exit codes:

    0 created (without --watch) or ended COMPLETED

    1 ended FAILED or CRASHED

    2 ended CANCELLED

    3 still not finished when --timeout ran out

    4 could not trigger or watch it (unknown deployment, server error)
    """
    parameters = _read_params(params_json, param or [])
    try:
        job_variables = parse_assignments(job_var or [], what="--job-var") if job_var else None
        scheduled = parse_start(at, in_)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if timeout is not None and timeout < 0:
        raise _bad("--timeout cannot be negative")
    following = watch or timeout is not None

    async def main(client: PrefectClient) -> int:
        run = await arun_deployment(
            deployment,
            parameters=parameters,
            scheduled_time=scheduled,
            timeout=0,
            idempotency_key=idempotency_key,
            tags=tag or None,
            job_variables=job_variables,
            flow_run_name=name,
            work_queue_name=queue,
            client=client,
        )
        _out.print(
            f"Flow run [bold]{run.name}[/] ({run.id}) of {deployment}: {run.state_label}"
            + (f", starts {_when(run.expected_start_time)}" if scheduled is not None else "")
        )
        if url := ui_url(client.api_url, run.id):
            _err.print(f"[dim]{url}[/]")
        if not following:
            return 0
        final = await _watch(client, run, limit=timeout, poll_interval=poll_interval)
        line = Text.assemble(f"Flow run {final.name} ({final.id}) ", _state_text(final))
        if final.state and final.state.message:
            line.append(f": {final.state.message}")
        code = exit_code_for(final)
        if not final.is_final:
            line.append(f" (still not finished after {timeout:g}s)" if timeout is not None else "")
        _out.print(line)
        return code

    raise typer.Exit(_run(main))


async def _watch(
    client: PrefectClient, run: RunInfo, *, limit: float | None, poll_interval: float
) -> RunInfo:
    status = _StatusLine(f"{run.name}")
    status.update(run)
    if _err.is_terminal:
        with Live(status, console=_err, refresh_per_second=8, transient=True):
            return await wait_for_flow_run(
                client,
                run.id,
                timeout=limit,
                poll_interval=poll_interval,
                on_update=status.update,
                last=run,
            )

    seen = [run.state_label]

    def changed(current: RunInfo) -> None:
        if current.state_label != seen[-1]:
            seen.append(current.state_label)
            _err.print(f"{datetime.now().strftime('%H:%M:%S')} {current.name}: {current.state_label}")

    return await wait_for_flow_run(
        client, run.id, timeout=limit, poll_interval=poll_interval, on_update=changed, last=run
    )


# -- flow-agent flow-runs ---------------------------------------------------------------------------

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
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Allow acting without any filter (every run).")]


def _filter(
    state: list[str] | None,
    deployment: list[str] | None,
    flow: list[str] | None,
    tag: list[str] | None,
    pool: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
) -> RunFilter:
    try:
        older = parse_duration(older_than) if older_than else None
        newer = parse_duration(newer_than) if newer_than else None
    except ValueError as exc:
        raise _bad(str(exc)) from None
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
            _state_text(run),
            _when(run.expected_start_time),
            run.work_pool_name or "",
        )
    if show is not None and len(runs) > show:
        table.caption = f"... and {len(runs) - show} more"
    return table


def _print_table(table: Table) -> None:
    # piped into grep or a file: full ids on one line, whatever COLUMNS says
    console = _out if _out.is_terminal else Console(highlight=False, width=220)
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

    raise typer.Exit(_run(main))


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
        raise _bad(f"no filter given: this would {verb} every flow run; add filters, or --all if you mean it")

    async def main(client: PrefectClient) -> int:
        selection = await select_flow_runs(client, flt, limit=limit, only=only)
        if not selection.runs:
            _out.print(f"No flow runs to {verb}.")
            return 0
        _print_table(await _table(client, selection.runs, title=_matched(selection), show=20))
        if dry_run:
            _out.print(f"Dry run: would {verb} {len(selection.runs)} flow run(s); nothing changed.")
            return 0
        if not yes and not await anyio.to_thread.run_sync(
            lambda: typer.confirm(f"{verb.capitalize()} {len(selection.runs)} flow run(s)?", default=False)
        ):
            _out.print("Nothing changed.")
            return 1
        with Progress(
            SpinnerColumn(),
            TextColumn(f"{verb.capitalize()} flow runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err,
        ) as progress:
            task = progress.add_task(verb, total=len(selection.runs))
            result = await action(client, selection, on_progress=lambda n: progress.advance(task, n))
        return _report(verb, result, len(selection.runs))

    return _run(main)


def _report(verb: str, result: BatchResult, selected: int) -> int:
    past = {"delete": "Deleted", "cancel": "Cancelled"}[verb]
    how = "" if result.used_bulk else " (one by one: the server has no bulk endpoint)"
    _out.print(f"{past} {len(result.done)} of {selected} flow run(s){how}.")
    if result.skipped:
        _out.print(f"Skipped {result.skipped}: they changed or disappeared since they were listed.")
    for run_id, reason in result.failed[:20]:
        _err.print(f"[yellow]not {past.lower()}[/] {run_id}: {reason}")
    if result.error:
        _err.print(f"[red]error:[/] stopped early, the server did not answer: {result.error}")
    return 1 if result.failed or result.error else 0


@flow_runs_app.command("delete")
def delete(
    state: StateOpt = None,
    deployment: DeploymentOpt = None,
    flow: FlowOpt = None,
    tag: TagOpt = None,
    pool: PoolOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Delete at most this many.")
    ] = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    everything: AllOpt = False,
) -> None:
    """Delete the flow runs matching the filters (50 per request), after showing them."""
    flt = _filter(state, deployment, flow, tag, pool, older_than, newer_than)
    code = _act(
        "delete",
        flt,
        limit=limit,
        dry_run=dry_run,
        yes=yes,
        everything=everything,
        only=None,
        action=delete_flow_runs,
    )
    raise typer.Exit(code)


@flow_runs_app.command("cancel")
def cancel(
    state: StateOpt = None,
    deployment: DeploymentOpt = None,
    flow: FlowOpt = None,
    tag: TagOpt = None,
    pool: PoolOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Cancel at most this many.")
    ] = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    everything: AllOpt = False,
) -> None:
    """Cancel the unfinished flow runs matching the filters.

    Scheduled runs become CANCELLED at once; pending and running ones become CANCELLING, and
    the agent serving their pool kills the infrastructure and marks them CANCELLED.
    """
    flt = _filter(state, deployment, flow, tag, pool, older_than, newer_than)
    code = _act(
        "cancel",
        flt,
        limit=limit,
        dry_run=dry_run,
        yes=yes,
        everything=everything,
        only=CANCELLABLE,
        action=cancel_flow_runs,
    )
    raise typer.Exit(code)
