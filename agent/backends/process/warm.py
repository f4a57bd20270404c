"""Warm starts: the agent's side of the warm engine (zygote.py), and when to use it.

A cold `python -m prefect.engine` spends a second or more importing Prefect before the
flow's first line; a fork of a process that imported it already does not. The fork makes
the same supervisor, session, group, record, environment and working directory as a cold
launch (see zygote.py), so a run behaves the same either way: only the time to its first
line and the memory it shares differ.

Warm only when nothing can differ: the command is exactly the default engine command with
the agent's own Python (another Python starts cold, said once; a custom command simply runs
as given), and the engine was started with the run's own environment but for its run
variables (PREFECT__*: ids, the control token), which neither the interpreter nor Prefect's
settings read. So the engine imported Prefect, read its settings and set up its logging as
the run's own cold start would; a fork keeps them (zygote.py checks the same sources once
more), and runs whose environments differ otherwise (another deployment's job env) get an
engine of their own: _MAX_ENGINES at most, the least recently used retired. No engine holds
another run's environment, and none any run's ids or token; when new environments come too
often for engines to pay off (a job env that differs run by run), their runs start cold. Any
trouble with a warm engine (it failed to start, died, refused or did not answer) starts the
run cold and is said once; a failed engine is tried again after _RETRY_AFTER. An engine is
rebuilt when a directory it imports from changes (a package installed or upgraded), as a
cold start would see the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio

from agent.backends.process.warm_process import WarmProcess
from agent.observe.logging import get_logger

__all__ = ["WarmEngine"]

log = get_logger("agent.backends.process.warm")

ZYGOTE: Final = str(Path(__file__).with_name("zygote.py"))
_READY_TIMEOUT: Final = 60.0  # seconds for the engine to import Prefect (a cold start pays the same)
_ANSWER_TIMEOUT: Final = 10.0  # seconds for a fork's pid
_RETRY_AFTER: Final = 300.0  # seconds before trying again after the engine failed
_MESSAGE_LIMIT: Final = 1 << 20  # zygote.py's
_MAX_ENGINES: Final = 3  # warm engines for different environments at once
_CHURN_STARTS: Final = 2 * _MAX_ENGINES  # engines started within _CHURN_WINDOW: enough
_CHURN_WINDOW: Final = 600.0
_RUN_VARIABLES: Final = "PREFECT__"  # a run's context for the engine (zygote.py's), not settings

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


Key = frozenset[tuple[str, str]]


def _key(env: Mapping[str, str]) -> Key:
    """A run's environment but for its run variables: what its engine is started with."""
    return frozenset((k, v) for k, v in env.items() if not k.startswith(_RUN_VARIABLES))


class _Zygote:
    """One warm engine process and its socket."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket, key: Key) -> None:
        self.proc = proc
        self.sock = sock
        self.key = key
        self.ready = asyncio.Event()
        self.failed: str | None = None
        self.dead = False
        self.paths: dict[str, float] = {}  # directory it imports from -> its mtime then
        self.answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.children: dict[int, WarmProcess] = {}  # forked, not ended
        self.early: dict[int, int] = {}  # pid -> exit code that came before the fork's answer

    def stale(self) -> bool:
        return any(_mtime(path) != mtime for path, mtime in self.paths.items())


class WarmEngine:
    """Forks default-command runs from a warm engine; `fork` returns None to start cold."""

    def __init__(self, spawn: Spawn, *, enabled: bool = True, python: str = sys.executable) -> None:
        self._spawn = spawn
        self._enabled = enabled
        self._python = python
        self._zygotes: dict[Key, _Zygote] = {}  # by interpreter variables, least recently used first
        self._starting: asyncio.Lock | None = None
        self._failed_at: float | None = None
        self._retired: list[_Zygote] = []
        self._started: list[_Zygote] = []  # every engine process not yet waited for (aclose)
        self._ids = itertools.count(1)
        self._starts: list[float] = []  # when engines were started, within _CHURN_WINDOW
        self._said: set[str] = set()

    # -- when ---------------------------------------------------------------------------------

    def accepts(self, command: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether this launch may start warm (said once per reason when not)."""
        if not self._enabled:
            return False
        if list(command)[1:] != ["-m", "prefect.engine"]:
            return False  # the user's own command: it runs as given, there is no warm form of it
        if command[0] != self._python:
            self._say_once(
                "python", "runs with another Python than the agent's start cold", python=command[0]
            )
            return False
        return True

    def _churning(self) -> bool:
        """Engines were started for new environments too often lately (a job env that
        differs run by run): each would serve a run or two, for the price of a cold start
        and an import more. Runs of a new environment start cold until it calms down."""
        now = anyio.current_time()
        self._starts = [at for at in self._starts if now - at < _CHURN_WINDOW]
        if len(self._starts) < _CHURN_STARTS:
            return False
        self._say_once(
            "churn",
            "run environments change too often for warm engines; runs of a new environment start cold",
            started=len(self._starts),
            within_seconds=_CHURN_WINDOW,
        )
        return True

    def _say_once(self, reason: str, message: str, *, level: str = "info", **fields: Any) -> None:
        if reason not in self._said:
            self._said.add(reason)
            getattr(log, level)(message, **fields)

    # -- fork -----------------------------------------------------------------------------------

    async def fork(
        self, argv: list[str], *, env: Mapping[str, str], cwd: str, fds: Sequence[int], marker: str | None
    ) -> WarmProcess | None:
        """Fork the run's supervisor from the warm engine: `argv` is the supervisor's, with
        "<ctl>", "<status>", "<relay>" in place of what the fork fills in; `fds` are the
        CTL and STATUS pipe ends (and OUT's write end when relayed). None: start it cold."""
        zygote = await self._ready(env)
        if zygote is None:
            return None
        ident = next(self._ids)
        relay = len(fds) > 2
        message = {"op": "fork", "id": ident, "argv": argv, "env": dict(env), "cwd": cwd, "relay": relay}
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        zygote.answers[ident] = answer
        try:
            await _send(zygote.sock, message, fds)
            with anyio.fail_after(_ANSWER_TIMEOUT):
                reply = await answer
        except _TooBig:  # this run's env alone: the engine is fine
            self._say_once("big", "a run whose command line and environment are too large starts cold")
            return None
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._lost(zygote, f"it did not take a run ({type(exc).__name__}: {exc})")
            return None
        finally:
            zygote.answers.pop(ident, None)
        if "pid" not in reply:
            self._say_once(
                "refused", "the warm engine refused a run; it starts cold", errno=reply.get("errno")
            )
            return None
        pid = int(reply["pid"])
        child = zygote.children[pid] = WarmProcess(pid, None, marker)
        if pid in zygote.early:  # it ended before its pid reached us (it failed at once)
            self._exited(zygote, child, zygote.early.pop(pid))
        return child

    async def _ready(self, env: Mapping[str, str]) -> _Zygote | None:
        """The warm engine for this run's environment, started (and waited for) if there is
        none yet; None: start the run cold."""
        key = _key(env)
        zygote = self._zygotes.get(key)
        if zygote is not None and zygote.ready.is_set() and zygote.stale():
            self._say_once("rebuilt", "the warm engine's packages changed: it is being rebuilt")
            self._retire(zygote)
        if key not in self._zygotes:
            if self._failed_at is not None and anyio.current_time() - self._failed_at < _RETRY_AFTER:
                return None
            if self._churning():
                return None
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if key not in self._zygotes:
                    await self._start(key, env)
        zygote = self._zygotes.get(key)
        if zygote is None:
            return None
        self._zygotes[key] = self._zygotes.pop(key)  # the most recently used now
        with anyio.move_on_after(_READY_TIMEOUT):
            await zygote.ready.wait()
        if not zygote.ready.is_set() or zygote.failed or zygote.dead:
            if not zygote.ready.is_set():
                self._lost(zygote, f"it did not import Prefect within {_READY_TIMEOUT:.0f} s")
            return None
        return zygote

    async def _start(self, key: Key, env: Mapping[str, str]) -> None:
        # The engine imports Prefect with exactly the environment of the runs it serves, but
        # for their run variables; each fork takes its own run's whole environment.
        if self._zygotes:
            self._say_once("another", "runs with another environment get a warm engine of their own")
        while len(self._zygotes) >= _MAX_ENGINES:
            self._retire(next(iter(self._zygotes.values())))
        base = dict(key)
        self._starts.append(anyio.current_time())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python,
                ZYGOTE,
                str(theirs.fileno()),
                env=base,
                cwd="/",  # not the agent's: no .env or prefect.toml of its directory
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            self._failed(f"it could not be started: {exc.strerror or exc}")
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        zygote = self._zygotes[key] = _Zygote(proc, ours, key)
        self._started = [z for z in self._started if z.proc.returncode is None] + [zygote]
        self._spawn(lambda: self._listen(zygote))

    # -- the engine's messages ------------------------------------------------------------------

    async def _listen(self, zygote: _Zygote) -> None:
        loop, ended = asyncio.get_running_loop(), False
        try:
            while data := await loop.sock_recv(zygote.sock, _MESSAGE_LIMIT):
                self._on_message(zygote, json.loads(data))
            ended = True
        except (OSError, ValueError) as exc:
            ended = True
            log.debug("the warm engine's socket failed", error=str(exc))
        finally:
            self._gone(zygote, ended=ended)  # not ended: the agent is closing

    def _on_message(self, zygote: _Zygote, message: dict[str, Any]) -> None:
        if message.get("ready"):
            zygote.paths = {path: _mtime(path) for path in message.get("paths", [])}
            log.info("warm engine ready", pid=zygote.proc.pid, prefect=message.get("version"))
            zygote.ready.set()
        elif "failed" in message:
            zygote.failed = str(message["failed"])
            self._failed(f"it could not import Prefect ({zygote.failed})")
            zygote.ready.set()
        elif "exit" in message:
            pid, code = int(message["exit"]), int(message["code"])
            child = zygote.children.get(pid)
            if child is None:
                zygote.early[pid] = code
            else:
                self._exited(zygote, child, code)
        elif "id" in message:
            answer = zygote.answers.get(int(message["id"]))
            if answer is not None and not answer.done():
                answer.set_result(message)

    def _exited(self, zygote: _Zygote, child: WarmProcess, code: int) -> None:
        # The pid stays a zombie, so never another process's, until `returncode` is set:
        # then no kill signals it any more, and the engine may reap it.
        del zygote.children[child.pid]
        child.exited(code)
        self._notify(zygote, {"op": "reap", "pid": child.pid})

    def _gone(self, zygote: _Zygote, *, ended: bool) -> None:
        zygote.dead = True
        zygote.sock.close()
        for answer in zygote.answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the warm engine is gone"))
        for child in zygote.children.values():
            if child.returncode is None:
                self._spawn(child.orphaned)
        if self._zygotes.get(zygote.key) is zygote:
            del self._zygotes[zygote.key]
            if ended and not zygote.failed:
                self._say_once(
                    "died", "the warm engine ended; it is rebuilt for the next run", level="warning"
                )
        if zygote in self._retired:
            self._retired.remove(zygote)

    def _failed(self, why: str) -> None:
        self._failed_at = anyio.current_time()
        self._say_once("failed", f"the warm engine failed: {why}; runs start cold", level="warning")

    def _lost(self, zygote: _Zygote, why: str) -> None:
        self._failed(why)
        self._retire(zygote)

    def _retire(self, zygote: _Zygote) -> None:
        """Fork no more from it; it exits once its children are reaped."""
        if self._zygotes.get(zygote.key) is zygote:
            del self._zygotes[zygote.key]
        if not zygote.dead and zygote not in self._retired:
            self._retired.append(zygote)
            self._notify(zygote, {"op": "retire"})

    def _notify(self, zygote: _Zygote, message: dict[str, Any]) -> None:
        async def send() -> None:
            with contextlib.suppress(OSError):  # it is gone: nothing left to tell
                await _send(zygote.sock, message, ())

        self._spawn(send)

    async def aclose(self) -> None:
        """Close the sockets: the engines exit; runs they forked live on under their supervisors."""
        zygotes, self._started = self._started, []
        self._zygotes, self._retired = {}, []
        for zygote in zygotes:
            zygote.sock.close()
            with anyio.move_on_after(5):
                await zygote.proc.wait()
            if zygote.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    zygote.proc.kill()
                await zygote.proc.wait()


class _TooBig(Exception):
    """A request larger than one message may be (the socket's buffer, or zygote.py's limit)."""


async def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int]) -> None:
    data = json.dumps(message).encode()
    if len(data) > _MESSAGE_LIMIT:
        raise _TooBig
    while True:
        try:
            socket.send_fds(sock, [data], list(fds))
            return
        except BlockingIOError:
            await anyio.wait_socket_writable(sock)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise _TooBig from None
            raise


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0
