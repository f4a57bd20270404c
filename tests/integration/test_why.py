"""`flow-agent why` and `flow-agent status` on the real server: each cause is set up for
real and the reason the CLI gives is asserted; the agent's own /status and metrics too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.agent_proc import AgentProcess
from support.prefect_api import PrefectAPI, state_type, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(api: PrefectAPI, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "PREFECT_"))}
    env["PREFECT_API_URL"] = api.api_url
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)  # not a terminal: JSON without --json


def why(api: PrefectAPI, run_id: str, *args: str) -> dict[str, Any]:
    return cli(api, "why", run_id, *args)


def codes(answer: dict[str, Any]) -> list[str]:
    return [cause["code"] for cause in answer["causes"]]


def run_in(api: PrefectAPI, deployment_id: str, queue: str | None = None) -> str:
    body: dict[str, Any] = {"parameters": {}}
    if queue:
        body["work_queue_name"] = queue
    return api.request("POST", f"/deployments/{deployment_id}/create_flow_run", json=body).json()["id"]


def agent_with_health(start_agent, pool: str, *args: str) -> tuple[str, AgentProcess]:
    port = free_port()
    proc = start_agent(pool, "--health-port", str(port), *args)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        return httpx.get(f"{url}/status", timeout=2).status_code == 200

    wait_for(answers, 60, message="the agent's /status")
    return url, proc


def running(api: PrefectAPI, run_id: str) -> None:
    """Launched: a command run is PENDING with its pid (no engine makes it RUNNING), and
    PENDING holds every concurrency slot as RUNNING does."""
    api.wait_for_pid(run_id)


def test_no_agent_on_the_pool(api: PrefectAPI, pool: str) -> None:
    api.create_process_pool(pool)
    run_id = run_in(api, api.command_deployment(pool, "true"))

    answer = why(api, run_id)

    assert answer["state"] in ("Scheduled", "Late")
    assert codes(answer)[0] == "no_agent"
    assert f"flow-agent start --pool {pool}" in answer["causes"][0]["fix"]


def test_paused_pool_and_paused_queue(api: PrefectAPI, pool: str) -> None:
    api.create_process_pool(pool)
    run_id = run_in(api, api.command_deployment(pool, "true"))
    api.request("PATCH", f"/work_pools/{pool}/queues/default", json={"is_paused": True})

    assert "queue_paused" in codes(why(api, run_id))

    api.request("PATCH", f"/work_pools/{pool}", json={"is_paused": True})
    answer = why(api, run_id)
    assert codes(answer)[:2] == ["pool_paused", "queue_paused"]
    assert "paused" in answer["headline"]


def test_pool_concurrency_full_names_the_holder(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    api.request("PATCH", f"/work_pools/{pool}", json={"concurrency_limit": 1})
    deployment = api.command_deployment(pool, "sleep 60")
    first = run_in(api, deployment)
    url, _ = agent_with_health(start_agent, pool)
    running(api, first)
    second = run_in(api, deployment)

    answer = why(api, second, "--agent", url)

    cause = next(c for c in answer["causes"] if c["code"] == "pool_concurrency_full")
    assert cause["detail"]["holders"] == [first]
    assert "no_agent" not in codes(answer)


def test_deployment_concurrency_full(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "sleep 60")
    api.request("PATCH", f"/deployments/{deployment}", json={"concurrency_limit": 1})
    first = run_in(api, deployment)
    start_agent(pool)
    running(api, first)
    second = run_in(api, deployment)

    def awaiting() -> bool:
        return api.read_flow_run(second)["state"]["name"] == "AwaitingConcurrencySlot"

    wait_for(awaiting, 60, message="the second run to await a deployment slot")
    answer = why(api, second)

    cause = next(c for c in answer["causes"] if c["code"] == "deployment_concurrency_full")
    assert cause["detail"]["holders"] == [first]
    assert "concurrency limit of 1" in cause["summary"]


def test_agent_limit_full_is_explained_logged_and_counted(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "sleep 60")
    first = run_in(api, deployment)
    url, proc = agent_with_health(start_agent, pool, "--limit", "1")
    running(api, first)
    second = run_in(api, deployment)

    answer = why(api, second, "--agent", url)

    assert codes(answer) == ["agent_limit_full"]
    assert first in answer["causes"][0]["summary"]
    assert "--limit" in answer["causes"][0]["fix"]

    def limit_full_metric() -> float:
        text = httpx.get(f"{url}/metrics", timeout=2).text
        found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        return found.get("flow_agent_limit_full", 0.0) == 1.0 and found

    wait_for(limit_full_metric, 30, message="flow_agent_limit_full = 1")
    time.sleep(6)  # at least one more look at the backlog (every 5 s) in the same episode
    metrics = limit_full_metric()
    assert metrics, "the limit is still full"
    assert metrics["flow_agent_limit_full_episodes_total"] == 1.0
    assert metrics["flow_agent_scheduled_backlog"] == 1.0  # the second run, due and unclaimed
    assert metrics["flow_agent_oldest_due_run_age_seconds"] >= 0.0
    said = [line for line in proc.lines() if "--limit is full" in line.get("event", "")]
    assert len(said) == 1, said  # once per episode, however many looks
    assert said[0]["due"] == 1 and "FLOW_AGENT_LIMIT" in said[0]["fix"]


def test_queue_filtered_out(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    api.request("POST", f"/work_pools/{pool}/queues/", json={"name": "other"})
    url, _ = agent_with_health(start_agent, pool, "--queue", "other")
    run_id = run_in(api, api.command_deployment(pool, "true"))

    answer = why(api, run_id, "--agent", url)

    assert codes(answer) == ["queue_filtered"]
    assert "--queue default" in answer["causes"][0]["fix"]


def test_crashed_with_an_oom_exit(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    run_id = run_in(api, api.command_deployment(pool, "sh -c 'kill -9 $$'"))
    start_agent(pool)
    assert state_type(api.wait_for_state(run_id, "CRASHED", "COMPLETED", "FAILED")) == "CRASHED"

    answer = why(api, run_id)

    assert answer["headline"].startswith("CRASHED: ")
    assert "exit code -9" in answer["headline"]
    assert codes(answer) == ["oom"]
    assert "memory" in answer["causes"][0]["fix"]
    (entry,) = cli(api, "status", "--pool", pool)["pools"]
    (crashed,) = entry["crashed"]  # in the last hour, with its explanation
    assert crashed["id"] == run_id and "exit code -9" in crashed["message"]


def test_status_lists_the_agent_and_its_runs(api: PrefectAPI, pool: str, start_agent) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "sleep 60")
    first = run_in(api, deployment)
    url, _ = agent_with_health(start_agent, pool, "--limit", "1", "--name", f"{pool}-agent")
    running(api, first)
    second = run_in(api, deployment)

    report = cli(api, "status", "--pool", pool, "--agent", url)

    (entry,) = report["pools"]
    (agent,) = entry["agents"]
    assert agent["name"] == f"{pool}-agent"
    assert agent["in_flight"] == [first]
    assert agent["free_slots"] == 0 and agent["last_heartbeat"]
    waiting = {run["id"]: run for run in entry["waiting"]}
    assert "--limit" in waiting[second]["reason"]
    assert f"agent {pool + '-agent'!r} is launching it" in waiting[first]["reason"]


@pytest.mark.parametrize(
    ("run_id", "said"),
    [("not-a-uuid", "is not a flow run id"), ("00000000-0000-4000-8000-000000000000", "no flow run")],
)
def test_why_a_bad_or_unknown_id_is_one_line(api: PrefectAPI, run_id: str, said: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "PREFECT_"))}
    env["PREFECT_API_URL"] = api.api_url
    result = subprocess.run(
        [sys.executable, "-m", "agent", "why", run_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert said in line
