"""`flow-agent run` (`flow-agent flow-runs ls|delete|cancel` lives in `agent.cli.flow_runs`).

Mounted by `agent/cli.py`:

    from agent.cli.runs import flow_runs_app, run_command
    app.command("run")(run_command)
    app.add_typer(flow_runs_app, name="flow-runs")

Exit codes of `flow-agent run` (one table: `agent.orchestrate.parse.EXIT_CODES`):

    0  the run was created (no --watch), or it ended COMPLETED
    1  it ended FAILED or CRASHED
    2  it ended CANCELLED (or is CANCELLING); click also uses 2 for command-line usage errors
    3  --timeout ran out while the run was still scheduled, pending, running or paused
    4  the run could not be created or watched (unknown deployment, server error, bad input)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.text import Text

from agent.api.client import PrefectClient
from agent.api.models import RunInfo
from agent.cli.common import bad, err, out, run_with_client, state_text, when
from agent.cli.flow_runs import flow_runs_app
from agent.orchestrate.parse import exit_code_for, parse_assignments, parse_start
from agent.orchestrate.trigger import arun_deployment
from agent.orchestrate.wait import wait_for_flow_run

__all__ = ["flow_runs_app", "run_command", "ui_url"]


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
        text = state_text(run)
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
            raise bad(f"--params-json {params_json}: {exc}") from None
        if not isinstance(loaded, dict):
            raise bad(f"--params-json {params_json}: must hold a JSON object of parameter names to values")
        params.update(loaded)
    try:
        params.update(parse_assignments(param, what="--param"))
    except ValueError as exc:
        raise bad(str(exc)) from None
    return params


DeploymentArg = Annotated[str, typer.Argument(help="'flow-name/deployment-name' or the deployment's id.")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="A parameter, KEY=VALUE (VALUE is JSON if it parses). Repeatable."),
]
ParamsJsonOpt = Annotated[
    Path | None,
    typer.Option("--params-json", help="A JSON file of parameters ('-' for stdin); --param wins."),
]
AtOpt = Annotated[
    str | None,
    typer.Option("--at", help="Start at this time: ISO 8601 (local time without offset) or HH:MM."),
]
InOpt = Annotated[str | None, typer.Option("--in", help="Start after this long: 30s, 5m, 5h, 7d, 1h30m.")]
IdempotencyOpt = Annotated[
    str | None,
    typer.Option("--idempotency-key", "-k", help="Runs triggered with the same key are one run."),
]
JobVarOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--job-var", "-j", help="Infrastructure override for this run, KEY=VALUE (env.FOO=bar). Repeatable."
    ),
]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag for the run. Repeatable.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="The run's name.")]
QueueOpt = Annotated[str | None, typer.Option("--queue", help="Another work queue of the pool.")]
WatchOpt = Annotated[
    bool, typer.Option("--watch", "-w", metavar="", help="Wait for the run to end; exit with its outcome.")
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Watch at most this many seconds (implies --watch); exit 3 if not done. "
        "--timeout 0 looks once and exits 3 unless the run already ended (unlike "
        "run_deployment(timeout=0)); to not wait at all, give neither --watch nor --timeout.",
    ),
]
PollOpt = Annotated[float, typer.Option("--poll-interval", help="Seconds between status reads.")]


def run_command(
    deployment: DeploymentArg,
    param: ParamOpt = None,
    params_json: ParamsJsonOpt = None,
    at: AtOpt = None,
    in_: InOpt = None,
    idempotency_key: IdempotencyOpt = None,
    job_var: JobVarOpt = None,
    tag: TagOpt = None,
    name: NameOpt = None,
    queue: QueueOpt = None,
    watch: WatchOpt = False,
    timeout: TimeoutOpt = None,
    poll_interval: PollOpt = 2.0,
) -> None:
    """Trigger a run of a deployment; with --watch, follow it and exit with its outcome.

    Exit codes:

    0 created (without --watch) or ended COMPLETED

    1 ended FAILED or CRASHED

    2 ended CANCELLED

    3 still not finished when --timeout ran out

    4 could not trigger or watch it (unknown deployment, server error)
    """
    try:
        job_variables = parse_assignments(job_var or [], what="--job-var") if job_var else None
        scheduled = parse_start(at, in_)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if timeout is not None and timeout < 0:
        raise bad("--timeout cannot be negative")
    trigger: dict[str, Any] = dict(
        parameters=_read_params(params_json, param or []),
        scheduled_time=scheduled,
        idempotency_key=idempotency_key,
        tags=tag or None,
        job_variables=job_variables,
        flow_run_name=name,
        work_queue_name=queue,
    )
    following = watch or timeout is not None

    async def main(client: PrefectClient) -> int:
        run = await arun_deployment(deployment, timeout=0, client=client, **trigger)
        out.print(
            f"Flow run [bold]{run.name}[/] ({run.id}) of {deployment}: {run.state_label}"
            + (f", starts {when(run.expected_start_time)}" if scheduled is not None else "")
        )
        if url := ui_url(client.api_url, run.id):
            err.print(f"[dim]{url}[/]")
        if not following:
            return 0
        return await _follow(client, run, timeout, poll_interval)

    raise typer.Exit(run_with_client(main))


async def _follow(client: PrefectClient, run: RunInfo, limit: float | None, poll_interval: float) -> int:
    """Watch the run to its end (or `limit` seconds), print how it ended, and its exit code."""
    final = await _watch(client, run, limit=limit, poll_interval=poll_interval)
    line = Text.assemble(f"Flow run {final.name} ({final.id}) ", state_text(final))
    if final.state and final.state.message:
        line.append(f": {final.state.message}")
    if not final.is_final and limit is not None:
        line.append(f" (still not finished after {limit:g}s)")
    out.print(line)
    return exit_code_for(final)


async def _watch(
    client: PrefectClient, run: RunInfo, *, limit: float | None, poll_interval: float
) -> RunInfo:
    status = _StatusLine(f"{run.name}")
    status.update(run)
    if err.is_terminal:
        with Live(status, console=err, refresh_per_second=8, transient=True):
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
            err.print(f"{datetime.now().strftime('%H:%M:%S')} {current.name}: {current.state_label}")

    return await wait_for_flow_run(
        client, run.id, timeout=limit, poll_interval=poll_interval, on_update=changed, last=run
    )
