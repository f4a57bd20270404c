"""What `flow-agent run` and `flow-agent flow-runs` share: the consoles, a client made from the
agent's settings, running a command's coroutine with error handling, and how runs are shown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from agent.api.client import PrefectClient
from agent.api.errors import ApiError
from agent.api.models import RunInfo
from agent.orchestrate.parse import EXIT_ERROR
from agent.orchestrate.trigger import client_from_settings
from agent.settings import Settings

__all__ = ["bad", "err", "load_settings", "out", "run_with_client", "state_text", "when"]

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

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


def load_settings(**overrides: Any) -> Settings:
    """Flags win over FLOW_AGENT_* and PREFECT_* variables; a bad value exits with its name."""
    given = {k: v for k, v in overrides.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            env = f"FLOW_AGENT_{field.upper()}"
            typer.echo(
                f"error: invalid setting {field!r} (flag --{field.replace('_', '-')} or {env}): "
                f"{error['msg']}",
                err=True,
            )
        raise typer.Exit(2) from None


def _client() -> PrefectClient:
    from agent.observe.logging import configure_logging

    settings = load_settings()
    # the retry policy's INFO lines would break the status line; warnings still show
    configure_logging(level="WARNING", fmt=settings.log_format, secrets=settings.secrets())
    return client_from_settings(settings)


def run_with_client(main: Callable[[PrefectClient], Awaitable[int]]) -> int:
    """Run `main` with a client; server and input errors end the command with EXIT_ERROR."""
    client = _client()

    async def go() -> int:
        async with client:
            return await main(client)

    try:
        return anyio.run(go)
    except (ValueError, ApiError) as exc:  # DeploymentNotFound is an ApiError
        err.print(f"[red]error:[/] {exc}")
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
