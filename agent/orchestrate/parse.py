"""Exit codes for a run's outcome, and the pure parsing shared by the CLI and library callers:
durations (`5h`, `1h30m`), start times (`--at` / `--in`) and `KEY=VALUE` assignments."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from agent.api.models import RunInfo

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NOT_FINISHED",
    "as_utc",
    "exit_code_for",
    "parse_assignments",
    "parse_duration",
    "parse_start",
]

# -- exit codes: one table for the CLI and for scripts -------------------------------------------

EXIT_CODES: Mapping[str, int] = {
    "COMPLETED": 0,
    "FAILED": 1,
    "CRASHED": 1,
    "CANCELLED": 2,
    "CANCELLING": 2,
}
EXIT_NOT_FINISHED = 3  # --timeout ran out and the run is still scheduled/pending/running/paused
EXIT_ERROR = 4  # the run could not be triggered or watched (deployment not found, server error)


def exit_code_for(run: RunInfo) -> int:
    kind = run.current_type
    return EXIT_CODES.get(kind.value if kind else "", EXIT_NOT_FINISHED)


# -- pure parsing (shared by the CLI and library callers) -----------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """`5h`, `90s`, `1h30m`, `7d`, `2w`, or plain seconds (`300`) -> timedelta."""
    value = str(text).strip().lower().replace(" ", "")
    if not value:
        raise ValueError("empty duration: give e.g. 30s, 5m, 5h, 7d or 1h30m")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(
                f"duration {text!r}: use a number with a unit (s, m, h, d, w), e.g. 30s, 5h, 7d, 1h30m"
            ) from None
    if seconds < 0:
        raise ValueError(f"duration {text!r} is negative")
    return timedelta(seconds=seconds)


def parse_start(
    at: str | None = None, in_: str | None = None, *, now: datetime | None = None
) -> datetime | None:
    """When a run should start: `--at TIME` or `--in DURATION` (not both); None means now.

    `at` is ISO 8601 (`2030-01-02T03:04:05+00:00`, `2030-01-02 03:04`; without an offset it is
    local time) or a clock time `HH:MM[:SS]` (the next such time, today or tomorrow).
    The result is timezone-aware (UTC).
    """
    if at and in_:
        raise ValueError("give either --at or --in, not both")
    current = (now or datetime.now(UTC)).astimezone(UTC)
    if in_:
        return current + parse_duration(in_)
    if not at:
        return None
    text = at.strip()
    try:
        clock = time.fromisoformat(text) if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text) else None
    except ValueError:
        clock = None
    if clock is not None:
        local_now = current.astimezone()
        candidate = local_now.replace(
            hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
        )
        if candidate <= local_now:
            candidate += timedelta(days=1)
        return candidate.astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"time {at!r}: use ISO 8601 (2030-01-02T03:04:05Z, '2030-01-02 03:04') or HH:MM"
        ) from None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are local time (like `datetime.now()`); the result is UTC."""
    return moment.astimezone(UTC)


def parse_assignments(items: Iterable[str], *, what: str = "--param") -> dict[str, Any]:
    """`["n=5", "name=ada", "xs=[1,2]", "s=\"5\""]` -> {"n": 5, "name": "ada", "xs": [1, 2], "s": "5"}.

    A value that parses as JSON is taken as JSON; anything else is a string (as
    `prefect deployment run --param` does). Keys may contain dots (`env.FOO=bar` for job
    variables, which the agent expands).
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: write it as KEY=VALUE, e.g. {what} name=ada")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        result[key] = value
    return result
