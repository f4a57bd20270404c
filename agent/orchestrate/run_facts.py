"""What `why` and `status` reason over: the facts read from the server and the agents'
`/status`, the causes found in them, and the plain words they are said in. Pure data and
wording, no I/O (`agent/cli/why.py` does the reading)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.api.agents import AgentStatus
from agent.api.concurrency import DeploymentLimit, TagLimit
from agent.api.models import RunInfo, Worker, WorkPool
from agent.api.work_queues import WorkQueue

__all__ = [
    "Cause",
    "Diagnosis",
    "Facts",
    "PoolFacts",
    "ago",
    "at_time",
    "holders_text",
    "ids_text",
    "online_workers",
    "queue_of",
    "state_message",
]

_SHOWN = 5  # slot holders named in a message


@dataclass(frozen=True)
class Cause:
    code: str
    summary: str  # one plain sentence: what holds the run back (or what ended it)
    fix: str  # what to do about it ("" when nothing is to be done)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolFacts:
    """What is read once per pool (and shared by every run of it in `status`)."""

    pool: WorkPool | None
    queues: list[WorkQueue] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    active: list[RunInfo] = field(default_factory=list)  # PENDING/RUNNING/CANCELLING runs of the pool
    due: list[RunInfo] = field(default_factory=list)  # due SCHEDULED runs, up to one page


@dataclass
class Facts:
    run: RunInfo
    now: datetime
    pool: PoolFacts
    deployment: DeploymentLimit | None = None
    deployment_active: list[RunInfo] = field(default_factory=list)
    tag_limits: list[TagLimit] = field(default_factory=list)
    agents: list[AgentStatus] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # agent URL -> why


@dataclass(frozen=True)
class Diagnosis:
    run_id: str
    run_name: str
    state: str
    pool: str | None
    queue: str | None
    headline: str
    causes: list[Cause]

    @property
    def reason(self) -> str:
        """The one line `status` shows."""
        return self.causes[0].summary if self.causes else self.headline

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def online_workers(workers: Sequence[Worker], now: datetime) -> list[Worker]:
    """Workers heartbeating now: within 3 of their own intervals + 15 s (as ownership rules)."""
    alive = []
    for w in workers:
        if w.last_heartbeat_time is None:
            continue
        allowed = 3 * (w.heartbeat_interval_seconds or 30) + 15
        if (now - w.last_heartbeat_time).total_seconds() <= allowed and w.status != "OFFLINE":
            alive.append(w)
    return alive


# -- wording --------------------------------------------------------------------------------------


def queue_of(facts: Facts) -> WorkQueue | None:
    return next((q for q in facts.pool.queues if q.name == facts.run.work_queue_name), None)


def state_message(run: RunInfo) -> str:
    return (run.state.message or "") if run.state else ""


def holders_text(runs: Sequence[RunInfo]) -> str:
    shown = ", ".join(f"{r.name or r.id} ({r.state_label})" for r in runs[:_SHOWN])
    more = f" and {len(runs) - _SHOWN} more" if len(runs) > _SHOWN else ""
    return f"{len(runs)} run(s): {shown}{more}" if runs else "runs not visible to this client"


def ids_text(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def at_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else "an unknown time"


def ago(delta: timedelta) -> str:
    seconds = int(max(0.0, delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
