"""The `flow-agent` command line: builds Settings once and hands over to the app.

This module and `settings.py` are the only places that read the process environment.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
import typer.core

from agent import __version__
from agent.cli.common import load_settings
from agent.observe.logging import configure_logging
from agent.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="flow-agent",
    help="A lean, fast, crash-safe agent for Prefect servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EMBEDDED_POOL = "local"


def _no_flag_type(display: Any) -> Any:
    """Typer labels every on/off flag `<bool>` in --help (`--help <bool>` too), which reads
    as if the flag took a value; a flag shows no type."""

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else display(self, ctx)

    return display_type_rich


typer.core.TyperOption.display_type_rich = _no_flag_type(  # type: ignore[method-assign]
    typer.core.TyperOption.display_type_rich
)


def _configure_logs(settings: Settings) -> None:
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())


def _run_agent(settings: Settings) -> int:
    from agent.observe.health import HealthBindError
    from agent.observe.sdnotify import SystemdNotifier
    from agent.runtime.app import serve

    notifier = SystemdNotifier.from_environ(os.environ, pid=os.getpid())
    try:
        return anyio.run(lambda: serve(settings, environ=dict(os.environ), notifier=notifier))
    except BaseExceptionGroup as group:
        # the health server could not listen: it fails at start, before any run is claimed
        bind = group.subgroup(HealthBindError)
        if bind is None or bind.split(HealthBindError)[1] is not None:
            raise
        typer.echo(f"error: {_first(bind)}", err=True)
        return 2


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


PoolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pool",
        "-p",
        help="Work pool to serve (repeatable). (env: FLOW_AGENT_POOLS, comma-separated; "
        "default: local, with the embedded server)",
    ),
]
QueueOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue", "-q", help="Only these queues (repeatable). (env: FLOW_AGENT_QUEUES; default: all)"
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(help="Most flow runs in flight at once. (env: FLOW_AGENT_LIMIT; default: no limit)"),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        help="Worker name shown in the Prefect UI. (env: FLOW_AGENT_NAME; default: flow-agent-HOSTNAME)"
    ),
]
PollOpt = Annotated[
    float | None, typer.Option(help="Seconds between polls. (env: FLOW_AGENT_POLL_INTERVAL; default: 5)")
]
HealthPortOpt = Annotated[
    int | None,
    typer.Option(
        help="Serve /healthz, /readyz and /metrics on this port. (env: FLOW_AGENT_HEALTH_PORT; default: off)"
    ),
]
LogFormatOpt = Annotated[
    str | None, typer.Option(help="auto, json or console. (env: FLOW_AGENT_LOG_FORMAT; default: auto)")
]
CreatePoolsOpt = Annotated[
    bool | None,
    typer.Option(
        "--create-pools/--no-create-pools",
        metavar="",
        help="Create missing pools. (env: FLOW_AGENT_CREATE_POOLS; default: create)",
    ),
]


@app.command()
def start(
    pool: PoolOpt = None,
    queue: QueueOpt = None,
    limit: LimitOpt = None,
    name: NameOpt = None,
    poll_interval: PollOpt = None,
    health_port: HealthPortOpt = None,
    log_format: LogFormatOpt = None,
    create_pools: CreatePoolsOpt = None,
) -> None:
    """Serve work pools: claim their scheduled flow runs and launch them."""
    settings = load_settings(
        pools=pool,
        queues=queue,
        limit=limit,
        name=name,
        poll_interval=poll_interval,
        health_port=health_port,
        log_format=log_format,
        create_pools=create_pools,
    )
    _configure_logs(settings)
    if settings.api_url is not None:
        raise typer.Exit(_run_agent(settings))
    from agent.cli.embedded import ServerExtraMissing, ServerStartError, embedded_server

    try:
        with embedded_server(
            data_dir=settings.data_dir,
            port=settings.server_port,
            python=settings.python,
            echo=lambda line: typer.echo(line, err=True),
        ) as api_url:
            pools = settings.pools or [EMBEDDED_POOL]
            local = settings.model_copy(update={"api_url": api_url, "pools": pools})
            typer.echo(f"Serving work pool(s) {', '.join(pools)} on {api_url}", err=True)
            status = _run_agent(local)
    except (ServerExtraMissing, ServerStartError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


@app.command()
def demo() -> None:
    """Start a local Prefect server, deploy the examples, run them and show how each ended."""
    settings = load_settings()
    _configure_logs(settings)
    from agent.cli.demo import run_demo

    raise typer.Exit(run_demo(settings))


@app.command()
def render(
    flow_run_id: Annotated[str | None, typer.Argument(help="A flow run to render.")] = None,
    deployment: Annotated[
        str | None, typer.Option(help="Render a preview run of 'flow-name/deployment-name'.")
    ] = None,
    job_var: Annotated[
        list[str] | None, typer.Option("--job-var", help="key=value job variable (JSON values allowed).")
    ] = None,
    as_json: Annotated[
        bool | None, typer.Option("--json/--summary", metavar="", help="Force the output format.")
    ] = None,
    show_inherited: Annotated[
        bool, typer.Option("--show-inherited", help="Name the variables inherited from this environment.")
    ] = False,
) -> None:
    """Print the exact payload a run would launch with (secrets masked), launching nothing."""
    if (flow_run_id is None) == (deployment is None):
        typer.echo("error: give a FLOW_RUN_ID or --deployment NAME (one of them)", err=True)
        raise typer.Exit(2)
    if flow_run_id is not None and not _is_uuid(flow_run_id):
        typer.echo(
            f"error: {flow_run_id!r} is not a flow run id (a UUID); `flow-agent flow-runs ls` lists them",
            err=True,
        )
        raise typer.Exit(2)
    settings = load_settings()
    if settings.api_url is None:
        typer.echo("error: render needs a server: set PREFECT_API_URL", err=True)
        raise typer.Exit(2)
    from agent.api.errors import ApiError
    from agent.cli.common import explain, quiet_logs, retrying_visibly
    from agent.cli.render import RenderError, summary
    from agent.cli.render import render as render_run
    from agent.retry import Interrupted

    quiet_logs(settings)

    async def go() -> dict[str, Any]:
        with retrying_visibly(settings):
            return await render_run(
                settings,
                environ=dict(os.environ),
                flow_run_id=flow_run_id,
                deployment=deployment,
                job_vars=variables,
                show_inherited=show_inherited,
            )

    try:
        variables = parse_job_vars(job_var or [])
        document = anyio.run(go)
    except (RenderError, ValueError, ApiError, Interrupted, KeyboardInterrupt) as exc:
        typer.echo(f"error: {explain(exc, settings.api_url)}", err=True)
        raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None
    use_json = as_json if as_json is not None else not sys.stdout.isatty()
    typer.echo(json.dumps(document, indent=2, sort_keys=True) if use_json else summary(document))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def parse_job_vars(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that parses as JSON is taken as JSON (numbers, objects)."""
    variables: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--job-var {pair!r} must look like key=value")
        try:
            variables[key] = json.loads(value)
        except ValueError:
            variables[key] = value
    return variables


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"flow-agent {__version__} (Python {sys.version.split()[0]}, {Path(sys.executable)})")


def _mount() -> None:
    from agent.cli.blocks import blocks_app, deployment_app
    from agent.cli.infra import infra_app
    from agent.cli.runs import flow_runs_app, run_command
    from agent.cli.status import status_command
    from agent.cli.why import why_command

    app.command("run")(run_command)
    app.command("why")(why_command)
    app.command("status")(status_command)
    app.add_typer(flow_runs_app, name="flow-runs")
    app.add_typer(blocks_app, name="blocks")
    app.add_typer(deployment_app, name="deployment")
    app.add_typer(infra_app, name="infra")


_mount()


def main() -> None:
    app()
