"""A container's output, read from ACI's container logs API and emitted once, in order.

ACI keeps a container's log for as long as its group exists and answers it whole (up to
4 MB) or as its last `tail` lines (`containers.list_logs`), with `timestamps=true` putting
each line's RFC 3339 time in front of it. There is no offset or token to resume from, so
each read asks for the last lines (a window sized to what the last read brought, from
`TAIL_MIN`; a full window that does not reach back to the cursor is asked again, larger, up
to `TAIL_MAX`: the memory bound) and the cursor is the newest emitted line's time plus how
many lines of that same instant were emitted: a line older than the cursor, or one of the
instant's lines already counted, was emitted before. Lines of the same instant are told
apart by their order, which the log keeps.

Reads run in the watch engine's round (`AciPlatform.read`, after the group's status, so a
read after a Terminated status holds the last lines) and once more before the group is
deleted (`drain`). A failed read never touches the run: it is said once in the agent log,
with the fix when it is a refusal (which also ends further reads); a transient failure is
retried on the next round, and nothing is lost as long as the container writes fewer than
`TAIL_MAX` lines between two reads (more is said once too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final

from agent.backends.aci.azure import GroupRef
from agent.backends.base import BackendError, InfrastructureNotFound, OutputSink, sent
from agent.backends.sdk import SdkCalls
from agent.observe.logging import REDACTOR, get_logger
from agent.retry import Retryable

__all__ = ["TAIL_MAX", "TAIL_MIN", "Output", "fresh_lines"]

TAIL_MIN: Final = 200  # lines a read asks for at least (Prefect's worker asks for 100)
TAIL_MAX: Final = 10_000  # lines a read asks for at most: what one read may hold in memory
_STAMP: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\d*(Z|[+-]\d\d:?\d\d)(?: |$)")
_FIX: Final = (
    "give the agent's Azure identity the action Microsoft.ContainerInstance/containerGroups/containers/"
    "logs/read (in the Contributor role) on the resource group"
)
log = get_logger("agent.backends.aci")

Cursor = tuple[int, int]  # (the newest emitted line's time in ns, lines of that instant emitted)


@dataclass
class Output:
    """The output of one watched group's container: where it goes and how far it got."""

    emit: OutputSink
    container: str = ""  # the container's name, learnt from the payload or the group
    cursor: Cursor | None = None
    warned: bool = False  # the agent log said once that output is unavailable
    stopped: bool = False  # refused (or the sink failed): no more reads
    lost_said: bool = False
    tail: int = TAIL_MIN  # the next read's window

    async def follow(self, sdk: SdkCalls, client: Any, ref: GroupRef, run_id: str, *, final: bool) -> None:
        """Emit the lines written since the last read. `final`: the container has ended and
        this is the last read, so a transient failure is retried with the agent's policy."""
        if self.stopped or not self.container:
            return
        try:
            lines, short = await self._window(sdk, client, ref, final)
        except InfrastructureNotFound:
            return  # no log yet (or the group went away): nothing to emit
        except BackendError as exc:
            self._unavailable(exc, run_id, refused=not isinstance(exc, Retryable))
            return
        if short and not self.lost_said:
            self.lost_said = True
            log.warning(
                f"the container wrote more than {TAIL_MAX} lines between two reads; some of its output "
                "was not shipped (lower the watch interval to read more often)",
                flow_run_id=run_id,
            )
        for stamp, text in lines:
            self.cursor = stamp
            if not self._send(text, run_id):
                return

    async def _window(self, sdk: SdkCalls, client: Any, ref: GroupRef, final: bool) -> tuple[list[Any], bool]:
        """The new lines, from a window wide enough to reach back to the cursor (or `TAIL_MAX`
        lines: then whether it still falls short); the next window fits what this one brought."""
        what = f"reading the logs of container {self.container!r}"
        while True:
            tail = self.tail
            read = partial(
                client.containers.list_logs,
                ref.resource_group,
                ref.name,
                self.container,
                tail=tail,
                timestamps=True,
            )
            logs = await (sdk(read, what) if final else sdk.once(read, what))
            content = REDACTOR.mask_text(str(getattr(logs, "content", "") or ""))  # masked before any cut
            lines, short = fresh_lines(content, self.cursor, tail)
            if not short or tail >= TAIL_MAX:
                self.tail = min(TAIL_MAX, max(TAIL_MIN, 2 * len(lines)))
                return lines, short
            self.tail = min(TAIL_MAX, tail * 8)

    def _send(self, text: str, run_id: str) -> bool:
        line = text.rstrip()
        if not line:
            return True
        if sent(self.emit, line, "aci", run_id):
            return True
        self.stopped = True
        return False

    def _unavailable(self, exc: BackendError, run_id: str, *, refused: bool) -> None:
        self.stopped = self.stopped or refused
        if self.warned:
            return
        self.warned = True
        fix = f"; {_FIX}" if refused else "; trying again on the next round"
        log.warning(
            f"the container's output is unavailable: {exc}{fix}",
            flow_run_id=run_id,
        )


def fresh_lines(content: str, cursor: Cursor | None, tail: int) -> tuple[list[tuple[Cursor, str]], bool]:
    """The lines of a timestamped log newer than `cursor`, each with the cursor after it, and
    whether the window of `tail` lines may miss some (it is full and starts at or after the
    cursor's instant, or there is no cursor yet: the log may begin before the window)."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    last, seen = cursor if cursor is not None else (-1, 0)
    fresh: list[tuple[Cursor, str]] = []
    instant, count = -1, 0
    first: int | None = None
    for raw in lines:
        stamp, text = _split(raw)
        stamp = instant if stamp is None else stamp  # a line without a time belongs to the one before
        first = stamp if first is None else first
        count = count + 1 if stamp == instant else 1
        instant = stamp
        if stamp < last or (stamp == last and count <= seen):
            continue
        fresh.append(((stamp, count), text))
    # a full window that starts at the cursor's instant may start inside it, where the count
    # of that instant's lines would be off: it falls short too
    short = len(lines) >= tail and first is not None and (cursor is None or first >= last)
    return fresh, short


def _split(raw: str) -> tuple[int | None, str]:
    """(the line's time in ns, its text); no time when the line has none."""
    match = _STAMP.match(raw)
    if match is None:
        return None, raw
    try:
        seconds = datetime.fromisoformat(match[1] + match[3].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None, raw
    fraction = int((match[2] or "0").ljust(9, "0"))
    return int(seconds) * 1_000_000_000 + fraction, raw[match.end() :]
