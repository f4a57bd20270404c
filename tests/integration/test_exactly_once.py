"""Two agents on one pool launch every run exactly once, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.prefect_api import (
    PrefectAPI,
    assert_each_launched_once,
    marker_command,
    read_markers,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_two_agents_launch_each_of_100_runs_once(
    any_api: PrefectAPI, pool: str, any_start_agent, tmp_path: Path
) -> None:
    api, start_agent = any_api, any_start_agent  # once against each database
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    run_ids = api.create_flow_runs(api.command_deployment(pool, marker_command(markers)), 100)

    agents = [start_agent(pool, "--name", f"{pool}-a"), start_agent(pool, "--name", f"{pool}-b")]

    wait_for(api.all_launched_or_ended(run_ids), 120, interval=1, message="all 100 runs launched")
    wait_for(lambda: len(read_markers(markers)) >= 100, 60, message="100 markers")
    for agent in agents:  # a duplicate launch in progress would have written by now
        assert agent.stop() == 0, agent.describe()

    assert_each_launched_once(api, markers, run_ids)


def test_a_burst_of_200_runs_loses_and_crashes_none(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    # A SQLite server answers write bursts with 503; none of them may cost a run.
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    run_ids = api.create_flow_runs(api.command_deployment(pool, marker_command(markers)), 200)

    agent = start_agent(pool)

    wait_for(api.all_launched_or_ended(run_ids), 180, interval=1, message="all 200 runs launched")
    wait_for(lambda: len(read_markers(markers)) >= 200, 60, message="200 markers")
    assert agent.stop() == 0, agent.describe()
    assert_each_launched_once(api, markers, run_ids)
