"""Agents reconciling at once: only one acts on a given run (issue 12).

Two whole agents are built in this process (as `flow-agent start` builds them) against a
real server, and their reconcilers look at the same orphaned runs at the same moment, many
times over: runs claimed by a dead agent with nothing launched (PENDING), and runs it left
RUNNING with no workload. Each run must get exactly one new state: one SCHEDULED, one
CRASHED, whoever wins. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.prefect_api import PrefectAPI, state_message, state_type

from agent.api import PrefectClient
from agent.observe.metrics import Metrics
from agent.observe.sdnotify import SystemdNotifier
from agent.runtime.app import Agent
from agent.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
ROUNDS = 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _dead_owner() -> dict[str, str]:
    """Labels of an agent that ran on this host and is gone (its pid is free again)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return {
        "prefect.worker.name": "gone-agent",
        "flow-agent.instance": uuid.uuid4().hex[:12],
        "flow-agent.host": socket.gethostname(),
        "flow-agent.pid": str(child.pid),
    }


def _orphan(api: PrefectAPI, run_id: str, owner: dict[str, str], state: str) -> None:
    message = (
        f"Claimed by flow-agent '{owner['prefect.worker.name']}' (instance {owner['flow-agent.instance']}, "
        f"pid {owner['flow-agent.pid']} on {owner['flow-agent.host']})"
    )
    for kind in ("PENDING", "RUNNING")[: 1 if state == "PENDING" else 2]:
        body = {"state": {"type": kind, "name": kind.title(), "message": message}, "force": False}
        assert api.request("POST", f"/flow_runs/{run_id}/set_state", json=body).json()["status"] == "ACCEPT"
    api.request("PATCH", f"/flow_runs/{run_id}/labels", json=owner)


def _states(api: PrefectAPI, run_id: str) -> list[str]:
    states = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    return [s["type"] for s in sorted(states, key=lambda s: s["timestamp"])]


async def _agent(api_url: str, pool: str, name: str, data_dir: Path) -> tuple[Agent, PrefectClient]:
    settings = Settings(api_url=api_url, pools=[pool], name=name, data_dir=data_dir, events=False)
    client = PrefectClient.from_settings(settings)
    agent = Agent(settings, client, environ={}, metrics=Metrics(), notifier=SystemdNotifier(None))
    await agent.pools.ensure_all()
    return agent, client


async def test_two_reconcilers_make_one_transition_per_run(
    any_api: PrefectAPI, any_server: Any, pool: str, tmp_path: Path
) -> None:
    api = any_api
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "true")
    pending, running = ([api.create_flow_run(deployment)["id"] for _ in range(8)] for _ in range(2))
    owner = _dead_owner()
    for run_id in pending:
        _orphan(api, run_id, owner, "PENDING")
    for run_id in running:
        _orphan(api, run_id, owner, "RUNNING")

    agents = [await _agent(any_server.api_url, pool, f"{pool}-{n}", tmp_path / n) for n in "ab"]
    try:
        async with anyio.create_task_group() as runs:
            for _ in range(ROUNDS):  # the same moment, again and again
                async with anyio.create_task_group() as both:
                    for agent, _client in agents:
                        both.start_soon(agent.reconciler.pass_once, runs)
            runs.cancel_scope.cancel()
    finally:
        for agent, client in agents:
            for backend in agent.backends.built():
                await backend.aclose()
            await client.aclose()

    for run_id in pending:
        assert _states(api, run_id) == ["SCHEDULED", "PENDING", "SCHEDULED"], run_id
        assert "nothing was launched" in state_message(api.read_flow_run(run_id))
    for run_id in running:
        assert _states(api, run_id) == ["SCHEDULED", "PENDING", "RUNNING", "CRASHED"], run_id
        run = api.read_flow_run(run_id)
        assert state_type(run) == "CRASHED" and "no agent was watching it" in state_message(run)
