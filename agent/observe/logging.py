"""structlog setup: one pipeline for every line the agent writes.

Order matters: secrets are masked first, then lines about a run that are marked
`ship=True` are copied to the server's log for that run, then the line is rendered
(JSON when not on a terminal, readable on one) to stderr.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol

import structlog

__all__ = [
    "REDACTOR",
    "LogSink",
    "Redactor",
    "configure_logging",
    "derived_forms",
    "get_logger",
    "set_log_sink",
]


class LogSink(Protocol):
    def add(self, flow_run_id: str, level: int, message: str, timestamp: str) -> None: ...


_MASK = "********"
# Shorter values would mask ordinary words; a secret's pieces shorter than this are left.
_MIN_LEN = 4


def _pieces(secret: str) -> set[str]:
    """The secret's lines, as a process prints it line by line (split at "\\n" and wherever
    `str.splitlines` splits), each also without its surrounding whitespace."""
    pieces = set(secret.split("\n")) | set(secret.splitlines())
    return pieces | {piece.strip() for piece in pieces}


def derived_forms(secret: str) -> set[str]:
    """Every form of `secret` the agent's own formatters can make of it: raw, stripped,
    line by line, JSON-escaped (ASCII or not) and Python-repr-escaped."""
    # a blank piece (an empty line of a key file) would mask every indentation in every
    # log line, and a short one with one visible character ordinary words
    pieces = {
        p
        for p in {secret.strip(), *_pieces(secret)}
        if p.strip() and (len(p) >= 8 or len(p.strip()) >= _MIN_LEN)
    }
    forms = {secret, *pieces}
    for form in list(forms):
        forms.add(json.dumps(form)[1:-1])
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
        forms.add(repr(form)[1:-1])
    return {form for form in forms if len(form) >= _MIN_LEN}


class Redactor:
    """Masks known secret values wherever they appear, in any form the agent makes of them.

    Secrets are registered as they become known (API key at start, resolved block
    secrets per run), so the mask covers values the code never meant to log. The rule
    (ARCHITECTURE.md, "Secrets"): text is masked before it is cut, stripped or encoded,
    and once more at every output boundary; `clip` is the one way to shorten such text.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _MIN_LEN:
            return
        new = derived_forms(secret) - self._forms
        if new:
            self._forms |= new
            # longest first: a whole auth string before its password half, so no
            # "user:********" shows the user
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(form) for form in ordered))

    def mask_text(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(_MASK, text)

    def clip(self, text: str, limit: int) -> str:
        """`text` masked, then cut to `limit` characters: never the other way round."""
        return self.mask_text(text)[:limit]

    def mask(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            return {self.mask(k): self.mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask(v) for v in value)
        if isinstance(value, BaseException):
            return self.mask(str(value))
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if self._pattern is None:
            return event
        return {key: self.mask(value) for key, value in event.items()}


_INTERNAL_KEYS = {"event", "level", "timestamp", "logger", "flow_run_id", "ship", "stream"}


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
            # the boundary: masked as the final text the server receives
            message = REDACTOR.mask_text(f"{event.get('event', '')} {extras}".strip())
            level = logging.getLevelNamesMapping().get(name.upper(), logging.INFO)
            self.sink.add(str(run_id), level, message, str(event.get("timestamp", "")))
        return event


REDACTOR = Redactor()
SHIPPER = _Shipper()


class _MaskedRenderer:
    """The renderer, then the mask once more on the final line (the boundary)."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        line = self._renderer(logger, name, event)
        return REDACTOR.mask_text(line) if isinstance(line, str) else line


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
            _MaskedRenderer(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    return REDACTOR


class _LazyLogger:
    """A logger that takes the logging set-up current at each line, not the one of the time
    it was made: a module-level logger would otherwise keep the pipeline of whoever
    configured logging first, and miss a later level, sink or renderer."""

    __slots__ = ("_bound", "_name")

    def __init__(self, name: str, bound: dict[str, Any]) -> None:
        self._name = name
        self._bound = bound

    def bind(self, **more: Any) -> _LazyLogger:
        return _LazyLogger(self._name, {**self._bound, **more})

    def __getattr__(self, method: str) -> Any:
        return getattr(structlog.get_logger(self._name).bind(logger=self._name, **self._bound), method)


def get_logger(name: str, **bound: Any) -> Any:
    return _LazyLogger(name, bound)


def set_log_sink(sink: LogSink | None) -> None:
    """Where lines marked `ship=True` go (the server's log, once a client exists)."""
    SHIPPER.sink = sink
