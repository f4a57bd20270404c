"""Staged shutdown: the first SIGTERM drains, the second kills and reports."""

from __future__ import annotations

import signal

import pytest
from support.prefect_api import (
    PrefectAPI,
    holds_for,
    os_pid,
    process_gone,
    state_message,
    state_type,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_first_sigterm_drains_second_kills_and_reports(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "sleep 300")
    running = api.create_flow_run(deployment)["id"]
    agent = start_agent(pool)
    pid = os_pid(api.wait_for_pid(running))

    agent.send_signal(signal.SIGTERM)
    waiting = api.create_flow_run(deployment)["id"]

    def draining() -> bool:
        return (
            agent.alive() and not process_gone(pid) and state_type(api.read_flow_run(waiting)) == "SCHEDULED"
        )

    holds_for(draining, 3, message="after one SIGTERM: agent up, run alive, no new claims")

    agent.send_signal(signal.SIGTERM)

    wait_for(lambda: process_gone(pid), 30, message=f"the run's process {pid} to be killed")
    assert agent.wait(timeout=30) == 0, agent.describe()
    run = api.read_flow_run(running)
    assert state_type(run) == "CRASHED"
    assert "flow-agent" in state_message(run) and "stopped" in state_message(run)
    assert state_type(api.read_flow_run(waiting)) == "SCHEDULED"
