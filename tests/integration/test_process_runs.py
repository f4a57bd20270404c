"""One agent, one pool, runs that complete, crash, get killed, get cancelled, or queue up."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from support.agent_proc import AgentProcess
from support.prefect_api import (
    PrefectAPI,
    os_pid,
    process_gone,
    state_message,
    state_type,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_real_flow_completes(api: PrefectAPI, pool: str, start_agent, tmp_path: Path) -> None:
    api.create_process_pool(pool)
    deployment = api.real_flow_deployment(pool, tmp_path)
    run_id = api.create_flow_run(deployment, parameters={"name": "agent"})["id"]

    start_agent(pool)

    run = api.wait_for_state(run_id, "COMPLETED", "FAILED", "CRASHED", timeout=120)
    assert state_type(run) == "COMPLETED", state_message(run)
    assert run["infrastructure_pid"]


def test_agent_creates_a_missing_pool(api: PrefectAPI, pool: str, start_agent) -> None:
    start_agent(pool)

    created = wait_for(lambda: api.find_pool(pool), 60, message=f"pool {pool} to be created")

    assert created["type"] == "process"
    assert created["base_job_template"]["job_configuration"]["command"] == "{{ command }}"


def test_non_zero_exit_is_crashed_with_the_exit_code(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(api.command_deployment(pool, "sh -c 'exit 3'"))["id"]

    start_agent(pool)

    run = api.wait_for_state(run_id, "CRASHED", "COMPLETED", "FAILED")
    assert state_type(run) == "CRASHED"
    assert "exit code 3" in state_message(run)


def test_the_agents_lines_about_a_run_reach_the_server(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(api.command_deployment(pool, "sh -c 'exit 3'"))["id"]

    start_agent(pool)

    def exit_code_logged() -> list[str]:
        return [log["message"] for log in api.read_logs(run_id) if "exit code 3" in log["message"]]

    assert wait_for(exit_code_logged, 60, message="a run log mentioning 'exit code 3'")


def test_sigkill_is_crashed_with_an_oom_warning(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(api.command_deployment(pool, "sh -c 'kill -9 $$'"))["id"]

    start_agent(pool)

    run = api.wait_for_state(run_id, "CRASHED", "COMPLETED", "FAILED")
    assert state_type(run) == "CRASHED"
    assert "exit code -9" in state_message(run)
    assert "OOM" in state_message(run)


def test_cancelling_kills_the_process(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(api.command_deployment(pool, "sleep 300"))["id"]
    start_agent(pool)
    pid = os_pid(api.wait_for_pid(run_id))
    assert not process_gone(pid)

    api.cancel(run_id)

    run = api.wait_for_state(run_id, "CANCELLED", "CRASHED", "COMPLETED", "FAILED")
    assert state_type(run) == "CANCELLED", state_message(run)
    wait_for(lambda: process_gone(pid), 30, message=f"cancelled run's process {pid} to end")


def test_limit_caps_runs_in_flight(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_ids = api.create_flow_runs(api.command_deployment(pool, "sleep 2"), 6)
    agent = start_agent(pool, "--limit", "2")

    most_at_once = 0

    def all_launched_and_ended() -> bool:
        nonlocal most_at_once
        alive = running_sleeps(agent)
        most_at_once = max(most_at_once, len(alive))
        if alive:
            return False
        return all(run["infrastructure_pid"] for run in api.read_flow_runs(run_ids))

    wait_for(all_launched_and_ended, 120, interval=0.05, message="all 6 runs to run and end")
    assert 1 <= most_at_once <= 2


def running_sleeps(agent: AgentProcess) -> list[psutil.Process]:
    """The agent's live `sleep` processes (launched runs of this test)."""
    alive = []
    for child in agent.descendants():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline()[:1] == ["sleep"]:
                alive.append(child)
        except psutil.Error:
            pass
    return alive
