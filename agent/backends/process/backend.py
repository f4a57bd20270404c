"""Local processes: each run in its own process group, under a supervisor that records how
it ended, its output streamed into our logs.

The process group is what makes a kill complete: SIGTERM and SIGKILL go to the group,
so shells and the subprocesses a flow starts die with it (Prefect's runner signalled
only the leader and orphaned grandchildren). Its own session also keeps a Ctrl-C in the
agent's terminal away from the runs, so the agent decides when they stop.

The group's leader is a tiny supervisor (shim.py) with the command as its child: it
writes the exit status into the run's record under `state_dir`, so an agent that died
and started again on this host still reports how the run really ended (records.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

import anyio
import psutil

from agent.backends.base import (
    BackendError,
    BackendOptions,
    Delivery,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
    OutputSink,
    output_sink,
    sent,
)
from agent.backends.engine import Watched, WatchEngine
from agent.backends.process import workspace
from agent.backends.process.control import ControlChannel
from agent.backends.process.records import (
    RUN_ID_VARIABLE,
    Record,
    RecordStore,
    alive,
    find_by_env,
    identify,
    recorded_outcome,
    reloaded,
)
from agent.backends.process.spawn import LINE_LIMIT, launch_message, start_supervised
from agent.backends.process.warm import WarmEngine
from agent.infra.process import ProcessRuntime
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome, Reason

__all__ = ["ProcessBackend"]

_TAIL_LINES: Final = 5
_POLL: Final = 1.0  # seconds between checks of a process an earlier agent launched
_KEEP_RECORDS: Final = 7 * 86400.0  # an ended run's record no agent read, in seconds
_KILL_SETTLE: Final = 5.0  # seconds for a SIGKILLed group to be gone


@dataclass
class _Proc:
    """One run's process. `record` is what proves a process is the run's (None: nothing
    does); `child` is None when an earlier agent launched it."""

    record: Record | None
    child: asyncio.subprocess.Process | None = None
    temp_dir: str | None = None
    attempt: str | None = None  # the workspace supervisor's config and manifest
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    output: OutputSink | None = None  # the job's sink (None: the agent log)


class _Local:
    """The watch engine's view of local processes: this agent's children end themselves
    (`_follow`); the others are checked every `_POLL` seconds and read from their record."""

    batch_size = 256

    def __init__(self, store: RecordStore, hostname: str) -> None:
        self._store = store
        self._hostname = hostname

    def batch_key(self, watched: Watched[_Proc]) -> str:
        return "local"

    async def read(self, batch: Sequence[Watched[_Proc]]) -> Mapping[str, bool]:
        """pid -> whether it still runs."""
        return {w.pid: w.state.child is not None or _alive(w.state.record) for w in batch}

    def conclude(self, watched: Watched[_Proc], status: bool | None) -> Outcome | None:
        if status is not False:
            return None
        record = watched.state.record
        pid = int(watched.pid.rpartition(":")[2])
        return recorded_outcome(reloaded(self._store, record) if record else None, pid, self._hostname)

    async def overdue(self, watched: Watched[_Proc], which: str) -> Outcome | None:
        return None  # local processes have no deadlines

    async def clean_up(self, watched: Watched[_Proc], outcome: Outcome) -> None:
        if watched.state.temp_dir:
            shutil.rmtree(watched.state.temp_dir, ignore_errors=True)
        workspace.discard(watched.state.attempt)


class ProcessBackend:
    kind: ClassVar[str] = "process"
    remote: ClassVar[bool] = False
    runtime_type: ClassVar[type] = ProcessRuntime

    def __init__(self, options: BackendOptions, *, hostname: str | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self._records = RecordStore(options.state_dir)
        self._records.prune(_KEEP_RECORDS)
        platform = _Local(self._records, self.hostname)
        self._engine: WatchEngine[_Proc] = WatchEngine(
            "process", platform, interval=_POLL, retry=options.retry
        )
        self._warm = WarmEngine(self._engine.spawn, enabled=options.warm_start)
        self._control = ControlChannel(self._engine.spawn)

    # -- launch ----------------------------------------------------------------------------

    async def launch(self, job: Job[ProcessRuntime]) -> Handle[ProcessRuntime]:
        payload = job.payload
        command = list(payload.get("command") or [])
        if not command:
            raise LaunchError("the command is empty; set the job variable 'command' or leave it unset")
        temp_dir = None
        cwd = payload.get("cwd")
        if cwd is None:
            temp_dir = cwd = tempfile.mkdtemp(prefix="flow-agent-")
        records: list[Record] = []
        path = self._records.path(job.flow_run_id)
        env = dict(payload.get("env") or {})
        if env.get(RUN_ID_VARIABLE) == job.flow_run_id:  # a flow run's engine (not a direct run)
            # after the job's env, as Prefect's worker sets them: the engine's control channel
            env.update(await self._control.register(job.flow_run_id))
        command, attempt = await workspace.prepare(
            command, flow_run_id=job.flow_run_id, cwd=str(cwd), env=env
        )
        try:
            proc = await start_supervised(
                command,
                cwd=str(cwd),
                env=env,
                stream=bool(payload.get("stream_output", True)),
                marker=str(path) if path else None,
                on_spawned=lambda pid: records.extend(self._record(job.flow_run_id, command, pid)),
                warm=self._warm,
            )
        except BaseException as exc:
            self._control.unregister(job.flow_run_id)
            workspace.discard(attempt)
            self._undo(temp_dir, records)
            if isinstance(exc, (OSError, ValueError)):
                raise LaunchError(launch_message(command, cwd, exc)) from exc
            raise
        handle = Handle(self.kind, f"{self.hostname}:{proc.pid}", job.flow_run_id, runtime=job.runtime)
        record = records[0] if records else None
        watched = self._engine.track(
            Watched(handle, _Proc(record, proc, temp_dir, attempt, output=job.output))
        )
        self._engine.spawn(lambda: self._follow(watched))
        return handle

    def _record(self, flow_run_id: str, command: list[str], pid: int) -> list[Record]:
        """Write the run's record before its command may start (see spawn.py)."""
        path = self._records.path(flow_run_id)
        if path is None:
            return []
        try:
            create_time = psutil.Process(pid).create_time()
            record = Record(flow_run_id, self.hostname, pid, create_time, str(command[0]), marker=str(path))
            self._records.write(record)
        except (OSError, psutil.Error) as exc:
            raise BackendError(
                f"cannot record the run's process in {path.parent}: {exc}; make that directory "
                "writable by the agent (it is under FLOW_AGENT_DATA_DIR)"
            ) from exc
        return [record]

    def _undo(self, temp_dir: str | None, records: list[Record]) -> None:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        for record in records:
            self._records.delete(record)

    async def _follow(self, watched: Watched[_Proc]) -> None:
        """Stream the output of one of our children, then end its record with its exit."""
        child = watched.state.child
        assert child is not None
        try:
            if child.stdout is not None:  # EOF comes when the supervisor exits
                emit = output_sink(self.kind, watched.flow_run_id, watched.state.output)
                await self._pump(child.stdout, watched.state.tail, emit, watched.flow_run_id)
        finally:
            code = await child.wait()
            self._control.unregister(watched.flow_run_id)
            tail = watched.state.tail
            detail = "last output: " + " | ".join(tail) if code != 0 and tail else ""
            self._engine.end(watched, Outcome(Reason.EXITED, exit_code=code, detail=detail))

    @staticmethod
    async def _pump(
        stream: asyncio.StreamReader, tail: deque[str], emit: OutputSink | None, flow_run_id: str
    ) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what is there
                raw = await stream.read(LINE_LIMIT)
            if not raw:
                return
            # masked first, then stripped and cut: a secret ending in a space or
            # straddling the cut would otherwise no longer match (issue 13)
            line = REDACTOR.mask_text(raw.decode(errors="replace")).rstrip()
            if line:
                tail.append(REDACTOR.clip(line, 300))
                # a failed sink ends the output, not the reading: a full pipe would stall the flow
                if emit is not None and not sent(emit, line, "process", flow_run_id):
                    emit = None

    # -- wait, inspect, find ---------------------------------------------------------------------

    def _watched(self, handle: Handle) -> Watched[_Proc] | None:
        watched = self._engine.get(handle.pid)
        if watched is None or (handle.flow_run_id and watched.flow_run_id != handle.flow_run_id):
            return None  # an earlier process of ours had this pid
        return watched

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._watched(handle)
        if watched is None:  # launched by an earlier agent: checked every _POLL seconds
            watched = self._engine.track(Watched(handle, _Proc(self._identity(handle))))
        outcome = await self._engine.wait(watched)
        if watched.state.record is not None:  # read: the runner reports it now
            self._records.delete(watched.state.record)
        return outcome

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._watched(handle)
        if watched is not None:
            return watched.outcome if watched.done.is_set() else None
        record = self._identity(handle)
        if _alive(record):
            return None
        current = reloaded(self._records, record) if record is not None else None
        return recorded_outcome(current, self._local_pid(handle), self.hostname)

    async def find(self, job: Job[ProcessRuntime]) -> Handle[ProcessRuntime] | None:
        for watched in self._engine.active:
            if watched.flow_run_id == job.flow_run_id:
                return watched.handle
        record = self._records.load(job.flow_run_id)
        if record is None:  # launched without a record (no state dir, an older agent)?
            record = await anyio.to_thread.run_sync(find_by_env, job.flow_run_id, self.hostname)
        if record is None:
            return None
        if record.host != self.hostname:
            raise BackendError(
                f"flow run {job.flow_run_id} was launched on host {record.host!r}, not here "
                f"({self.hostname!r}); only an agent on that host can tell whether it still runs"
            )
        return Handle(self.kind, record.infrastructure_pid, job.flow_run_id, runtime=job.runtime)

    def _identity(self, handle: Handle) -> Record | None:
        """What proves a process is the one launched for the handle's run, if anything."""
        pid = self._local_pid(handle)
        record = self._records.load(handle.flow_run_id) if handle.flow_run_id else self._records.by_pid(pid)
        if record is not None and record.pid == pid:
            return record
        return identify(pid, handle.flow_run_id, self.hostname) if handle.flow_run_id else None

    # -- kill ------------------------------------------------------------------------------------

    async def deliver(self, handle: Handle, intent: str) -> Delivery:
        """Tell the run's engine, over the control channel, why the kill that follows comes
        ("cancel": run on_cancellation, not on_crashed). Only this agent's own children
        have a channel; a run an earlier agent launched gets the plain kill."""
        watched = self._watched(handle)
        if watched is None or watched.state.child is None or watched.state.child.returncode is not None:
            return Delivery.NOT_CONNECTED
        return await self._control.deliver(watched.flow_run_id, intent)

    async def kill(self, handle: Handle, grace: float) -> None:
        pid = self._local_pid(handle)
        if not self._ours(handle):
            return  # nothing proven to be this run's is left: a reused pid is never signalled
        if not _signal_group(pid, signal.SIGTERM):
            return
        if await _gone_within(pid, grace, step=min(0.2, max(grace / 10, 0.05))):
            return
        _signal_group(pid, signal.SIGKILL)
        # The supervisor dies at once and its exit wakes `wait`; the command and what it
        # started may take a moment longer to be gone, and "killed" should mean gone.
        await _gone_within(pid, _KILL_SETTLE, step=0.05)

    def _ours(self, handle: Handle) -> bool:
        """Whether the group led by the handle's pid is still the run's: our child's until
        it is reaped (its pid is free then), else the process its record names."""
        watched = self._watched(handle)
        if watched is not None and watched.state.child is not None:
            return watched.state.child.returncode is None
        return _alive(watched.state.record if watched is not None else self._identity(handle))

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
        await self._engine.aclose()
        await self._warm.aclose()
        await self._control.aclose()


def _alive(record: Record | None) -> bool:
    return record is not None and alive(record)


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by `pid`; False if nothing is left to signal."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise BackendError(f"not allowed to signal process group {pid}: {exc}") from exc


async def _gone_within(pid: int, seconds: float, *, step: float) -> bool:
    with anyio.move_on_after(seconds):
        while _group_running(pid):
            await anyio.sleep(step)
        return True
    return False


def _group_running(pgid: int) -> bool:
    """Whether a member of the group still runs. Zombies do not count: our own supervisors
    are reaped by asyncio's child watcher, the rest by init, which may take its time."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False
