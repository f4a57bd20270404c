"""`flow-agent infra run|render|logs|wait|kill`: a command run directly on a block's (or a
work pool's) infrastructure, with no flow run.

    flow-agent infra run cloud-run-job/nightly --env MODE=full -- dbt run
    flow-agent infra run --pool k8s --job-var namespace=jobs -- ./migrate up
    ID=$(flow-agent infra run process/local --detach -- ./long-task)
    flow-agent infra logs -f "$ID"; flow-agent infra wait "$ID"; flow-agent infra kill "$ID"

Exit codes: the workload's own (a signal N as 128+N); 1 when it has none (never started,
lost); 125 when flow-agent could not build or launch it (bad block, bad variable, platform
error: one line says which field and the fix); 130 after Ctrl-C (the workload is killed and
cleaned up first).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, TypeVar

import anyio
import typer

from agent.cli.common import explain, load_settings, quiet_logs
from agent.settings import Settings

__all__ = ["infra_app"]

infra_app = typer.Typer(
    help="Run a command directly on a block's or a work pool's infrastructure (no flow run).",
    no_args_is_help=True,
)

EXIT_LAUNCH: Final = 125
EXIT_INTERRUPTED: Final = 130
T = TypeVar("T")

TargetArg = Annotated[
    str | None,
    typer.Argument(help="TYPE/BLOCK, e.g. process/local or cloud-run-job/nightly.", show_default=False),
]
CommandArg = Annotated[list[str] | None, typer.Argument(help="The command, after --.", show_default=False)]
PoolOpt = Annotated[
    str | None, typer.Option("--pool", help="Use this work pool's base job template instead.")
]
ImageOpt = Annotated[str | None, typer.Option("--image", help="The image to run (container kinds).")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="K=V for the workload (repeatable).")]
JobVarOpt = Annotated[
    list[str] | None,
    typer.Option("--job-var", help="key=value job variable (JSON values allowed; repeatable)."),
]
IdArg = Annotated[str, typer.Argument(help="The infrastructure id `infra run --detach` printed.")]


def _fail(message: str, code: int = EXIT_LAUNCH) -> typer.Exit:
    from agent.observe.logging import REDACTOR

    typer.echo(f"error: {REDACTOR.mask_text(message)}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    settings = load_settings()
    quiet_logs(settings)
    return settings


def _request(
    target: str | None,
    pool: str | None,
    command: list[str] | None,
    image: str | None,
    env: list[str] | None,
    job_var: list[str] | None,
) -> tuple[Any, Any]:
    from agent.cli import parse_job_vars
    from agent.direct import Request, Target

    argv = list(command or [])
    if pool is not None:
        if target is not None:  # `--pool P -- cmd`: click took the command's first word
            argv.insert(0, target)
        where = Target.pool(pool)
    elif target is None:
        raise _fail("give TYPE/BLOCK or --pool POOL, e.g. `flow-agent infra run process/local -- echo hi`", 2)
    else:
        where = Target.block(target)
    return where, Request(argv, _pairs(env or [], "--env"), image, parse_job_vars(job_var or []))


def _pairs(pairs: list[str], flag: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # the value is never echoed: it may be a secret typed without its name
            raise ValueError(f"{flag} takes NAME=value; one of them has no name or no '='")
        found[key] = value
    return found


def _session(settings: Settings) -> Any:
    """A direct-run session whose server calls retry for a short while, and say so."""
    from agent.cli.common import retrying_visibly
    from agent.direct import DirectSession

    return DirectSession(settings, environ=dict(os.environ), server_calls=lambda: retrying_visibly(settings))


def _print_line(line: str) -> None:
    from agent.observe.logging import REDACTOR

    sys.stdout.write(REDACTOR.mask_text(line) + "\n")
    sys.stdout.flush()


def _errors() -> tuple[type[BaseException], ...]:
    from agent.api.errors import ApiError
    from agent.backends.base import BackendError
    from agent.direct import DirectError
    from agent.infra.templating import InfraError
    from agent.retry import Interrupted

    return (DirectError, InfraError, ApiError, BackendError, ValueError, Interrupted)


def _run(settings: Settings, work: Callable[[], Awaitable[T]]) -> tuple[T | None, int | None]:
    """Run `work`; SIGINT or SIGTERM cancels it (the work kills what it started). Returns
    (its result, None) or (None, the signal); an error is one line and EXIT_LAUNCH."""
    try:
        return anyio.run(_cancellable, work)
    except _errors() as exc:
        raise _fail(explain(exc, settings.api_url or "the local server")) from None


async def _cancellable(work: Callable[[], Awaitable[T]]) -> tuple[T | None, int | None]:
    caught: list[int] = []
    outcome: list[T | BaseException] = []

    async def guarded() -> None:
        try:
            outcome.append(await work())
        except _errors() as exc:  # raised as itself, not inside the task group's group
            outcome.append(exc)
        group.cancel_scope.cancel()

    async def watch() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                caught.append(signum)
                group.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        group.start_soon(guarded)
    if outcome and isinstance(outcome[0], BaseException):
        raise outcome[0]
    return (outcome[0] if outcome else None), (caught[0] if caught else None)  # type: ignore[return-value]


def _finish(result: Any) -> typer.Exit:
    if result.explanation:
        typer.echo(f"flow-agent: {result.explanation}", err=True)
    return typer.Exit(result.exit_code)


@infra_app.command("run")
def run(
    target: TargetArg = None,
    command: CommandArg = None,
    pool: PoolOpt = None,
    image: ImageOpt = None,
    env: EnvOpt = None,
    job_var: JobVarOpt = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Print the infrastructure id and return.")
    ] = False,
) -> None:
    """Run COMMAND on the infrastructure; stream its output; exit with its exit code."""
    settings = _settings()
    try:
        where, request = _request(target, pool, command, image, env, job_var)
    except (ValueError, *_errors()) as exc:
        raise _fail(str(exc), 2) from None
    if detach:
        raise typer.Exit(_detach(settings, where, request))

    async def work() -> Any:
        async with _session(settings) as session:
            return await session.run(where, request, output=_print_line)

    result, caught = _run(settings, work)
    if caught is not None or result is None:
        typer.echo("flow-agent: interrupted; the workload was killed and cleaned up", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise _finish(result)


def _detach(settings: Settings, where: Any, request: Any) -> int:
    import uuid

    from agent.direct import DirectError
    from agent.direct.detach import encode_request, start_follower

    argv = [sys.executable, "-m", "agent", "infra", "follow"]
    try:
        ident = start_follower(argv, encode_request(where, request, str(uuid.uuid4())), os.environ)
    except DirectError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo("flow-agent: interrupted; the launch was stopped", err=True)
        return EXIT_INTERRUPTED
    typer.echo(ident)
    return 0


@infra_app.command("follow", hidden=True)
def follow() -> None:
    """The follower of a detached run (started by `infra run --detach`; request on stdin)."""
    from agent.direct import Result
    from agent.direct.detach import Records, answer, decode_request
    from agent.direct.run import interrupted_result
    from agent.observe.logging import REDACTOR

    settings = _settings()
    where, request, run_id = decode_request(sys.stdin.buffer.read())
    records = Records(settings.state_dir)
    launched: list[str] = []

    def on_launched(ident: str) -> None:
        launched.append(ident)
        records.started(run_id, ident, os.getpid())
        answer(f"id {ident}")

    async def work() -> Any:
        async with _session(settings) as session:
            return await session.run(
                where,
                request,
                output=lambda line: log.write(REDACTOR.mask_text(line) + "\n"),
                on_launched=on_launched,
                run_id=run_id,
            )

    with records.open_log(run_id) as log:
        try:
            result, _caught = anyio.run(_cancellable, work)
        except _errors() as exc:
            message = explain(exc, settings.api_url or "the local server")
            if not launched:
                answer(f"error {message}")
                raise typer.Exit(EXIT_LAUNCH) from None
            result = Result(EXIT_LAUNCH, False, REDACTOR.mask_text(message), launched[0], "lost")
    if not launched:  # stopped before the workload existed: nothing to record
        answer("error interrupted before the workload was launched")
        raise typer.Exit(EXIT_INTERRUPTED)
    records.ended(run_id, result if result is not None else interrupted_result(launched[0]))


def _ident(text: str) -> Any:
    from agent.direct import DirectError
    from agent.direct.session import InfraId

    try:
        return InfraId.parse(text)
    except DirectError as exc:
        raise _fail(str(exc), 2) from None


@infra_app.command("logs")
def logs(
    ident: IdArg,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the workload ends.")
    ] = False,
) -> None:
    """Print a detached run's output (kept on the host that started it)."""
    from agent.direct.detach import Records

    settings = _settings()
    parsed = _ident(ident)
    records = Records(settings.state_dir)
    path = records.log(parsed.run_id)
    if not path.exists():
        raise _fail(
            f"no output of {parsed.run_id} here: a detached run's output is kept under {records.root} "
            "on the host that started it; run `flow-agent infra logs` there",
            1,
        )
    with open(path, encoding="utf-8", errors="replace") as stream:
        while True:
            line = stream.readline()
            if line:
                sys.stdout.write(line)
                continue
            sys.stdout.flush()
            if not follow_ or records.follower(parsed.run_id) is None:
                return
            time.sleep(0.2)


@infra_app.command("wait")
def wait(ident: IdArg, job_var: JobVarOpt = None) -> None:
    """Wait for a detached run's end; exit with its exit code."""
    from agent.cli import parse_job_vars
    from agent.direct.detach import Records

    settings = _settings()
    parsed = _ident(ident)
    records = Records(settings.state_dir)
    while records.follower(parsed.run_id) is not None:  # its follower reports the end
        time.sleep(0.2)
    result = records.result(parsed.run_id)
    if result is None:  # started elsewhere, or its follower died: ask the platform

        async def work() -> Any:
            async with _session(settings) as session:
                return await session.wait(parsed, parse_job_vars(job_var or []))

        result, caught = _run(settings, work)
        if caught is not None or result is None:
            raise typer.Exit(EXIT_INTERRUPTED)
    raise _finish(result)


@infra_app.command("kill")
def kill(ident: IdArg, job_var: JobVarOpt = None) -> None:
    """Kill a detached run's workload and clean up what it made."""
    from agent.cli import parse_job_vars
    from agent.direct.detach import Records

    settings = _settings()
    parsed = _ident(ident)
    records = Records(settings.state_dir)
    follower = records.follower(parsed.run_id)
    if follower is not None:  # it kills and cleans up, as after Ctrl-C
        follower.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.kill_grace + 60
        while records.follower(parsed.run_id) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        typer.echo(f"killed {parsed.run_id}", err=True)
        return

    async def work() -> Any:
        async with _session(settings) as session:
            return await session.kill(parsed, parse_job_vars(job_var or []))

    _outcome, caught = _run(settings, work)
    if caught is not None:
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo(f"killed {parsed.run_id}", err=True)


@infra_app.command("render")
def render(
    target: TargetArg = None,
    command: CommandArg = None,
    pool: PoolOpt = None,
    image: ImageOpt = None,
    env: EnvOpt = None,
    job_var: JobVarOpt = None,
    as_json: Annotated[
        bool | None, typer.Option("--json/--summary", metavar="", help="Force the output format.")
    ] = None,
) -> None:
    """Print the exact payload `infra run` would launch (secrets masked), launching nothing."""
    from agent.cli.infra_render import render_document, summary

    settings = _settings()
    try:
        where, request = _request(target, pool, command, image, env, job_var)
    except (ValueError, *_errors()) as exc:
        raise _fail(str(exc), 2) from None

    async def work() -> Any:
        async with _session(settings) as session:
            return await render_document(session, where, request, environ=os.environ)

    document, caught = _run(settings, work)
    if caught is not None or document is None:
        raise typer.Exit(EXIT_INTERRUPTED)
    use_json = as_json if as_json is not None else not sys.stdout.isatty()
    typer.echo(json.dumps(document, indent=2, sort_keys=True) if use_json else summary(document))
