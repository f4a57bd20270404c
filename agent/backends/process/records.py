"""What outlives the agent about a local process: one small record per flow run.

The agent writes `<state_dir>/process/<flow run id>.json` when it launches a run (the host,
the supervisor's pid and create time, the program; never the env), and the supervisor
(shim.py) adds the exit status when the command ends, whether or not an agent is up.
A restarted agent finds the run by its record, tells whether the process is still the one
launched for it (pid and create time, and the record's path in the supervisor's command
line: a reused pid is never taken for the run's process), and reads how it ended.

A process launched without a record (no state dir, or by an older agent) is found by the
`PREFECT__FLOW_RUN_ID` in its environment; its identity is fixed when first seen.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import psutil

from agent.backends.base import BackendError
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome, Reason

__all__ = [
    "Record",
    "RecordStore",
    "alive",
    "find_by_env",
    "identify",
    "record_path_in",
    "recorded_outcome",
    "reloaded",
]

_VERSION: Final = 1
_CLOCK_SLACK: Final = 1.0  # create times are wall clock from boot time in whole seconds
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_ID_VARIABLE: Final = "PREFECT__FLOW_RUN_ID"


@dataclass(frozen=True)
class Record:
    flow_run_id: str
    host: str
    pid: int  # the supervisor's, which leads the run's process group
    create_time: float  # psutil's, of that pid: what makes a reused pid not ours
    program: str = ""  # command[0] only: arguments may carry secrets
    marker: str | None = None  # the record's path as the supervisor got it in its argv
    launched_at: float = field(default_factory=time.time)
    exit: int | None = None  # returncode, negative for a signal; written by the supervisor
    ended_at: float | None = None
    tail: tuple[str, ...] = ()  # last output, kept by the supervisor when the agent was gone

    @property
    def infrastructure_pid(self) -> str:
        return f"{self.host}:{self.pid}"

    def to_json(self) -> str:
        data: dict[str, Any] = {"version": _VERSION, **asdict(self)}
        for key in ("exit", "ended_at", "tail"):  # the supervisor's fields
            data.pop(key)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Record | None:
        try:
            data = json.loads(text)
            return cls(
                flow_run_id=str(data["flow_run_id"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                create_time=float(data["create_time"]),
                program=str(data.get("program", "")),
                marker=data.get("marker"),
                launched_at=float(data.get("launched_at", 0.0)),
                exit=None if data.get("exit") is None else int(data["exit"]),
                ended_at=data.get("ended_at"),
                tail=tuple(str(line) for line in data.get("tail") or ()),
            )
        except (ValueError, TypeError, KeyError):
            return None


class RecordStore:
    """The records of one host's runs; `root` None keeps none (a process launched then
    leaves no exit status behind, as before records existed)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.expanduser().absolute() / "process" if root is not None else None

    def path(self, flow_run_id: str) -> Path | None:
        if self.root is None:
            return None
        name = flow_run_id if _SAFE_NAME.fullmatch(flow_run_id) else _digest(flow_run_id)
        return self.root / f"{name}.json"

    def write(self, record: Record) -> None:
        """Atomically: a reader sees the old record or the new one, never half of one."""
        path = self.path(record.flow_run_id)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, record.to_json().encode())
        finally:
            os.close(fd)
        os.replace(temp, path)

    def load(self, flow_run_id: str) -> Record | None:
        path = self.path(flow_run_id)
        return _read(path) if path is not None else None

    def by_pid(self, pid: int) -> Record | None:
        """The record of a supervisor pid (a handle rebuilt without its flow run id)."""
        if self.root is None or not self.root.is_dir():
            return None
        for path in self.root.glob("*.json"):
            record = _read(path)
            if record is not None and record.pid == pid:
                return record
        return None

    def delete(self, record: Record) -> None:
        """Remove the record, unless a later launch of the same run replaced it."""
        path = self.path(record.flow_run_id)
        current = _read(path) if path is not None else None
        if path is not None and current is not None and current.pid == record.pid:
            path.unlink(missing_ok=True)

    def prune(self, max_age: float) -> int:
        """Remove records older than `max_age` seconds whose process has ended (a run whose
        outcome no agent read: long reported by the reconciler, or deleted), and temporary
        files left by a write that was killed. Returns how many were removed."""
        if self.root is None or not self.root.is_dir():
            return 0
        removed, now = 0, time.time()
        for path in self.root.iterdir():
            try:
                old = now - path.stat().st_mtime > (max_age if path.suffix == ".json" else 3600)
                if not old:
                    continue
                record = _read(path) if path.suffix == ".json" else None
                if record is None or not alive(record):
                    path.unlink(missing_ok=True)
                    removed += 1
            except OSError:
                continue
        return removed


def _read(path: Path) -> Record | None:
    try:
        return Record.from_json(path.read_bytes())
    except OSError:
        return None


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def alive(record: Record) -> bool:
    """Whether the process launched for the run still runs: the pid exists, it is the same
    process (its create time, and the record's path in its command line), not a zombie."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > _CLOCK_SLACK:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return record.marker is None or record.marker in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def identify(pid: int, flow_run_id: str, host: str) -> Record | None:
    """The record of the process group leader `pid` if its environment names the run (every
    launch puts the run id there), else None: the record its supervisor's command line
    points at (an agent with another state dir launched it), or one made now, in memory,
    for a process launched without a supervisor."""
    try:
        proc = psutil.Process(pid)
        if os.getpgid(pid) != pid or proc.environ().get(RUN_ID_VARIABLE) != flow_run_id:
            return None
        argv = proc.cmdline()
        marker = record_path_in(argv)
        if marker is not None:
            record = _read(Path(marker))
            if record is not None and record.pid == pid and record.flow_run_id == flow_run_id:
                return record
        return Record(flow_run_id, host, pid, proc.create_time(), (argv or [""])[0])
    except (psutil.Error, OSError):
        return None


def find_by_env(flow_run_id: str, host: str) -> Record | None:
    """The live process group of a run launched without a record, found by the run id in its
    environment (only this user's processes are read). Raises BackendError when processes
    of the run live on but their group's leader is gone: they cannot be told apart safely."""
    uid, stray = os.getuid(), []
    for proc in psutil.process_iter():
        try:
            if proc.uids().real != uid or proc.environ().get(RUN_ID_VARIABLE) != flow_run_id:
                continue
            if os.getpgid(proc.pid) == proc.pid:
                return identify(proc.pid, flow_run_id, host)
            stray.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    if stray:
        raise BackendError(
            f"processes {', '.join(map(str, stray))} of flow run {flow_run_id} run on {host} "
            "without their process group's leader; flow-agent will not adopt or kill them"
        )
    return None


def record_path_in(argv: Sequence[str]) -> str | None:
    """The record path in a supervisor's command line (as spawn.py lays it out), if it is one."""
    if len(argv) > 8 and argv[3].endswith("shim.py") and argv[8] == "--" and argv[7] != "-":
        return argv[7]
    return None


def recorded_outcome(record: Record | None, pid: int, host: str) -> Outcome:
    """How an ended process ended, as far as its record says."""
    if record is None or record.marker is None:
        found = "is gone" if record is not None else "is gone, or its pid now belongs to another process"
        return Outcome(
            Reason.LOST,
            detail=f"process {pid} on {host} {found}; it was launched without a record, "
            "so its exit status is unknown",
        )
    if record.exit is None:
        return Outcome(
            Reason.LOST,
            detail=f"process {pid} on {host} ended without recording an exit status "
            "(its supervisor was killed too, e.g. by a SIGKILL to the whole process group)",
        )
    detail = f"exit status recorded by its supervisor on {host}; the agent that launched it never read it"
    if record.exit != 0 and record.tail:
        # the supervisor keeps raw lines: masked here before they are stripped and cut
        lines = (REDACTOR.clip(REDACTOR.mask_text(line).strip(), 300) for line in record.tail)
        detail += "; last output: " + " | ".join(lines)
    return Outcome(Reason.EXITED, exit_code=record.exit, detail=detail)


def reloaded(store: RecordStore, record: Record) -> Record:
    """The record as on disk now (the supervisor may have added the exit status)."""
    if record.marker is None:
        return record
    current = store.load(record.flow_run_id)
    return current if current is not None and current.pid == record.pid else replace(record, exit=None)
