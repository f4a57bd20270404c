"""Starting a run's command under its supervisor (shim.py), and knowing that it started.

The supervisor leads the run's new session and process group (a kill of the group reaches
everything the flow starts; a Ctrl-C in the agent's terminal does not). The agent learns
its pid at once, writes the run's record, then tells it to go; the supervisor answers
whether the command itself could be started, so a missing program is still a launch error
of this run, with the same message as when the agent started the command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import anyio

from agent.backends.base import BackendError
from agent.backends.process.warm import WarmEngine
from agent.backends.process.warm_process import WarmProcess

__all__ = ["LINE_LIMIT", "launch_message", "start_supervised"]

SHIM: Final = str(Path(__file__).with_name("shim.py"))
LINE_LIMIT: Final = 1 << 20
_START_TIMEOUT: Final = 30.0  # from the supervisor's fork to the command's exec


async def start_supervised(
    command: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    stream: bool,
    marker: str | None,
    on_spawned: Callable[[int], None],
    warm: WarmEngine | None = None,
) -> asyncio.subprocess.Process | WarmProcess:
    """Start `command` under a supervisor; returns once the command runs.

    `on_spawned(pid)` records the supervisor before the command may start (it raises to
    stop the launch). Raises OSError/ValueError as starting the command directly would
    (the caller explains them with `launch_message`), BackendError for anything else.
    With `warm`, the default engine command is forked from the warm engine when it can be
    (warm.py); the supervisor, its record and its answers are the same either way.
    """
    if warm is not None and warm.accepts(command, env):
        proc = await _fork_warm(warm, command, cwd=cwd, env=env, stream=stream, marker=marker)
        if proc is not None:
            await _go(proc, on_spawned, *proc.pipes, command)
            return proc
    # Each descriptor is closed exactly once: a second close could hit a descriptor that a
    # concurrent launch has just been given the same number for.
    ctl_r, ctl_w = os.pipe()
    status_r, status_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(ctl_r, status_w, stream, marker, command),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stream else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT if stream else asyncio.subprocess.DEVNULL,
            start_new_session=True,
            limit=LINE_LIMIT,
            pass_fds=(ctl_r, status_w),
        )
    except BaseException:
        for fd in (ctl_r, ctl_w, status_r, status_w):
            os.close(fd)
        raise
    os.close(ctl_r)
    os.close(status_w)
    await _go(proc, on_spawned, ctl_w, status_r, command)
    return proc


async def _go(
    proc: asyncio.subprocess.Process | WarmProcess,
    on_spawned: Callable[[int], None],
    ctl_w: int,
    status_r: int,
    command: Sequence[str],
) -> None:
    """Record the supervisor, tell it to go, and wait for its answer; closes both ends."""
    try:
        try:
            on_spawned(proc.pid)
            os.write(ctl_w, b"go")
        finally:
            os.close(ctl_w)  # without "go", the supervisor exits and starts nothing
        await _started(proc, status_r, command)
    finally:
        os.close(status_r)


async def _fork_warm(
    warm: WarmEngine,
    command: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    stream: bool,
    marker: str | None,
) -> WarmProcess | None:
    """The supervisor forked from the warm engine, with `pipes` (CTL's write end, STATUS's
    read end) and `stdout` set; None when the warm engine cannot take it (start it cold)."""
    # as a cold start reports a missing working directory (one stat: no thread needed)
    if not os.path.isdir(cwd):  # noqa: ASYNC240
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)
    ctl_r, ctl_w = os.pipe()
    status_r, status_w = os.pipe()
    out_r, out_w = os.pipe() if stream else (-1, -1)
    theirs = [ctl_r, status_w] + ([out_w] if stream else [])
    ours = [ctl_w, status_r] + ([out_r] if stream else [])
    argv = _argv("<ctl>", "<status>", "<relay>", marker, command)
    proc = None
    try:
        proc = await warm.fork(argv, env=env, cwd=cwd, fds=theirs, marker=marker)
    finally:
        for fd in theirs:  # the warm engine holds its own copies now
            os.close(fd)
        if proc is None:
            for fd in ours:
                os.close(fd)
    if proc is None:
        return None
    proc.pipes = (ctl_w, status_r)
    if stream:
        proc.stdout = await _reader(out_r)
    return proc


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0)
    )
    return reader


def _argv(
    ctl: object, status: object, relay: object, marker: str | None, command: Sequence[str]
) -> list[str]:
    # -I: no PYTHON* variables, user site or script directory; -S: no site-packages at all.
    # `relay` is a bool, or a placeholder the warm engine fills in (zygote.py); the layout
    # is what records.record_path_in reads back
    flag = relay if isinstance(relay, str) else "1" if relay else "0"
    return [sys.executable, "-I", "-S", SHIM, str(ctl), str(status), flag, marker or "-", "--", *command]


async def _started(
    proc: asyncio.subprocess.Process | WarmProcess, status_r: int, command: Sequence[str]
) -> None:
    try:
        with anyio.fail_after(_START_TIMEOUT):
            await anyio.wait_readable(status_r)
            answer = os.read(status_r, 64)
            if answer == b"ok":
                return
            code = await proc.wait()
    except BaseException:  # timed out or cancelled: the command may be running, stop it
        _kill_group(proc.pid)
        raise
    if answer.startswith(b"E") and answer[1:].isdigit():
        number = int(answer[1:])
        raise OSError(number, os.strerror(number), command[0])
    raise BackendError(f"the supervisor of {command[0]!r} exited (status {code}) before starting it")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def launch_message(command: Sequence[str], cwd: object, exc: OSError | ValueError) -> str:
    program = command[0] if command else "<empty>"
    if isinstance(exc, FileNotFoundError) and exc.filename == str(cwd):
        return (
            f"working_dir {cwd} does not exist; set the job variable 'working_dir' to an existing directory"
        )
    if isinstance(exc, FileNotFoundError):  # OSError(ENOENT, ...) from the supervisor is one too
        return (
            f"command not found: {program!r}; set the job variable 'command' to a program on the "
            "agent's PATH (or leave it empty to run 'python -m prefect.engine')"
        )
    if isinstance(exc, PermissionError):
        return f"permission denied running {program!r}; make it executable or choose another 'command'"
    if isinstance(exc, ValueError):  # e.g. a NUL byte smuggled in by a customization
        return f"could not start {program!r}: {exc}; check 'command' and 'env' for invalid characters"
    return f"could not start {program!r}: {exc.strerror or exc}"
