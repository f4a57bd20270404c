"""Local processes: each run in its own process group, output streamed into our logs.

The process group is what makes a kill complete: SIGTERM and SIGKILL go to the group,
so shells and the subprocesses a flow starts die with it (Prefect's runner signalled
only the leader and orphaned grandchildren). Its own session also keeps a Ctrl-C in the
agent's terminal away from the runs, so the agent decides when they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import anyio
import psutil

from agent.backends.base import BackendError, Handle, InfrastructureNotFound, Job, LaunchError
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = ["ProcessBackend"]

_TAIL_LINES = 5
_LINE_LIMIT = 1 << 20


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None] | None
    temp_dir: str | None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))


class ProcessBackend:
    kind: ClassVar[str] = "process"
    remote: ClassVar[bool] = False

    def __init__(self, *, hostname: str | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self._children: dict[str, _Child] = {}

    # -- launch ----------------------------------------------------------------------------

    async def launch(self, job: Job) -> Handle:
        payload = job.payload
        command = list(payload.get("command") or [])
        if not command:
            raise LaunchError("the command is empty; set the job variable 'command' or leave it unset")
        temp_dir = None
        cwd = payload.get("cwd")
        if cwd is None:
            temp_dir = cwd = tempfile.mkdtemp(prefix="flow-agent-")
        stream = bool(payload.get("stream_output", True))
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=str(cwd),
                env=dict(payload.get("env") or {}),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stream else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT if stream else asyncio.subprocess.DEVNULL,
                start_new_session=True,
                limit=_LINE_LIMIT,
            )
        except (OSError, ValueError) as exc:
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise LaunchError(_launch_message(command, cwd, exc)) from exc
        handle = Handle(self.kind, f"{self.hostname}:{proc.pid}", job.flow_run_id)
        child = _Child(proc, None, temp_dir)
        if proc.stdout is not None:
            child.pump = asyncio.create_task(self._pump(proc.stdout, child, job.flow_run_id))
        self._children[handle.pid] = child
        return handle

    async def _pump(self, stream: asyncio.StreamReader, child: _Child, run_id: str) -> None:
        log = get_logger("agent.backends.process", flow_run_id=run_id)
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what is there
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if line:
                child.tail.append(line[:300])
                log.info(line, stream="output")

    # -- wait, inspect -------------------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        child = self._children.get(handle.pid)
        if child is None:
            return await self._wait_foreign(handle)
        try:
            code = await child.proc.wait()
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, timeout=5)
        finally:
            self._children.pop(handle.pid, None)
            if child.temp_dir:
                shutil.rmtree(child.temp_dir, ignore_errors=True)
        detail = ""
        if code != 0 and child.tail:
            detail = "last output: " + " | ".join(child.tail)
        return Outcome(Reason.EXITED, exit_code=code, detail=detail)

    async def _wait_foreign(self, handle: Handle) -> Outcome:
        """A process this agent did not start (e.g. before a restart): no exit status exists."""
        pid = self._local_pid(handle)
        while psutil.pid_exists(pid):
            await anyio.sleep(1.0)
        return Outcome(Reason.LOST, detail=f"process {pid} ended while not watched by this agent")

    async def inspect(self, handle: Handle) -> Outcome | None:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.proc.returncode
            return None if code is None else Outcome(Reason.EXITED, exit_code=code)
        pid = self._local_pid(handle)
        return None if psutil.pid_exists(pid) else Outcome(Reason.LOST)

    # -- kill ------------------------------------------------------------------------------------

    async def kill(self, handle: Handle, grace: float) -> None:
        pid = self._local_pid(handle)
        if not _signal_group(pid, signal.SIGTERM):
            return
        with anyio.move_on_after(grace):
            while _group_alive(pid):
                await anyio.sleep(min(0.2, max(grace / 10, 0.05)))
            return
        _signal_group(pid, signal.SIGKILL)

    def _local_pid(self, handle: Handle) -> int:
        host, _, pid = handle.pid.rpartition(":")
        if host and host != self.hostname:
            raise BackendError(
                f"process {handle.pid} runs on host {host!r}, not here ({self.hostname!r}); "
                "only an agent on that host can stop it"
            )
        try:
            return int(pid)
        except ValueError:
            raise InfrastructureNotFound(f"not a process id: {handle.pid!r}") from None

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        for child in self._children.values():
            if child.pump is not None:
                child.pump.cancel()


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by `pid`; False if nothing is left to signal."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise BackendError(f"not allowed to signal process group {pid}: {exc}") from exc


def _group_alive(pid: int) -> bool:
    # Our own children are reaped by asyncio's child watcher and foreign ones by init, so
    # a group that still answers signal 0 has a live member.
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _launch_message(command: list[str], cwd: object, exc: OSError | ValueError) -> str:
    program = command[0] if command else "<empty>"
    if isinstance(exc, FileNotFoundError) and exc.filename == str(cwd):
        return (
            f"working_dir {cwd} does not exist; "
            "set the job variable 'working_dir' to an existing directory"
        )
    if isinstance(exc, FileNotFoundError):
        return (
            f"command not found: {program!r}; set the job variable 'command' to a program on the "
            "agent's PATH (or leave it empty to run 'python -m prefect.engine')"
        )
    if isinstance(exc, PermissionError):
        return f"permission denied running {program!r}; make it executable or choose another 'command'"
    if isinstance(exc, ValueError):  # e.g. a NUL byte smuggled in by a customization
        return f"could not start {program!r}: {exc}; check 'command' and 'env' for invalid characters"
    return f"could not start {program!r}: {exc.strerror or exc}"
