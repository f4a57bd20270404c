"""A dead agent leaves nothing stuck, nothing unreported, nothing launched twice (issue 12).

Real Prefect flows on a process pool; the agent is SIGKILLed mid-work, a flow dies by
SIGKILL while no agent is up, and claims the dead agent made are on the server without
anything launched for them (exactly what a claim the server committed after the agent's
death looks like). A new agent, or one already serving the pool, must settle every run:
adopt what still runs, report how the rest ended, and reschedule what never launched.
Both on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.prefect_api import (
    TERMINAL,
    PrefectAPI,
    duplicates,
    holds_for,
    state_message,
    state_type,
    wait_for,
)

pytestmark = pytest.mark.integration

# A real flow that says it ran (one line per run that reached its body) and then naps.
NAP_SOURCE = """\
import os
import time

from prefect import flow


@flow
def nap(seconds: float = 0.0, markers: str = "") -> float:
    if markers:
        with open(markers, "a") as out:
            out.write(os.environ["PREFECT__FLOW_RUN_ID"] + "\\n")
    time.sleep(seconds)
    return seconds
"""
FAST = {"FLOW_AGENT_RECONCILE_INTERVAL": "1", "FLOW_AGENT_HEARTBEAT_INTERVAL": "2"}


def _nap_deployment(api: PrefectAPI, pool: str, directory: Path) -> str:
    (directory / "nap.py").write_text(NAP_SOURCE)
    return api.create_deployment(
        api.create_flow("nap"),
        f"{pool}-nap",
        pool,
        entrypoint="nap.py:nap",
        path=str(directory),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}],
    )


def _runs(api: PrefectAPI, deployment: str, count: int, seconds: float, markers: Path) -> list[str]:
    params = {"seconds": seconds, "markers": str(markers)}
    return [api.create_flow_run(deployment, parameters=params)["id"] for _ in range(count)]


def _claim_as(api: PrefectAPI, run_id: str, labels: dict[str, Any]) -> None:
    """Claim a run the way the dead agent would have, had the server committed its claim
    after the agent died: PENDING, saying who claimed it, nothing launched."""
    message = (
        f"Claimed by flow-agent '{labels['prefect.worker.name']}' (instance {labels['flow-agent.instance']}, "
        f"pid {labels['flow-agent.pid']} on {labels['flow-agent.host']})"
    )
    body = {"state": {"type": "PENDING", "name": "Pending", "message": message}, "force": False}
    answer = api.request("POST", f"/flow_runs/{run_id}/set_state", json=body).json()
    assert answer["status"] == "ACCEPT", answer


def _kill_flow_process(run: dict[str, Any]) -> None:
    """SIGKILL the flow's own process (what the OOM killer does), not the agent's supervisor."""
    pid = int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1])
    leader = psutil.Process(pid)
    victims = leader.children(recursive=True) or [leader]
    for process in victims:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)


def _owned_by(run: dict[str, Any], instance: str) -> bool:
    return (run.get("labels") or {}).get("flow-agent.instance") == instance or (
        state_type(run) == "PENDING" and f"instance {instance}," in state_message(run)
    )


def _workload_alive(run: dict[str, Any]) -> bool:
    pid = run.get("infrastructure_pid")
    if not pid:
        return False
    try:
        return psutil.Process(int(str(pid).rsplit(":", 1)[-1])).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _orphans(api: PrefectAPI, run_ids: list[str], dead_instance: str) -> list[str]:
    """Unfinished runs still left to the dead agent, or claiming a workload that is gone."""
    found = []
    for run in api.read_flow_runs(run_ids):
        kind = state_type(run)
        if kind not in ("PENDING", "RUNNING", "CANCELLING"):
            continue
        if _owned_by(run, dead_instance) or (run.get("infrastructure_pid") and not _workload_alive(run)):
            found.append(f"{run['id']} {kind} pid={run.get('infrastructure_pid')}")
    return found


def _running_states(api: PrefectAPI, run_id: str) -> int:
    states = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    return sum(1 for state in states if state["type"] == "RUNNING")


def _settle_and_check(
    api: PrefectAPI, run_ids: list[str], victim: str, dead_instance: str, markers: Path
) -> None:
    orphans: list[str] = []

    def none_orphaned() -> bool:
        orphans[:] = _orphans(api, run_ids, dead_instance)
        return not orphans

    wait_for(none_orphaned, 60, interval=1, message="no run left to the dead agent")
    runs = {run["id"]: run for run in wait_for(lambda: _all_ended(api, run_ids), 240, interval=2)}
    killed = runs.pop(victim)
    assert state_type(killed) == "CRASHED", state_message(killed)
    assert "-9" in state_message(killed) or "137" in state_message(killed), state_message(killed)
    assert "OOM" in state_message(killed) or "out-of-memory" in state_message(killed).lower()
    assert {run_id: state_type(run) for run_id, run in runs.items() if state_type(run) != "COMPLETED"} == {}
    launched = markers.read_text().split()
    assert not duplicates(launched), "a flow ran twice"
    assert sorted(set(launched)) == sorted(run_ids)
    assert [run_id for run_id in run_ids if _running_states(api, run_id) > 1] == []


def _all_ended(api: PrefectAPI, run_ids: list[str]) -> list[dict[str, Any]] | None:
    runs = api.read_flow_runs(run_ids)
    return runs if all(state_type(run) in TERMINAL for run in runs) else None


def _launch_and_kill(api: PrefectAPI, pool: str, start_agent, tmp_path: Path, count: int) -> tuple:
    """An agent launches `count` napping flows and is SIGKILLed once most are running."""
    markers = tmp_path / "ran.txt"
    api.create_process_pool(pool)
    deployment = _nap_deployment(api, pool, tmp_path)
    launched = _runs(api, deployment, count, 20, markers)
    first = start_agent(pool, "--name", f"{pool}-a", "--limit", str(count), env=FAST)
    wait_for(api.all_launched_or_ended(launched), 90, interval=0.5, message="all launched")

    def running() -> bool:
        return sum(state_type(r) == "RUNNING" for r in api.read_flow_runs(launched)) >= count // 2

    wait_for(running, 90, interval=0.5, message="half of them running")
    labels = api.read_flow_run(launched[0])["labels"]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    return deployment, markers, launched, labels


def test_sigkill_and_restart_settles_every_run(
    any_api: PrefectAPI, pool: str, any_start_agent, tmp_path: Path
) -> None:
    api, start_agent = any_api, any_start_agent
    deployment, markers, launched, labels = _launch_and_kill(api, pool, start_agent, tmp_path, 12)
    assert labels["flow-agent.host"] == socket.gethostname() and labels["prefect.work-pool.name"] == pool

    later = _runs(api, deployment, 18, 1, markers)
    for run_id in later[:6]:  # claimed by the dead agent, nothing launched
        _claim_as(api, run_id, labels)
    victim = next(r for r in api.read_flow_runs(launched) if state_type(r) == "RUNNING")
    _kill_flow_process(victim)  # no agent is up to see it

    start_agent(pool, "--name", f"{pool}-a", env=FAST)  # the restart, under the same name

    _settle_and_check(api, launched + later, victim["id"], labels["flow-agent.instance"], markers)


def test_another_agent_takes_over_a_dead_ones_runs(
    any_api: PrefectAPI, pool: str, any_start_agent, tmp_path: Path
) -> None:
    api, start_agent = any_api, any_start_agent
    deployment, markers, launched, labels = _launch_and_kill(api, pool, start_agent, tmp_path, 6)
    survivor = start_agent(pool, "--name", f"{pool}-b", env=FAST)
    later = _runs(api, deployment, 4, 1, markers)
    for run_id in later[:2]:
        _claim_as(api, run_id, labels)
    victim = next(r for r in api.read_flow_runs(launched) if state_type(r) == "RUNNING")
    _kill_flow_process(victim)

    _settle_and_check(api, launched + later, victim["id"], labels["flow-agent.instance"], markers)
    adopted = [r for r in api.read_flow_runs(launched) if r["id"] != victim["id"]]
    assert {r["labels"].get("prefect.worker.name") for r in adopted} == {f"{pool}-b"}
    assert survivor.alive()


def test_an_owner_that_is_alive_is_left_alone(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    """A claim by a live process on this host (this test) is not touched, however old."""
    api.create_process_pool(pool)
    deployment = _nap_deployment(api, pool, tmp_path)
    run_id = _runs(api, deployment, 1, 0, tmp_path / "ran.txt")[0]
    me = psutil.Process()
    labels = {
        "prefect.worker.name": "someone-else",
        "flow-agent.instance": uuid.uuid4().hex[:12],
        "flow-agent.pid": str(os.getpid()),
        "flow-agent.host": socket.gethostname(),
    }
    assert me.is_running()
    _claim_as(api, run_id, labels)
    agent = start_agent(pool, env=FAST)
    wait_for(lambda: "flow-agent started" in agent.output(), 60, message="the agent started")
    # the reconciler looks every second: five looks, and the claim stands
    holds_for(lambda: state_type(api.read_flow_run(run_id)) == "PENDING", 5, message="the claim stands")
    assert agent.alive()


def test_a_run_whose_owner_labels_were_never_written_is_still_settled(
    any_api: PrefectAPI, pool: str, any_start_agent, tmp_path: Path
) -> None:
    """On SQLite the labels' write can fail for minutes (a burst of claims): a run the dead
    agent claimed and its engine moved on to RUNNING carries no label, and its current state
    says nothing of who claimed it. The claim in its history still does."""
    api, start_agent = any_api, any_start_agent
    api.create_process_pool(pool)
    deployment = _nap_deployment(api, pool, tmp_path)
    orphan, alive = _runs(api, deployment, 2, 0, tmp_path / "ran.txt")
    gone = psutil.Popen(["true"])
    gone.wait()
    owners = {orphan: gone.pid, alive: os.getpid()}
    for run_id, pid in owners.items():
        _claim_as(api, run_id, _owner_labels(pid))
        body = {"state": {"type": "RUNNING", "name": "Running"}, "force": True}  # as its engine would
        api.request("POST", f"/flow_runs/{run_id}/set_state", json=body)
        assert not (api.read_flow_run(run_id).get("labels") or {}).get("flow-agent.instance")

    agent = start_agent(pool, env=FAST)

    def crashed() -> dict[str, Any] | None:
        run = api.read_flow_run(orphan)
        return run if state_type(run) == "CRASHED" else None

    settled = wait_for(crashed, 60, interval=0.5, message="the run of the dead claimant settled")
    assert f"pid {gone.pid}" in state_message(settled), state_message(settled)
    assert state_type(api.read_flow_run(alive)) == "RUNNING"  # its claimant (this test) lives
    assert agent.alive()


def _owner_labels(pid: int) -> dict[str, str]:
    return {
        "prefect.worker.name": "someone-else",
        "flow-agent.instance": uuid.uuid4().hex[:12],
        "flow-agent.pid": str(pid),
        "flow-agent.host": socket.gethostname(),
    }
