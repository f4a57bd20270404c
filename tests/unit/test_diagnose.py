"""The reasoning of `flow-agent why`, rule by rule, over plain data (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.api.agents import AgentStatus
from agent.api.concurrency import DeploymentLimit, GlobalLimit, TagLimit
from agent.api.models import RunInfo, State, StateType, Worker, WorkPool
from agent.api.work_queues import WorkQueue
from agent.orchestrate.diagnose import PAGE, Facts, PoolFacts, diagnose, online_workers

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def run(
    run_id: str = "r1",
    *,
    state: StateType = StateType.SCHEDULED,
    name: str | None = None,
    message: str | None = None,
    queue: str = "default",
    due: datetime = NOW - timedelta(minutes=5),
    **extra: Any,
) -> RunInfo:
    return RunInfo(
        id=run_id,
        name=f"run-{run_id}",
        work_pool_name=extra.pop("pool", "p"),
        work_queue_name=queue,
        state=State(type=state, name=name or state.value.title(), message=message, timestamp=NOW),
        expected_start_time=due,
        next_scheduled_start_time=due,
        **extra,
    )


def worker(name: str = "w", seconds_ago: float = 5) -> Worker:
    return Worker(
        name=name,
        status="ONLINE",
        last_heartbeat_time=NOW - timedelta(seconds=seconds_ago),
        heartbeat_interval_seconds=30,
    )


def agent(**fields: Any) -> AgentStatus:
    base: dict[str, Any] = {"name": "a1", "pools": ["p"], "limit": None, "free_slots": None}
    return AgentStatus.model_validate({**base, **fields})


def facts(the_run: RunInfo | None = None, **fields: Any) -> Facts:
    pool_fields = {k: fields.pop(k) for k in ("queues", "workers", "active", "due") if k in fields}
    pool = WorkPool(id="pid", name="p", type="process", **fields.pop("pool_fields", {}))
    return Facts(
        run=the_run or run(),
        now=NOW,
        pool=PoolFacts(pool=pool, **{"workers": [worker()], **pool_fields}),
        **fields,
    )


def codes(f: Facts) -> list[str]:
    return [c.code for c in diagnose(f).causes]


def test_a_due_run_with_nothing_in_the_way_says_so() -> None:
    d = diagnose(facts())
    assert d.causes == []
    assert "nothing found holds it back" in d.headline


def test_no_pool_and_a_missing_pool() -> None:
    f = facts(run(pool=None))
    assert codes(f) == ["no_pool"]
    f = facts()
    f.pool = PoolFacts(None)
    assert codes(f) == ["pool_missing"]


def test_no_agent_names_the_last_heartbeat_and_the_command() -> None:
    d = diagnose(facts(workers=[worker("old-agent", seconds_ago=3600)]))
    (cause,) = d.causes
    assert cause.code == "no_agent"
    assert "'old-agent' 60 min ago" in cause.summary
    assert cause.fix == "start one: flow-agent start --pool p"
    assert online_workers([worker(seconds_ago=100)], NOW)  # within 3 x 30 s + 15 s
    assert not online_workers([worker(seconds_ago=106)], NOW)


def test_paused_pool_comes_before_a_paused_queue() -> None:
    f = facts(pool_fields={"is_paused": True}, queues=[WorkQueue(id="q", name="default", is_paused=True)])
    assert codes(f) == ["pool_paused", "queue_paused"]
    assert diagnose(f).reason.startswith("work pool 'p' is paused")


def test_pool_and_queue_limits_name_their_holders() -> None:
    holders = [run(f"h{i}", state=StateType.RUNNING) for i in range(7)]
    f = facts(
        pool_fields={"concurrency_limit": 7},
        queues=[WorkQueue(id="q", name="default", concurrency_limit=2)],
        active=holders,
    )
    pool_cause, queue_cause = diagnose(f).causes
    assert pool_cause.code == "pool_concurrency_full"
    assert "7 run(s): run-h0 (Running)" in pool_cause.summary and "and 2 more" in pool_cause.summary
    assert queue_cause.code == "queue_concurrency_full"
    assert pool_cause.detail["holders"] == [h.id for h in holders]


def test_deployment_limit_by_slots_or_by_the_awaiting_state() -> None:
    limit = GlobalLimit(name="deployment:d", limit=1, active_slots=1)
    dep = DeploymentLimit(id="d", name="etl", global_concurrency_limit=limit)
    f = facts(deployment=dep, deployment_active=[run("h", state=StateType.PENDING)])
    assert codes(f) == ["deployment_concurrency_full"]
    # slots freed since, but the server sent the run back to wait: still the reason
    free = DeploymentLimit(id="d", name="etl", global_concurrency_limit=GlobalLimit(name="x", limit=1))
    waiting = run(name="AwaitingConcurrencySlot", due=NOW + timedelta(seconds=20))
    d = diagnose(facts(waiting, deployment=free))
    assert [c.code for c in d.causes] == ["deployment_concurrency_full"]
    assert d.headline.startswith("not running yet (AwaitingConcurrencySlot)")


def test_agents_queue_filter_and_limit() -> None:
    filtered = facts(agents=[agent(queues=["other"])])
    assert codes(filtered) == ["queue_filtered"]
    assert "--queue default" in diagnose(filtered).causes[0].fix
    full = facts(agents=[agent(limit=2, free_slots=0, in_flight=["x", "y"])])
    (cause,) = diagnose(full).causes
    assert cause.code == "agent_limit_full" and "--limit 2, in flight: x, y" in cause.summary
    # one agent with room is enough
    assert codes(facts(agents=[agent(limit=1, free_slots=0), agent(name="a2", free_slots=3)])) == []


def test_an_answering_agent_counts_as_polling_even_before_its_heartbeat() -> None:
    assert codes(facts(workers=[], agents=[agent()])) == []


def test_a_congested_page_puts_priority_first() -> None:
    ahead = [run(f"d{i}", queue="urgent") for i in range(PAGE)]
    f = facts(
        queues=[
            WorkQueue(id="q1", name="urgent", priority=1),
            WorkQueue(id="q2", name="default", priority=5),
        ],
        due=ahead,
    )
    (cause,) = diagnose(f).causes
    assert cause.code == "page_congested" and "priority 5" in cause.summary
    # the run among the first page: not congested
    assert codes(facts(due=[run()] + ahead[:10])) == []


def test_not_due_yet_and_tag_limits() -> None:
    later = run(due=NOW + timedelta(hours=3))
    f = facts(later, tag_limits=[TagLimit(tag="db", concurrency_limit=1, active_slots=["t1"])])
    d = diagnose(f)
    assert d.headline.startswith("not due yet: scheduled for 2026-12-03 15:00:00")
    assert [c.code for c in d.causes] == ["tag_concurrency_full"]


def test_pending_runs_name_who_holds_them_and_what_was_left_alone() -> None:
    pending = run(state=StateType.PENDING, message="Claimed by flow-agent 'a1' (instance 1, pid 2 on h)")
    d = diagnose(facts(pending, agents=[agent(in_flight=["r1"])]))
    assert "agent 'a1' is launching it" in d.headline
    left = diagnose(facts(pending, agents=[agent(left_alone={"r1": "a local process on another host"})]))
    assert [c.code for c in left.causes] == ["left_alone"]
    assert "a local process on another host" in left.reason


def test_ended_runs_are_explained_by_their_state() -> None:
    oom = run(state=StateType.CRASHED, message="exit code 137: killed (SIGKILL): possibly OOM")
    d = diagnose(facts(oom))
    assert d.headline.startswith("CRASHED: exit code 137")
    assert [c.code for c in d.causes] == ["oom"]
    crashed = diagnose(facts(run(state=StateType.CRASHED, message="exit code 3: general error")))
    assert [c.code for c in crashed.causes] == ["crashed"]
    done = diagnose(facts(run(state=StateType.COMPLETED)))
    assert done.headline == "Completed" and done.causes == []
    assert diagnose(facts(run(state=StateType.FAILED, message="boom"))).headline.startswith("FAILED: boom")


def test_json_has_every_field() -> None:
    body = diagnose(facts(workers=[])).to_json()
    assert set(body) == {"run_id", "run_name", "state", "pool", "queue", "headline", "causes"}
    assert body["causes"][0]["code"] == "no_agent" and body["causes"][0]["fix"]


def test_position_in_the_pool_is_told_when_nothing_holds_it_back() -> None:
    queues = [WorkQueue(id="q1", name="urgent", priority=1), WorkQueue(id="q2", name="default", priority=5)]
    later_but_urgent = run("u", queue="urgent", due=NOW - timedelta(minutes=1))
    d = diagnose(facts(queues=queues, due=[run(), later_but_urgent]))
    assert d.causes == []
    assert d.headline.endswith("(1 due run(s) come before it)")


def test_workers_that_did_not_answer_are_named_not_assumed_away() -> None:
    f = facts(workers=[worker("a1"), worker("prefect-worker-x")], agents=[agent(limit=1, free_slots=0)])
    (cause,) = diagnose(f).causes
    assert cause.code == "agent_limit_full"
    assert "('prefect-worker-x' also poll(s) the pool; not asked)" in cause.summary
    # the agent that answered is not listed again
    assert "'a1' also" not in cause.summary
