"""Who owns a claimed run, and whether that owner is provably dead.

Every claim says who made it, atomically: the PENDING state's message names the agent
(worker name, instance, host, pid). Right after the claim the run also gets the labels
Prefect's workers set (`prefect.worker.name`, `prefect.worker.type`,
`prefect.work-pool.name`, `prefect.work-pool.id`) plus this agent instance's own
(`flow-agent.instance`, `.host`, `.pid`, `.started`), so any agent can tell from the server
alone who is responsible for a run. Labels are scalar strings only (a non-scalar label
makes every read of the run answer 500 on Prefect 3.8.8).

An owner is dead when:
- it ran on this host and its process is gone (the pid is free, or now belongs to a
  process that started after the claim: pid reuse is not life); this is proof;
- it ran elsewhere and its worker row is OFFLINE, or its last heartbeat is older than
  `STALE_HEARTBEATS` times its own interval plus the server's sweep period;
- it ran elsewhere and this agent now runs under the owner's worker name as a different
  instance (worker names are unique among running agents, as Prefect assumes: the name is
  the key of the worker row).
Anything else is alive or unknown, and an unknown owner is never treated as dead.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import psutil

from agent.api import FlowRun, StateType, WorkPool
from agent.api.models import State, Worker

__all__ = ["Liveness", "Owner", "Verdict", "claim_in", "judge", "owner_of"]

STALE_HEARTBEATS = 3  # heartbeats missed before a worker counts as gone (Prefect's foreman uses 3)
SWEEP_SECONDS = 15.0  # slack for late heartbeats (the foreman's own loop period)
_CLAIM = re.compile(
    r"^Claimed by flow-agent '(?P<name>.*)' \(instance (?P<instance>[0-9a-f]+), "
    r"pid (?P<pid>\d+) on (?P<host>[^)]*)\)"
)


@dataclass(frozen=True)
class Owner:
    name: str  # the worker name
    instance: str  # one per agent process start
    host: str
    pid: int
    started: float | None = None  # the agent process's start time (epoch seconds)

    @classmethod
    def me(cls, name: str) -> Owner:
        pid = os.getpid()
        return cls(name, uuid.uuid4().hex[:12], socket.gethostname(), pid, psutil.Process(pid).create_time())

    def claim_message(self) -> str:
        return f"Claimed by {self.describe()}"

    def labels(self, pool: WorkPool) -> dict[str, str]:
        labels = {
            "prefect.worker.name": self.name,
            "prefect.worker.type": pool.type,
            "prefect.work-pool.name": pool.name,
            "prefect.work-pool.id": pool.id,
            "flow-agent.instance": self.instance,
            "flow-agent.host": self.host,
            "flow-agent.pid": str(self.pid),
        }
        if self.started is not None:
            labels["flow-agent.started"] = f"{self.started:.3f}"
        return labels

    def describe(self) -> str:
        return f"flow-agent '{self.name}' (instance {self.instance}, pid {self.pid} on {self.host})"


def owner_of(run: FlowRun) -> Owner | None:
    """The agent that claimed the run: its labels, else its claim message; None if unknown."""
    labels = run.labels or {}
    instance = labels.get("flow-agent.instance")
    if instance and labels.get("flow-agent.host") and str(labels.get("flow-agent.pid", "")).isdigit():
        started = labels.get("flow-agent.started")
        return Owner(
            str(labels.get("prefect.worker.name", "")),
            str(instance),
            str(labels["flow-agent.host"]),
            int(labels["flow-agent.pid"]),
            float(started) if _is_float(started) else None,
        )
    state = run.state
    if state is not None and state.type is StateType.PENDING:
        return _claimant(state)
    return None


def claim_in(history: Iterable[State]) -> tuple[Owner, datetime | None] | None:
    """Who made the newest claim in a run's state history, and when: the owner of a run whose
    labels were never written (their write can fail for minutes on SQLite); None when the
    newest PENDING is not a flow-agent's claim, or there is none."""
    claims = [state for state in history if state.type is StateType.PENDING]
    if not claims:
        return None
    newest = max(claims, key=lambda state: state.timestamp or datetime.min.replace(tzinfo=UTC))
    owner = _claimant(newest)
    return None if owner is None else (owner, newest.timestamp)


def _claimant(state: State) -> Owner | None:
    match = _CLAIM.match(state.message or "")
    if match is None:
        return None
    return Owner(match["name"], match["instance"], match["host"], int(match["pid"]))


def _is_float(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    liveness: Liveness
    reason: str

    @property
    def dead(self) -> bool:
        return self.liveness is Liveness.DEAD


def judge(
    owner: Owner,
    me: Owner,
    *,
    workers: dict[str, Worker],
    claimed_at: datetime | None,
    now: datetime | None = None,
) -> Verdict:
    """Is `owner` (not this instance) provably dead? `workers`: the pool's rows by name."""
    if owner.instance == me.instance:
        return Verdict(Liveness.ALIVE, "this agent")
    if owner.host == me.host:
        return _judge_local(owner, claimed_at)
    if owner.name == me.name:
        return Verdict(
            Liveness.DEAD,
            f"{owner.describe()} was replaced: this agent now runs under its name as instance {me.instance}",
        )
    return _judge_remote(owner, workers.get(owner.name), now or datetime.now(UTC))


def _judge_local(owner: Owner, claimed_at: datetime | None) -> Verdict:
    try:
        process = psutil.Process(owner.pid)
        started = process.create_time()
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return Verdict(Liveness.DEAD, f"{owner.describe()} is gone: no process {owner.pid} on {owner.host}")
    except psutil.Error as exc:
        return Verdict(Liveness.UNKNOWN, f"cannot check process {owner.pid} on {owner.host}: {exc}")
    # the same pid may now be someone else: the owner existed when it claimed the run
    if owner.started is not None:
        same = abs(started - owner.started) < 1.0
    else:
        same = claimed_at is None or started <= claimed_at.timestamp() + 1.0
    if zombie or not same:
        return Verdict(
            Liveness.DEAD,
            f"{owner.describe()} is gone: pid {owner.pid} on {owner.host} is now another process",
        )
    return Verdict(Liveness.ALIVE, f"{owner.describe()} is running")


def _judge_remote(owner: Owner, worker: Worker | None, now: datetime) -> Verdict:
    if worker is None or worker.last_heartbeat_time is None:
        return Verdict(
            Liveness.UNKNOWN,
            f"{owner.describe()} has no heartbeat on record in this pool; cannot tell whether it runs",
        )
    interval = float(worker.heartbeat_interval_seconds or 30)
    age = (now - worker.last_heartbeat_time).total_seconds()
    bound = STALE_HEARTBEATS * interval + SWEEP_SECONDS
    if (worker.status or "").upper() == "OFFLINE" or age > bound:
        return Verdict(
            Liveness.DEAD,
            f"{owner.describe()} stopped heartbeating {age:.0f} s ago (its interval is {interval:.0f} s)",
        )
    return Verdict(Liveness.ALIVE, f"{owner.describe()} heartbeated {age:.0f} s ago")


def age_seconds(when: datetime | None) -> float:
    """Seconds since `when` (0 if unknown)."""
    if when is None:
        return 0.0
    return max(0.0, time.time() - when.timestamp())
