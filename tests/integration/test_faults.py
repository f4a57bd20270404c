"""The agent behind a hostile network: injected 503s, an outage, a server refusing credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.prefect_api import (
    TERMINAL,
    PrefectAPI,
    duplicates,
    marker_command,
    read_markers,
    state_message,
    state_type,
    unexpected_crashes,
    wait_for,
)
from support.proxy import FaultProxy
from support.server import PrefectServer

pytestmark = pytest.mark.integration


@pytest.fixture
def flaky_api(prefect_server: PrefectServer) -> Iterator[FaultProxy]:
    """The server behind a proxy that answers a third of the requests with 503."""
    with FaultProxy(prefect_server.api_url, fail_ratio=1 / 3) as proxy:
        yield proxy


def test_every_run_launched_once_through_injected_503s(
    api: PrefectAPI,
    pool: str,
    start_agent,
    flaky_api: FaultProxy,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    # Only the agent goes through the proxy; what it launches talks to the server directly
    # (job variable env wins over the agent's environment).
    direct = {"PREFECT_API_URL": prefect_server.api_url}
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    marker_runs = api.create_flow_runs(api.command_deployment(pool, marker_command(markers), env=direct), 40)
    flow_runs = api.create_flow_runs(api.real_flow_deployment(pool, tmp_path, env=direct), 3)
    all_runs = marker_runs + flow_runs

    start_agent(pool, api_url=flaky_api.url)

    wait_for(api.all_launched_or_ended(all_runs), 120, interval=1, message="all 43 runs launched")
    wait_for(lambda: len(read_markers(markers)) >= 40, 60, message="40 markers")
    finished = wait_for(
        lambda: all(state_type(run) in TERMINAL for run in api.read_flow_runs(flow_runs)),
        120,
        interval=1,
        message="the 3 real flows to finish",
    )
    assert finished

    assert not duplicates(read_markers(markers)), "runs launched more than once"
    assert sorted(read_markers(markers)) == sorted(marker_runs)
    runs = {run["id"]: run for run in api.read_flow_runs(all_runs)}
    assert all(run["infrastructure_pid"] for run in runs.values())
    assert [state_type(runs[i]) for i in flow_runs] == ["COMPLETED"] * 3, [
        state_message(runs[i]) for i in flow_runs
    ]
    assert not unexpected_crashes(runs.values())
    assert flaky_api.injected > 0


def test_runs_created_during_an_outage_launch_once_it_ends(
    api: PrefectAPI,
    pool: str,
    start_agent,
    flaky_api: FaultProxy,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    flaky_api.set_fail_ratio(0)
    direct = {"PREFECT_API_URL": prefect_server.api_url}
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, marker_command(markers), env=direct)
    agent = start_agent(pool, api_url=flaky_api.url)
    wait_for(lambda: flaky_api.forwarded > 3, 60, message="the agent to talk to the server")

    flaky_api.set_down(True)
    run_ids = api.create_flow_runs(deployment, 5)
    wait_for(lambda: flaky_api.injected >= 10, 60, message="the agent to hit the outage")
    assert agent.alive(), agent.describe()
    flaky_api.set_down(False)

    wait_for(api.all_launched_or_ended(run_ids), 120, interval=1, message="all 5 runs launched")
    wait_for(lambda: len(read_markers(markers)) >= 5, 60, message="5 markers")
    assert agent.stop() == 0
    assert not duplicates(read_markers(markers)), "runs launched more than once"
    assert sorted(read_markers(markers)) == sorted(run_ids)


def test_rejected_credentials_stop_the_agent_with_a_hint(
    pool: str, start_agent, prefect_server: PrefectServer
) -> None:
    with FaultProxy(prefect_server.api_url, fail_ratio=1.0, status=401) as refusing:
        agent = start_agent(pool, api_url=refusing.url)
        code = agent.wait(timeout=60)

    assert code != 0
    assert "PREFECT_API_KEY" in agent.output()
