"""`flow-agent flow-runs ls|delete|cancel` against a real Prefect server: exactly the matching
runs, 50 per bulk request, through 503s, a dry run that changes nothing, the one-by-one
fallback, and cancellation that reaches the agent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
import typer
from support.prefect_api import PrefectAPI, state_type
from support.proxy import FaultProxy
from support.server import PrefectServer
from typer.testing import CliRunner

from agent.api.client import PrefectClient
from agent.cli.runs import flow_runs_app, run_command
from agent.orchestrate import RunFilter, cancel_flow_runs, delete_flow_runs, select_flow_runs
from agent.retry import RetryPolicy

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT__FLOW_RUN_ID", "FLOW_AGENT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOW_AGENT_RETRY_INITIAL", "0.1")
    monkeypatch.setenv("FLOW_AGENT_RETRY_MAX", "1")
    app = typer.Typer()
    app.command("run")(run_command)
    app.add_typer(flow_runs_app, name="flow-runs")
    return app


@pytest.fixture
def flaky(prefect_server: PrefectServer) -> Iterator[FaultProxy]:
    """The server behind a proxy answering a third of the requests with 503."""
    with FaultProxy(prefect_server.api_url, fail_ratio=1 / 3) as proxy:
        yield proxy


def create_runs(api: PrefectAPI, deployment_id: str, count: int, state: dict[str, Any]) -> list[str]:
    """`count` runs created directly in `state`, one after the other."""
    path = f"/deployments/{deployment_id}/create_flow_run"
    return [api.request("POST", path, json={"state": state}).json()["id"] for _ in range(count)]


def ids_of(api: PrefectAPI, deployment_id: str) -> set[str]:
    found: set[str] = set()
    offset = 0
    while True:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200, "offset": offset}
        page = api.request("POST", "/flow_runs/filter", json=body).json()
        found.update(run["id"] for run in page)
        if len(page) < 200:
            return found
        offset += 200


COMPLETED = {"type": "COMPLETED", "name": "Completed"}
FAILED = {"type": "FAILED", "name": "Failed"}


def later(hours: float = 24) -> dict[str, Any]:
    when = (datetime.now(UTC) + timedelta(hours=hours)).isoformat()
    return {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": when}}


def test_delete_500_runs_by_state_through_503s_exactly_those(
    api: PrefectAPI,
    pool: str,
    cli: typer.Typer,
    flaky: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api.create_process_pool(pool)
    target = api.command_deployment(pool, "true", name="target")
    other = api.command_deployment(pool, "true", name="other")
    doomed = set(create_runs(api, target, 500, COMPLETED))
    kept_same_deployment = set(create_runs(api, target, 15, later()) + create_runs(api, target, 5, FAILED))
    kept_other_deployment = set(create_runs(api, other, 10, COMPLETED))
    name = f"flow-agent-tests/{pool}-target"
    monkeypatch.setenv("PREFECT_API_URL", flaky.url)
    runner = CliRunner()

    listed = runner.invoke(cli, ["flow-runs", "ls", "--deployment", name, "--state", "completed", "-n", "5"])
    dry = runner.invoke(cli, ["flow-runs", "delete", "-d", name, "-s", "COMPLETED", "--dry-run"])
    unfiltered = runner.invoke(cli, ["flow-runs", "delete", "--yes"])
    declined = runner.invoke(cli, ["flow-runs", "delete", "-d", name, "-s", "COMPLETED"], input="n\n")

    assert listed.exit_code == 0, listed.output
    assert "5 of 500 matching flow runs" in listed.output
    assert dry.exit_code == 0, dry.output
    assert "Dry run: would delete 500" in dry.output and "... and 480 more" in dry.output
    assert unfiltered.exit_code == 2 and "--all" in unfiltered.output
    assert declined.exit_code == 1 and "Nothing changed" in declined.output
    assert ids_of(api, target) == doomed | kept_same_deployment  # nothing deleted so far

    # the real server's own 503s on top of the proxy's: another client writes meanwhile
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set() and len(written) < 40:
            written.extend(create_runs(api, other, 1, COMPLETED))

    background = threading.Thread(target=writer, daemon=True)
    background.start()
    flaky.reset_counts()
    try:
        deleted = runner.invoke(cli, ["flow-runs", "delete", "-d", name, "-s", "COMPLETED", "--yes"])
    finally:
        stop.set()
        background.join(30)

    assert deleted.exit_code == 0, deleted.output
    assert "Deleted 500 of 500 flow run(s)." in deleted.output
    assert ids_of(api, target) == kept_same_deployment
    assert ids_of(api, other) == kept_other_deployment | set(written)
    stats = flaky.stats()
    assert stats["injected"] > 0
    bulk_calls = stats["by_route"].get("POST /api/flow_runs/bulk_delete", 0)
    assert 10 <= bulk_calls < 40, stats["by_route"]  # 10 of 50, plus the retried ones
    assert "DELETE /api/flow_runs/{id}" not in stats["by_route"]


class NoBulkEndpoints(httpx.AsyncBaseTransport):
    """An older server: the bulk routes answer 404."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/bulk_" in request.url.path:
            self.refused += 1
            return httpx.Response(404, json={"detail": "Not Found"}, request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_one_by_one_fallback_without_bulk_endpoints(
    api: PrefectAPI, pool: str, prefect_server: PrefectServer
) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "true", name="old")
    failed = set(create_runs(api, deployment, 60, FAILED))
    scheduled = set(create_runs(api, deployment, 7, later()))
    transport = NoBulkEndpoints()

    async def scenario() -> tuple[Any, Any]:
        async with PrefectClient(
            prefect_server.api_url, transport=transport, retry=RetryPolicy(initial=0.1, maximum=1)
        ) as client:
            name = f"flow-agent-tests/{pool}-old"
            to_delete = await select_flow_runs(client, RunFilter(states=("FAILED",), deployments=(name,)))
            deleted = await delete_flow_runs(client, to_delete)
            from agent.orchestrate.batch import CANCELLABLE

            to_cancel = await select_flow_runs(client, RunFilter(deployments=(name,)), only=CANCELLABLE)
            cancelled = await cancel_flow_runs(client, to_cancel)
        return deleted, cancelled

    deleted, cancelled = anyio.run(scenario)

    assert not deleted.used_bulk and not cancelled.used_bulk
    assert set(deleted.done) == failed and not deleted.failed
    assert set(cancelled.done) == scheduled and not cancelled.failed
    assert ids_of(api, deployment) == scheduled
    assert {state_type(run) for run in api.read_flow_runs(scheduled)} == {"CANCELLED"}
    assert transport.refused == 2  # one try per kind, then one by one


def test_cancel_reaches_the_agent_and_never_touches_finished_runs(
    api: PrefectAPI, pool: str, cli: typer.Typer, start_agent, prefect_server: PrefectServer, monkeypatch
) -> None:
    api.create_process_pool(pool)
    sleeper = api.command_deployment(pool, "sleep 300", name="sleeper")
    waiting = api.command_deployment(pool, "true", name="waiting")
    running_id = api.create_flow_run(sleeper)["id"]
    agent = start_agent(pool)
    running = api.wait_for_pid(running_id, timeout=60)
    future = set(create_runs(api, waiting, 10, later()))
    finished = set(create_runs(api, waiting, 5, COMPLETED))
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)

    result = CliRunner().invoke(cli, ["flow-runs", "cancel", "--pool", pool, "--yes"])

    assert result.exit_code == 0, result.output
    assert "Cancelled 11 of 11 flow run(s)." in result.output
    assert {state_type(run) for run in api.read_flow_runs(future)} == {
        "CANCELLED"
    }  # at once, no agent needed
    assert {state_type(run) for run in api.read_flow_runs(finished)} == {"COMPLETED"}
    ended = api.wait_for_state(running_id, "CANCELLED", timeout=60)  # the agent killed `sleep`
    assert ended["infrastructure_pid"] == running["infrastructure_pid"]
    assert agent.alive()

    again = CliRunner().invoke(cli, ["flow-runs", "cancel", "--pool", pool, "--yes"])
    assert again.exit_code == 0 and "No flow runs to cancel" in again.output


def test_ls_filters_by_tag_flow_and_age(
    api: PrefectAPI, pool: str, cli: typer.Typer, prefect_server, monkeypatch
):
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "true", name="ls")
    path = f"/deployments/{deployment}/create_flow_run"
    tagged = api.request("POST", path, json={"state": COMPLETED, "tags": ["x", "y"]}).json()["id"]
    api.request("POST", path, json={"state": COMPLETED, "tags": ["x"]})
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    runner = CliRunner()

    both = runner.invoke(cli, ["flow-runs", "ls", "-p", pool, "-t", "x", "-t", "y", "-f", "flow-agent-tests"])
    old = runner.invoke(cli, ["flow-runs", "ls", "-p", pool, "--older-than", "1h"])
    new = runner.invoke(cli, ["flow-runs", "ls", "-p", pool, "--newer-than", "1h"])
    bad = runner.invoke(cli, ["flow-runs", "ls", "--older-than", "soon"])

    assert both.exit_code == 0, both.output
    assert "1 matching flow run" in both.output and tagged in both.output
    assert "0 matching flow runs" in old.output
    assert "2 matching flow runs" in new.output
    assert bad.exit_code == 2
