"""Why a flow run is not running yet, or why it ended as it did: pure reasoning over what
was read from the server and from the agents' `/status`.

Every cause is a fact the server (or an agent) confirmed, in plain words, with its fix.
The order of `CAUSES` is the order in which they hold a run back: a paused pool is the
first thing to fix even when its limit is also full. Nothing here does I/O, so every
rule is tested with plain data (`agent/cli/why.py` does the reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.api.agents import AgentStatus
from agent.api.concurrency import DeploymentLimit, TagLimit
from agent.api.models import FILTER_PAGE, RunInfo, StateType, Worker, WorkPool
from agent.api.work_queues import WorkQueue

__all__ = ["Cause", "Diagnosis", "Facts", "PoolFacts", "diagnose", "online_workers"]

PAGE = FILTER_PAGE  # the most runs one poll returns when an agent asks for "all"
_SHOWN = 5  # slot holders named in a message
_OOM_CODES = ("exit code -9", "exit code 137", "exit code 247")


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


def diagnose(facts: Facts) -> Diagnosis:
    run = facts.run
    kind = run.current_type
    label = run.state_label
    if kind is None or kind in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
        causes, headline = _waiting(facts)
    else:
        causes, headline = _started(facts)
    return Diagnosis(
        run_id=run.id,
        run_name=run.name,
        state=label,
        pool=run.work_pool_name,
        queue=run.work_queue_name,
        headline=headline,
        causes=causes,
    )


# -- runs that have not started ---------------------------------------------------------------


def _waiting(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    if run.current_type is StateType.PAUSED:
        return [], f"paused by its flow ({_message(run) or 'waiting for input'}): resume it in the Prefect UI"
    if run.current_type is StateType.PENDING:
        return _pending(facts)
    if run.work_pool_name is None:
        cause = Cause(
            "no_pool",
            "the run has no work pool, so no agent will ever pick it up",
            "deploy the flow to a work pool (deployment work_pool_name) and run it from the deployment",
        )
        return [cause], "not running: it is in no work pool"
    pool = facts.pool.pool
    if pool is None:
        cause = Cause(
            "pool_missing",
            f"work pool {run.work_pool_name!r} does not exist",
            f"create it, or start an agent that creates it: flow-agent start --pool {run.work_pool_name}",
        )
        return [cause], "not running: its work pool does not exist"
    causes = [
        c
        for check in (_paused, _no_agent, _agents, _pool_limit, _queue_limit, _deployment_limit, _position)
        for c in check(facts)
    ]
    causes += _tags(facts)
    due_at = run.next_scheduled_start_time or run.expected_start_time
    if due_at is not None and due_at > facts.now and run.state_label != "AwaitingConcurrencySlot":
        headline = f"not due yet: scheduled for {_at(due_at)} (in {_ago(due_at - facts.now)})"
    elif causes:
        headline = f"not running yet ({run.state_label}): {causes[0].summary}"
    else:
        late = f", due {_ago(facts.now - due_at)} ago" if due_at else ""
        ahead = _ahead(facts)
        queue = f" ({ahead} due run(s) come before it)" if ahead else ""
        headline = (
            f"due{late} and nothing found holds it back: an agent serving pool {pool.name!r} "
            f"should claim it at its next poll{queue}"
        )
    return causes, headline


def _pending(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    claimed = _message(run) or "claimed by a worker"
    causes = _left_alone(facts)
    holder = next((a for a in facts.agents if run.id in a.in_flight), None)
    if holder is not None:
        headline = f"PENDING: {claimed}; agent {holder.name!r} is launching it"
    else:
        since = run.state.timestamp if run.state else None
        when = f" for {_ago(facts.now - since)}" if since else ""
        headline = f"PENDING{when}: {claimed}; its infrastructure has not started the flow yet"
    return causes, headline


def _paused(facts: Facts) -> list[Cause]:
    pool = facts.pool.pool
    assert pool is not None
    causes = []
    if pool.is_paused:
        causes.append(
            Cause(
                "pool_paused",
                f"work pool {pool.name!r} is paused: no agent gets its runs",
                f"resume the pool in the Prefect UI (Work Pools > {pool.name} > Resume) or "
                f"PATCH /work_pools/{pool.name} with is_paused false",
            )
        )
    queue = _queue(facts)
    if queue is not None and queue.is_paused:
        causes.append(
            Cause(
                "queue_paused",
                f"work queue {queue.name!r} of pool {pool.name!r} is paused",
                f"resume the queue in the Prefect UI (Work Pools > {pool.name} > Work Queues > {queue.name})",
            )
        )
    return causes


def _no_agent(facts: Facts) -> list[Cause]:
    pool = facts.pool.pool
    assert pool is not None
    if online_workers(facts.pool.workers, facts.now) or any(a.serves(pool.name, None) for a in facts.agents):
        return []
    last = max(
        (w for w in facts.pool.workers if w.last_heartbeat_time),
        key=lambda w: w.last_heartbeat_time,
        default=None,
    )
    seen = (
        f"; the last heartbeat was from {last.name!r} {_ago(facts.now - last.last_heartbeat_time)} ago"
        if last is not None and last.last_heartbeat_time is not None
        else "; no agent or worker ever heartbeated it"
    )
    return [
        Cause(
            "no_agent",
            f"no agent polls work pool {pool.name!r}{seen}",
            f"start one: flow-agent start --pool {pool.name}",
            {"workers": [w.name for w in facts.pool.workers]},
        )
    ]


def _agents(facts: Facts) -> list[Cause]:
    """What the agents that answered /status say: queue filters and their --limit."""
    run = facts.run
    mine = [a for a in facts.agents if run.work_pool_name in a.pools]
    if not mine:
        return []
    serving = [a for a in mine if a.serves(run.work_pool_name, run.work_queue_name)]
    # workers heartbeating the pool that did not answer /status may serve it: never hidden
    known = {a.name for a in facts.agents}
    others = [w.name for w in online_workers(facts.pool.workers, facts.now) if w.name not in known]
    unsure = f" ({', '.join(map(repr, others))} also poll(s) the pool; not asked)" if others else ""
    if not serving:
        names = ", ".join(f"{a.name!r} (queues {', '.join(a.queues)})" for a in mine)
        return [
            Cause(
                "queue_filtered",
                f"the agents on pool {run.work_pool_name!r} filter queue {run.work_queue_name!r} "
                f"out: {names}{unsure}",
                f"start an agent with --queue {run.work_queue_name} (or without --queue) on this pool",
                {"agents": [a.name for a in mine]},
            )
        ]
    if all(a.free_slots == 0 for a in serving):
        held = ", ".join(f"{a.name!r} (--limit {a.limit}, in flight: {_ids(a.in_flight)})" for a in serving)
        return [
            Cause(
                "agent_limit_full",
                f"every agent serving it is at its --limit: {held}{unsure}",
                "raise --limit (FLOW_AGENT_LIMIT), or start another agent on this pool",
                {"agents": [{"name": a.name, "limit": a.limit, "in_flight": a.in_flight} for a in serving]},
            )
        ]
    return []


def _pool_limit(facts: Facts) -> list[Cause]:
    pool = facts.pool.pool
    assert pool is not None
    if pool.concurrency_limit is None or len(facts.pool.active) < pool.concurrency_limit:
        return []
    holders = facts.pool.active
    return [
        Cause(
            "pool_concurrency_full",
            f"work pool {pool.name!r} has its concurrency limit of {pool.concurrency_limit} "
            f"taken by {_holders(holders)}",
            "wait for them to end, or raise the pool's concurrency limit "
            f"(Prefect UI: Work Pools > {pool.name})",
            {"limit": pool.concurrency_limit, "holders": [r.id for r in holders]},
        )
    ]


def _queue_limit(facts: Facts) -> list[Cause]:
    queue = _queue(facts)
    if queue is None or queue.concurrency_limit is None:
        return []
    holders = [r for r in facts.pool.active if r.work_queue_name == queue.name]
    if len(holders) < queue.concurrency_limit:
        return []
    return [
        Cause(
            "queue_concurrency_full",
            f"work queue {queue.name!r} has its concurrency limit of {queue.concurrency_limit} "
            f"taken by {_holders(holders)}",
            "wait for them to end, or raise the queue's concurrency limit in the Prefect UI",
            {"limit": queue.concurrency_limit, "holders": [r.id for r in holders]},
        )
    ]


def _deployment_limit(facts: Facts) -> list[Cause]:
    deployment = facts.deployment
    if deployment is None:
        return []
    causes = []
    limit = deployment.global_concurrency_limit
    awaiting = facts.run.state_label == "AwaitingConcurrencySlot"
    if limit is not None and (limit.full or awaiting):
        holders = facts.deployment_active
        causes.append(
            Cause(
                "deployment_concurrency_full",
                f"deployment {deployment.name!r} has its concurrency limit of {limit.limit} "
                f"taken by {_holders(holders) if holders else f'{limit.active_slots} run(s)'}",
                "wait for them to end, or raise the deployment's concurrency_limit",
                {
                    "limit": limit.limit,
                    "active_slots": limit.active_slots,
                    "holders": [r.id for r in holders],
                },
            )
        )
    return causes


def _ahead(facts: Facts) -> int:
    """How many due runs a poll serves before this one (queue priority, then time due);
    a full page when the run is not within the page that was read."""
    priority = {q.name: q.priority for q in facts.pool.queues}
    due = sorted(
        facts.pool.due,
        key=lambda r: (priority.get(r.work_queue_name or "", 1), r.next_scheduled_start_time or facts.now),
    )
    ids = [r.id for r in due]
    return ids.index(facts.run.id) if facts.run.id in ids else len(due)


def _position(facts: Facts) -> list[Cause]:
    run = facts.run
    ahead = _ahead(facts)
    if ahead < PAGE:
        return []
    priority = next((q.priority for q in facts.pool.queues if q.name == run.work_queue_name), 1)
    return [
        Cause(
            "page_congested",
            f"at least {PAGE} due runs of pool {run.work_pool_name!r} come before it (queue priority "
            f"{priority}), more than one poll returns",
            "add agents or raise --limit, or give its queue a higher priority (a lower number)",
            {"ahead": ahead},
        )
    ]


def _tags(facts: Facts) -> list[Cause]:
    return [
        Cause(
            "tag_concurrency_full",
            f"tag {limit.tag!r} has its concurrency limit of {limit.concurrency_limit} taken: "
            "the run can start, but its tasks with that tag will wait",
            f"wait, or raise the limit of tag {limit.tag!r} (Prefect UI: Concurrency)",
            {"tag": limit.tag, "holders": limit.active_slots},
        )
        for limit in facts.tag_limits
        if limit.full
    ]


def _left_alone(facts: Facts) -> list[Cause]:
    for agent in facts.agents:
        reason = agent.left_alone.get(facts.run.id)
        if reason:
            return [
                Cause(
                    "left_alone",
                    f"agent {agent.name!r} leaves it alone: {reason}",
                    "start an agent where its owner ran (same host for a process run), or cancel it",
                    {"agent": agent.name},
                )
            ]
    return []


# -- runs that started or ended ------------------------------------------------------------------


def _started(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    kind = run.current_type
    message = _message(run)
    if kind is StateType.RUNNING:
        holder = next((a.name for a in facts.agents if run.id in a.in_flight), None)
        by = f" under agent {holder!r}" if holder else ""
        return _left_alone(facts), f"running{by} since {_at(run.start_time)}"
    if kind is StateType.CANCELLING:
        return [], "being cancelled: the agent running it kills its infrastructure, then it is CANCELLED"
    if kind is StateType.CRASHED:
        return _crashed(message), f"CRASHED: {message or 'no message'}"
    if kind is StateType.FAILED:
        return [], f"FAILED: {message or 'the flow raised an error'} (see the run's logs)"
    return [], f"{run.state_label}{': ' + message if message else ''}"


def _crashed(message: str) -> list[Cause]:
    if any(code in message for code in _OOM_CODES) or "OOM" in message or "out of memory" in message.lower():
        return [
            Cause(
                "oom",
                "its process was killed by SIGKILL, most often the out-of-memory killer (OOM)",
                "give the run more memory (the pool's or deployment's memory job variable), or find what "
                "else killed it with SIGKILL",
            )
        ]
    if "flow-agent was stopped" in message:
        return [Cause("agent_stopped", "the agent running it was stopped", "let runs finish before stopping")]
    return [
        Cause("crashed", message or "its infrastructure ended without a final state", "see the run's logs")
    ]


# -- wording --------------------------------------------------------------------------------------


def _queue(facts: Facts) -> WorkQueue | None:
    return next((q for q in facts.pool.queues if q.name == facts.run.work_queue_name), None)


def _message(run: RunInfo) -> str:
    return (run.state.message or "") if run.state else ""


def _holders(runs: Sequence[RunInfo]) -> str:
    shown = ", ".join(f"{r.name or r.id} ({r.state_label})" for r in runs[:_SHOWN])
    more = f" and {len(runs) - _SHOWN} more" if len(runs) > _SHOWN else ""
    return f"{len(runs)} run(s): {shown}{more}" if runs else "runs not visible to this client"


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def _at(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else "an unknown time"


def _ago(delta: timedelta) -> str:
    seconds = int(max(0.0, delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
