"""structlog setup: one pipeline for every line the agent writes.

Order matters: secrets are masked first, then lines about a run that are marked
`ship=True` are copied to the server's log for that run, then the line is rendered
(JSON when not on a terminal, readable on one) to stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol

import structlog

__all__ = ["LogSink", "Redactor", "configure_logging", "get_logger", "set_log_sink"]

_MASK = "********"


class LogSink(Protocol):
    def add(self, flow_run_id: str, level: int, message: str, timestamp: str) -> None: ...


class Redactor:
    """Masks known secret values wherever they appear in a log line.

    Secrets are registered as they become known (API key at start, resolved block
    secrets per run), so the mask covers values the code never meant to log.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        # very short values would mask ordinary words; nobody's secret is 3 characters
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, _MASK)
            return value
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask(v) for v in value)
        if isinstance(value, BaseException):
            return self.mask(str(value))
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if not self._secrets:
            return event
        return {key: self.mask(value) for key, value in event.items()}


_INTERNAL_KEYS = {"event", "level", "timestamp", "logger", "flow_run_id", "ship"}


class _Shipper:
    """Copies lines marked `ship=True` that name a flow run to the server sink."""

    def __init__(self) -> None:
        self.sink: LogSink | None = None

    def __call__(self, _logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        ship = event.pop("ship", False)
        run_id = event.get("flow_run_id")
        if ship and run_id and self.sink is not None:
            extras = " ".join(
                f"{k}={v}" for k, v in event.items() if k not in _INTERNAL_KEYS and v is not None
            )
            message = f"{event.get('event', '')} {extras}".strip()
            level = logging.getLevelNamesMapping().get(name.upper(), logging.INFO)
            self.sink.add(str(run_id), level, message, str(event.get("timestamp", "")))
        return event


REDACTOR = Redactor()
SHIPPER = _Shipper()


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # sys.stderr as it is when the line is written, not when logging was configured: an
    # embedding program (a test runner, a CLI runner) may have swapped it meanwhile.
    return structlog.PrintLogger(sys.stderr)


def configure_logging(
    *,
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    sink: LogSink | None = None,
) -> Redactor:
    """Configure the process-wide pipeline; returns the redactor so callers can add secrets."""
    for secret in secrets:
        REDACTOR.add(secret)
    SHIPPER.sink = sink
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            SHIPPER,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    return REDACTOR


def get_logger(name: str, **bound: Any) -> Any:
    return structlog.get_logger(name).bind(logger=name, **bound)


def set_log_sink(sink: LogSink | None) -> None:
    """Where lines marked `ship=True` go (the server's log, once a client exists)."""
    SHIPPER.sink = sink
