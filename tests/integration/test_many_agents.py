"""Three agents on one pool share its runs: each run launched exactly once, every agent
takes a share, and the agents do not race for the same runs. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from support.prefect_api import (
    PrefectAPI,
    assert_each_launched_once,
    marker_command,
    read_markers,
    wait_for,
)
from support.server import free_port

pytestmark = pytest.mark.integration

RUNS = 60


def claims_lost(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(m) for m in re.findall(r"^flow_agent_claims_lost_total\{[^}]*\} (\S+)$", text, re.M))


def claimed_by(api: PrefectAPI, run_id: str) -> str | None:
    """The agent whose claim (the PENDING state, written atomically with it) the run holds."""
    states = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    for state in states:
        found = re.match(r"Claimed by flow-agent '(.*)' \(instance", state.get("message") or "")
        if state["type"] == "PENDING" and found:
            return found[1]
    return None


def test_three_agents_share_a_pool_and_launch_each_run_once(
    any_api: PrefectAPI, pool: str, any_start_agent, tmp_path: Path
) -> None:
    api, start_agent = any_api, any_start_agent  # once against each database
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, marker_command(markers))
    names = [f"{pool}-{n}" for n in "abc"]
    ports = [free_port() for _ in names]
    agents = [
        start_agent(pool, "--name", name, env={"FLOW_AGENT_HEALTH_PORT": str(port)})
        for name, port in zip(names, ports, strict=True)
    ]

    def heartbeating() -> bool:
        rows = api.request("POST", f"/work_pools/{pool}/workers/filter", json={}).json()
        return {row["name"] for row in rows} >= set(names)

    wait_for(heartbeating, 60, message="three agents heartbeating the pool")
    run_ids = api.create_flow_runs(deployment, RUNS)

    wait_for(api.all_launched_or_ended(run_ids), 120, interval=1, message=f"all {RUNS} runs launched")
    wait_for(lambda: len(read_markers(markers)) >= RUNS, 60, message=f"{RUNS} markers")
    lost = sum(claims_lost(port) for port in ports)
    for agent in agents:  # a duplicate launch in progress would have written by now
        assert agent.stop() == 0, agent.describe()

    assert_each_launched_once(api, markers, run_ids)
    by_agent = Counter(claimed_by(api, run_id) for run_id in run_ids)
    print(f"runs per agent: {dict(by_agent)}, claims lost: {lost:g}")
    assert set(by_agent) == set(names)  # every agent took a share
    # Racing for the same runs loses about two claims per run with three agents; spread, a
    # lost race is the exception (an agent whose view of its peers is a few seconds old).
    assert lost < RUNS / 2
