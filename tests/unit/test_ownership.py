"""Who owns a run, and when its owner is provably dead (pure judgement; real local processes)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psutil

from agent.api import FlowRun, WorkPool
from agent.api.models import State, StateType, Worker
from agent.runtime.ownership import Liveness, Owner, claim_in, judge, owner_of

POOL = WorkPool(id="p-1", name="etl", type="process")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _me() -> Owner:
    return Owner("agent-b", "bbbbbbbbbbbb", "host-b", 4242, 1.0)


def _run(**fields: object) -> FlowRun:
    return FlowRun.model_validate({"id": "r-1", **fields})


def test_labels_are_scalar_strings_and_name_the_owner() -> None:
    owner = Owner("etl agent", "a1b2c3d4e5f6", "h1", 123, 1700000000.5)
    labels = owner.labels(POOL)
    assert all(isinstance(v, str) for v in labels.values())
    assert labels["prefect.worker.name"] == "etl agent"
    assert labels["prefect.work-pool.id"] == "p-1"
    assert owner_of(_run(labels=labels)) == owner


def test_the_claim_message_alone_names_the_owner_of_a_pending_run() -> None:
    owner = Owner("it's mine", "a1b2c3d4e5f6", "h1.example", 77)
    state = State(type=StateType.PENDING, message=owner.claim_message())
    assert owner_of(_run(state=state)) == owner
    running = State(type=StateType.RUNNING, message=owner.claim_message())
    assert owner_of(_run(state=running)) is None  # only a claim's own state speaks for it


def test_a_run_nobody_claimed_has_no_owner() -> None:
    assert owner_of(_run(labels={"prefect.worker.name": "prefect-worker"})) is None


def test_same_host_dead_pid_is_proof_of_death() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    owner = Owner("agent-a", "aaaaaaaaaaaa", "host-b", child.pid, None)
    verdict = judge(owner, _me(), workers={}, claimed_at=NOW)
    assert verdict.liveness is Liveness.DEAD
    assert "gone" in verdict.reason


def test_same_host_live_owner_is_alive_but_a_reused_pid_is_not() -> None:
    me = psutil.Process()
    owner = Owner("agent-a", "aaaaaaaaaaaa", "host-b", me.pid, me.create_time())
    assert judge(owner, _me(), workers={}, claimed_at=None).liveness is Liveness.ALIVE
    reused = Owner("agent-a", "aaaaaaaaaaaa", "host-b", me.pid, me.create_time() - 3600)
    assert judge(reused, _me(), workers={}, claimed_at=None).liveness is Liveness.DEAD
    # no recorded start time: a process that started after the claim is not the claimer
    claimed_before_start = datetime.fromtimestamp(me.create_time() - 60, UTC)
    nameless = Owner("agent-a", "aaaaaaaaaaaa", "host-b", me.pid, None)
    assert judge(nameless, _me(), workers={}, claimed_at=claimed_before_start).dead


def test_other_host_owner_judged_by_its_heartbeat() -> None:
    owner = Owner("agent-a", "aaaaaaaaaaaa", "host-a", 1, None)
    fresh = Worker(
        name="agent-a",
        status="ONLINE",
        last_heartbeat_time=NOW - timedelta(seconds=20),
        heartbeat_interval_seconds=10,
    )
    stale = fresh.model_copy(update={"last_heartbeat_time": NOW - timedelta(seconds=46)})
    offline = fresh.model_copy(update={"status": "OFFLINE"})
    alive = judge(owner, _me(), workers={"agent-a": fresh}, claimed_at=None, now=NOW)
    assert alive.liveness is Liveness.ALIVE
    assert judge(owner, _me(), workers={"agent-a": stale}, claimed_at=None, now=NOW).dead
    assert judge(owner, _me(), workers={"agent-a": offline}, claimed_at=None, now=NOW).dead
    unknown = judge(owner, _me(), workers={}, claimed_at=None, now=NOW)
    assert unknown.liveness is Liveness.UNKNOWN


def test_replaced_under_the_same_name_elsewhere_is_dead_and_this_instance_alive() -> None:
    me = _me()
    predecessor = Owner(me.name, "aaaaaaaaaaaa", "old-pod", 1, None)
    assert judge(predecessor, me, workers={}, claimed_at=None).dead
    assert judge(me, me, workers={}, claimed_at=None).liveness is Liveness.ALIVE


def test_the_newest_claim_in_the_history_names_the_owner_once_the_run_moved_on() -> None:
    first, second = Owner("a", "aaaaaaaaaaaa", "h1", 1), Owner("b", "bbbbbbbbbbbb", "h2", 2)

    def state(kind: StateType, minute: int, message: str | None = None) -> State:
        return State(type=kind, message=message, timestamp=NOW + timedelta(minutes=minute))

    history = [
        state(StateType.RUNNING, 5),
        state(StateType.PENDING, 1, first.claim_message()),
        state(StateType.SCHEDULED, 0),
        state(StateType.PENDING, 4, second.claim_message()),  # claimed again after a retry
        state(StateType.SCHEDULED, 3),
    ]
    assert claim_in(history) == (second, NOW + timedelta(minutes=4))
    # the newest PENDING is someone else's (Prefect's worker): no flow-agent owns it now
    assert claim_in([*history, state(StateType.PENDING, 6, "Submitted by worker")]) is None
    assert claim_in([state(StateType.SCHEDULED, 0), state(StateType.RUNNING, 1)]) is None
