"""The causes that hold a due SCHEDULED run back, one rule each, in the order they do:
a paused pool is the first thing to fix even when its limit is also full. Each cause is a
fact the server (or an agent) confirmed, with its fix."""

from __future__ import annotations

from agent.api.models import FILTER_PAGE
from agent.orchestrate.run_facts import (
    Cause,
    Facts,
    ago,
    holders_text,
    ids_text,
    online_workers,
    queue_of,
)

__all__ = ["PAGE", "ahead", "held_back", "left_alone"]

PAGE = FILTER_PAGE  # the most runs one poll returns when an agent asks for "all"


def held_back(facts: Facts) -> list[Cause]:
    """Every cause that holds the run back, the one to fix first first."""
    checks = (_paused, _no_agent, _agents, _pool_limit, _queue_limit, _deployment_limit, _position)
    return [c for check in checks for c in check(facts)] + _tags(facts)


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
    queue = queue_of(facts)
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
        f"; the last heartbeat was from {last.name!r} {ago(facts.now - last.last_heartbeat_time)} ago"
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
        held = ", ".join(
            f"{a.name!r} (--limit {a.limit}, in flight: {ids_text(a.in_flight)})" for a in serving
        )
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
            f"taken by {holders_text(holders)}",
            "wait for them to end, or raise the pool's concurrency limit "
            f"(Prefect UI: Work Pools > {pool.name})",
            {"limit": pool.concurrency_limit, "holders": [r.id for r in holders]},
        )
    ]


def _queue_limit(facts: Facts) -> list[Cause]:
    queue = queue_of(facts)
    if queue is None or queue.concurrency_limit is None:
        return []
    holders = [r for r in facts.pool.active if r.work_queue_name == queue.name]
    if len(holders) < queue.concurrency_limit:
        return []
    return [
        Cause(
            "queue_concurrency_full",
            f"work queue {queue.name!r} has its concurrency limit of {queue.concurrency_limit} "
            f"taken by {holders_text(holders)}",
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
                f"taken by {holders_text(holders) if holders else f'{limit.active_slots} run(s)'}",
                "wait for them to end, or raise the deployment's concurrency_limit",
                {
                    "limit": limit.limit,
                    "active_slots": limit.active_slots,
                    "holders": [r.id for r in holders],
                },
            )
        )
    return causes


def ahead(facts: Facts) -> int:
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
    before = ahead(facts)
    if before < PAGE:
        return []
    priority = next((q.priority for q in facts.pool.queues if q.name == run.work_queue_name), 1)
    return [
        Cause(
            "page_congested",
            f"at least {PAGE} due runs of pool {run.work_pool_name!r} come before it (queue priority "
            f"{priority}), more than one poll returns",
            "add agents or raise --limit, or give its queue a higher priority (a lower number)",
            {"ahead": before},
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


def left_alone(facts: Facts) -> list[Cause]:
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
