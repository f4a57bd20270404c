"""What `flow-agent run` and `flow-agent flow-runs` share: the consoles, a client made from the
agent's settings, running a command's coroutine with error handling, and how runs are shown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import anyio
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from agent.api.client import PrefectClient
from agent.api.errors import ApiError, TransientError
from agent.api.models import RunInfo
from agent.orchestrate.parse import EXIT_ERROR
from agent.orchestrate.trigger import client_from_settings
from agent.retry import Interrupted, retry_scope
from agent.settings import Settings

__all__ = [
    "CLI_RETRY_BUDGET",
    "EXIT_INTERRUPTED",
    "bad",
    "err",
    "explain",
    "load_settings",
    "out",
    "quiet_logs",
    "retrying_visibly",
    "run_with_client",
    "state_text",
    "when",
]

# Not on a terminal, rich would wrap at 80 columns mid-sentence: a log file or a pipe gets
# whole lines (a terminal wraps them itself).
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# A person waits for a command: a server that has not answered in this long is down or
# elsewhere; say so and stop. FLOW_AGENT_RETRY_BUDGET, when set, wins.
CLI_RETRY_BUDGET = 8.0
EXIT_INTERRUPTED = 130

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


# where a command's option is not the field's name (`start --pool` fills `pools`)
_FLAGS = {"pools": "--pool", "queues": "--queue"}


def _flag_for(field: str, offered: Iterable[str]) -> str | None:
    """The command's option for a settings field: only the fields it passes have one."""
    if field not in offered:
        return None
    return _FLAGS.get(field, f"--{field.replace('_', '-')}")


def _env_for(field: str) -> str:
    return "PREFECT_API_URL" if field == "api_url" else f"FLOW_AGENT_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Flags win over FLOW_AGENT_* and PREFECT_* variables; a bad value exits with its name
    (and the flag's, when this command has one)."""
    given = {k: v for k, v in overrides.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            flag = _flag_for(field, overrides)
            where = f"flag {flag} or {_env_for(field)}" if flag else _env_for(field)
            if field == "settings":
                where = "FLOW_AGENT_* variables"
            typer.echo(f"error: invalid setting {field!r} ({where}): {error['msg']}", err=True)
        raise typer.Exit(2) from None


def server_url(settings: Settings) -> str:
    """Where a command talks to: PREFECT_API_URL, else the local server `start` serves."""
    return settings.api_url or f"http://127.0.0.1:{settings.server_port}/api"


def _show_retry(attempt: int, error: BaseException | None, sleep: float) -> None:
    err.print(
        f"[yellow]retrying[/] (attempt {attempt + 1} in {sleep:.1f}s, Ctrl-C stops): {escape(str(error))}"
    )


@contextmanager
def retrying_visibly(settings: Settings) -> Iterator[None]:
    """The calls inside retry for a short while, and say so each time."""
    explicit = "retry_budget" in settings.model_fields_set
    budget = settings.retry_budget if explicit else CLI_RETRY_BUDGET
    with retry_scope(budget=budget, on_retry=_show_retry):
        yield


def explain(exc: BaseException, api_url: str) -> str:
    """One line for what went wrong talking to the server, and what to do about it."""
    if isinstance(exc, TransientError) and exc.status is None:
        return (
            f"no Prefect server answered at {api_url} ({exc}); start one (`flow-agent start`) "
            "or set PREFECT_API_URL to a server that runs"
        )
    if isinstance(exc, TransientError):
        return f"the Prefect server at {api_url} kept failing ({exc}); try again later"
    if isinstance(exc, Interrupted | KeyboardInterrupt):
        return "interrupted"
    return str(exc)


def quiet_logs(settings: Settings) -> None:
    """A command's own lines say what happens; the agent's INFO log lines (the retry policy's
    among them, shown by `retrying_visibly` instead) would break them. Warnings still show."""
    from agent.observe.logging import configure_logging

    configure_logging(level="WARNING", fmt=settings.log_format, secrets=settings.secrets())


def _client() -> tuple[PrefectClient, Settings]:
    settings = load_settings()
    quiet_logs(settings)
    if settings.api_url is None:
        err.print(f"[dim]PREFECT_API_URL is not set: trying the local server at {server_url(settings)}[/]")
    return client_from_settings(settings), settings


def run_with_client(main: Callable[[PrefectClient], Awaitable[int]]) -> int:
    """Run `main` with a client; server and input errors end the command with EXIT_ERROR."""
    client, settings = _client()

    async def go() -> int:
        async with client:
            with retrying_visibly(settings):
                return await main(client)

    try:
        return anyio.run(go)
    except KeyboardInterrupt:
        err.print("[red]error:[/] interrupted")
        return EXIT_INTERRUPTED
    except (ValueError, ApiError, Interrupted) as exc:  # DeploymentNotFound is an ApiError
        err.print(f"[red]error:[/] {escape(explain(exc, client.api_url))}")
    return EXIT_ERROR


def state_text(run: RunInfo) -> Text:
    kind = run.current_type.value if run.current_type else "UNKNOWN"
    return Text(run.state_label, style=_STATE_STYLE.get(kind, ""))


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def bad(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)
