"""`run_deployment` and `flow-agent run` against a real Prefect server (and a real agent where
runs must end): parameters and job variables reach the child, waiting or not, idempotency,
scheduled start, and the parent/child link Prefect's UI draws."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer
from support.prefect_api import PrefectAPI, state_message, state_type
from support.server import PrefectServer
from typer.testing import CliRunner

from agent.api.client import PrefectClient
from agent.cli.runs import flow_runs_app, run_command
from agent.orchestrate import DeploymentNotFound, arun_deployment, run_deployment
from agent.retry import RetryPolicy

pytestmark = pytest.mark.integration

FLOWS = """\
import json
import os
from pathlib import Path

from prefect import flow


@flow
def child(name: str = "world", fail: bool = False, marker: str = "") -> str:
    if marker:
        Path(marker).write_text(json.dumps({"name": name, "var": os.environ.get("CHILD_VAR")}))
    if fail:
        raise ValueError("asked to fail")
    return name


@flow
def parent(child_deployment: str, marker: str = "") -> str:
    from agent.orchestrate import run_deployment

    run = run_deployment(
        child_deployment, parameters={"name": "from-parent", "marker": marker}, poll_interval=0.5
    )
    Path(marker + ".parent").write_text(run.id + " " + run.current_type.value)
    return run.current_type.value
"""


def deploy(api: PrefectAPI, pool: str, directory: Path, flow: str) -> str:
    """A deployment of `flow` from FLOWS; returns its 'flow/deployment' name."""
    (directory / "orch_flows.py").write_text(FLOWS)
    flow_id = api.create_flow(flow)
    name = f"{pool}-{flow}"
    api.create_deployment(
        flow_id,
        name,
        pool,
        entrypoint=f"orch_flows.py:{flow}",
        path=str(directory),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}],
    )
    return f"{flow}/{name}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, prefect_server: PrefectServer) -> str:
    """The library's default client talks to the test server; we are in no flow run."""
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT__FLOW_RUN_ID", "FLOW_AGENT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    monkeypatch.setenv("FLOW_AGENT_RETRY_INITIAL", "0.1")
    monkeypatch.setenv("FLOW_AGENT_RETRY_MAX", "1")
    return prefect_server.api_url


def client_for(api_url: str) -> PrefectClient:
    return PrefectClient(api_url, retry=RetryPolicy(initial=0.1, maximum=1.0))


def runs_of(api: PrefectAPI, deployment_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
    return api.request("POST", "/flow_runs/filter", json=body).json()


def deployment_id(api: PrefectAPI, name: str) -> str:
    return api.request("GET", f"/deployments/name/{name}").json()["id"]


# -- against an agent: runs really end -----------------------------------------------------------


def test_parameters_and_job_variables_arrive_and_waiting_returns_the_end_state(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path, env: str
) -> None:
    api.create_process_pool(pool)
    name = deploy(api, pool, tmp_path, "child")
    start_agent(pool)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    seen: list[str] = []

    async def both() -> tuple[Any, Any]:
        results: dict[str, Any] = {}
        async with client_for(env) as client, anyio.create_task_group() as tg:

            async def one(key: str, **kwargs: Any) -> None:
                results[key] = await arun_deployment(name, client=client, poll_interval=0.3, **kwargs)

            tg.start_soon(
                lambda: one(
                    "good",
                    parameters={"name": "ada", "marker": str(good)},
                    job_variables={"env": {"CHILD_VAR": "per-run"}},
                    tags=["orchestrated"],
                    flow_run_name="good-run",
                    on_update=lambda run: seen.append(run.state_label),
                )
            )
            tg.start_soon(lambda: one("bad", parameters={"fail": True, "marker": str(bad)}))
        return results["good"], results["bad"]

    completed, failed = anyio.run(both)

    assert completed.current_type.value == "COMPLETED", completed.state
    assert failed.current_type.value == "FAILED", failed.state
    # what the child process received
    assert json.loads(good.read_text()) == {"name": "ada", "var": "per-run"}
    assert json.loads(bad.read_text())["name"] == "world"  # the flow's default, not ours
    # and what the server holds
    run = api.read_flow_run(completed.id)
    assert run["parameters"] == {"name": "ada", "marker": str(good)}
    assert run["job_variables"] == {"env": {"CHILD_VAR": "per-run"}}
    assert run["tags"] == ["orchestrated"] and run["name"] == "good-run"
    assert run["parent_task_run_id"] is None  # not called from a flow run
    assert seen[0] == "Scheduled" and seen[-1] == "Completed"


def test_a_parent_flow_links_its_child_run(api: PrefectAPI, pool: str, start_agent, tmp_path: Path) -> None:
    api.create_process_pool(pool)
    child = deploy(api, pool, tmp_path, "child")
    parent = deploy(api, pool, tmp_path, "parent")
    marker = tmp_path / "from-parent.json"
    start_agent(pool)

    parent_run = api.create_flow_run(
        deployment_id(api, parent), parameters={"child_deployment": child, "marker": str(marker)}
    )
    ended = api.wait_for_state(parent_run["id"], "COMPLETED", "FAILED", "CRASHED", timeout=150)
    assert state_type(ended) == "COMPLETED", state_message(ended)

    child_id, child_state = (tmp_path / "from-parent.json.parent").read_text().split()
    assert child_state == "COMPLETED"
    assert json.loads(marker.read_text())["name"] == "from-parent"
    children = runs_of(api, deployment_id(api, child))
    assert [c["id"] for c in children] == [child_id]
    link = children[0]["parent_task_run_id"]
    assert link, "the child run is not linked to a task run"
    task_run = api.request("GET", f"/task_runs/{link}").json()
    assert task_run["flow_run_id"] == parent_run["id"]
    slug = re.sub(r"[^a-z0-9]+", "-", child.lower()).strip("-")
    assert task_run["task_key"] == f"prefect.deployments.flow_runs.run_deployment.{slug}"
    assert task_run["name"] == child
    assert state_type(task_run) == "COMPLETED"  # the placeholder followed the child
    # what the UI's graph reads: the parent's task runs include the placeholder
    body = {"task_runs": {"flow_run_id": {"any_": [parent_run["id"]]}}}
    assert link in [t["id"] for t in api.request("POST", "/task_runs/filter", json=body).json()]


def test_cli_run_watches_and_exits_with_the_outcome(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path, env: str
) -> None:
    api.create_process_pool(pool)
    name = deploy(api, pool, tmp_path, "child")
    start_agent(pool)
    app = typer.Typer()
    app.command("run")(run_command)
    app.add_typer(flow_runs_app, name="flow-runs")
    runner = CliRunner()
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"name": "from-file", "marker": str(tmp_path / "cli.json")}))

    ok = runner.invoke(
        app,
        ["run", name, "--params-json", str(params), "-p", "name=cli", "--watch", "--poll-interval", "0.3"],
    )
    failed = runner.invoke(
        app, ["run", name, "--param", "fail=true", "--timeout", "120", "--poll-interval", "0.3"]
    )
    unknown = runner.invoke(app, ["run", "nope/nothing"])
    bad = runner.invoke(app, ["run", name, "--param", "oops"])

    assert ok.exit_code == 0, ok.output
    assert "Completed" in ok.output
    assert json.loads((tmp_path / "cli.json").read_text())["name"] == "cli"  # --param wins over the file
    assert failed.exit_code == 1, failed.output
    assert "Failed" in failed.output
    assert unknown.exit_code == 4 and "not found" in unknown.output
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


# -- no agent: the runs stay scheduled -----------------------------------------------------------


def test_timeout_zero_does_not_wait_and_a_timeout_returns_the_run_as_it_stands(
    api: PrefectAPI, pool: str, tmp_path: Path, env: str
) -> None:
    api.create_process_pool(pool)
    name = deploy(api, pool, tmp_path, "child")

    started = time.monotonic()
    created = run_deployment(name, parameters={"name": "x"}, timeout=0)
    immediate = time.monotonic() - started

    started = time.monotonic()
    waited = run_deployment(name, timeout=1.5, poll_interval=0.2)
    elapsed = time.monotonic() - started

    assert created.current_type.value == "SCHEDULED"
    assert immediate < 5, immediate
    assert api.read_flow_run(created.id)["parameters"] == {"name": "x"}
    assert waited.current_type.value == "SCHEDULED"
    assert 1.5 <= elapsed < 6, elapsed
    assert waited.id != created.id


def test_one_idempotency_key_twenty_concurrent_calls_one_run(
    api: PrefectAPI, pool: str, tmp_path: Path, env: str
) -> None:
    api.create_process_pool(pool)
    name = deploy(api, pool, tmp_path, "child")
    key = f"nightly-{uuid.uuid4()}"

    async def twenty() -> list[str]:
        ids: list[str] = []

        async def call(i: int) -> None:
            # each call with its own client and connection, as twenty processes would
            run = await arun_deployment(
                name, parameters={"name": f"call-{i}"}, timeout=0, idempotency_key=key
            )
            ids.append(run.id)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(call, i)
        return ids

    ids = anyio.run(twenty)

    assert len(ids) == 20 and len(set(ids)) == 1, ids
    runs = runs_of(api, deployment_id(api, name))
    assert [r["id"] for r in runs] == [ids[0]]
    assert runs[0]["idempotency_key"] == key


def test_scheduled_time_is_the_expected_start(api: PrefectAPI, pool: str, tmp_path: Path, env: str) -> None:
    api.create_process_pool(pool)
    name = deploy(api, pool, tmp_path, "child")
    when = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=123000)

    run = run_deployment(name, parameters={"name": "later"}, scheduled_time=when, timeout=0)

    stored = api.read_flow_run(run.id)
    expected = datetime.fromisoformat(stored["expected_start_time"].replace("Z", "+00:00"))
    assert expected == when
    assert state_type(stored) == "SCHEDULED"
    scheduled = datetime.fromisoformat(
        stored["state"]["state_details"]["scheduled_time"].replace("Z", "+00:00")
    )
    assert scheduled == when
    assert run.expected_start_time == when

    # the CLI's --in lands the same way
    app = typer.Typer()
    app.command("run")(run_command)
    app.add_typer(flow_runs_app, name="flow-runs")
    before = datetime.now(UTC)
    result = CliRunner().invoke(app, ["run", name, "--in", "5h", "--param", "name=cli-later"])
    assert result.exit_code == 0, result.output
    later = [r for r in runs_of(api, deployment_id(api, name)) if r["parameters"].get("name") == "cli-later"]
    assert len(later) == 1
    start = datetime.fromisoformat(later[0]["expected_start_time"].replace("Z", "+00:00"))
    assert before + timedelta(hours=5) <= start <= datetime.now(UTC) + timedelta(hours=5)


def test_unknown_deployment_and_bad_name(env: str) -> None:
    with pytest.raises(DeploymentNotFound, match="nope/nothing"):
        run_deployment("nope/nothing", timeout=0)
    with pytest.raises(DeploymentNotFound):
        run_deployment(str(uuid.uuid4()), timeout=0)
    with pytest.raises(ValueError, match="flow-name/deployment-name"):
        run_deployment("no-slash", timeout=0)
    with pytest.raises(ValueError, match="negative"):
        run_deployment("a/b", timeout=-1)


def test_each_part_of_a_name_is_quoted(api: PrefectAPI, pool: str, tmp_path: Path, env: str) -> None:
    api.create_process_pool(pool)
    flow_id = api.create_flow(f"nightly etl {pool}")
    plain = api.create_deployment(flow_id, "eu west", pool)
    # unquoted, '?' would start a query string and find the deployment above
    asking = api.create_deployment(flow_id, "eu west?", pool)
    hashed = api.create_deployment(flow_id, "eu #2", pool)

    assert run_deployment(f"nightly etl {pool}/eu west", timeout=0).deployment_id == plain
    assert run_deployment(f"nightly etl {pool}/eu west?", timeout=0).deployment_id == asking
    assert run_deployment(f"nightly etl {pool}/eu #2", timeout=0).deployment_id == hashed
    # Prefect bans '/' in flow and deployment names: a second slash finds nothing, never another
    with pytest.raises(DeploymentNotFound) as missing:
        run_deployment(f"nightly etl {pool}/eu/west", timeout=0)
    message = str(missing.value)
    assert f"'nightly etl {pool}/eu/west' not found" in message and "flow-agent deployment ls" in message
