"""A warm-started run's supervisor, as the process backend sees it (warm.py forks it).

It stands where a cold launch has an asyncio Process: the same `pid`, `stdout`,
`returncode` and `wait()`. Its parent is the warm engine, which tells warm.py its exit
status; were the engine to die first, the status comes from the run's record, which the
supervisor wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import anyio
import psutil

from agent.backends.process.records import Record
from agent.observe.logging import get_logger

__all__ = ["WarmProcess"]

log = get_logger("agent.backends.process.warm")

_ORPHAN_POLL: Final = 0.2


class WarmProcess:
    """A warm-started run's supervisor, with what the backend uses of an asyncio Process:
    `pid`, `stdout`, `returncode`, `wait()`. Its parent is the warm engine, which tells us
    its exit status; were the engine to die first, the status comes from the run's record."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader | None, marker: str | None) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.pipes: tuple[int, int] = (-1, -1)  # CTL's write end, STATUS's read end (spawn.py)
        self._marker = marker
        self._done = asyncio.Event()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()

    async def orphaned(self) -> None:
        """The warm engine died: wait for the supervisor to end, read its recorded status."""
        while _running(self.pid):
            await anyio.sleep(_ORPHAN_POLL)
        code = _recorded_exit(self._marker)
        if code is None:
            log.warning("a warm-started run's exit status is lost: the warm engine died first", pid=self.pid)
            code = 1
        self.exited(code)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _recorded_exit(marker: str | None) -> int | None:
    if marker is None:
        return None
    try:
        record = Record.from_json(Path(marker).read_bytes())
    except OSError:
        return None
    return None if record is None else record.exit
