"""The poller and the runner in this process, against the real server, on the fake backend.

Branches a subprocess test cannot reach on purpose: a cancel while the launch is still in
progress, a run deleted between launch and the pid report, a launch error, an exit
reported after the engine already ended the run. The agent is the real composition root
(`agent.runtime.app.Agent`) with a real PrefectClient; only the backend is the fake
(tests/support/fake_backend.py), registered through `agent.registry` like any kind, and
scripted per run by job variables. Each test has its own work pool of type "fake" and
asserts on the server's state history.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pytest
import structlog
from support.fake_backend import FAKE_TEMPLATE, FakeBackend, fake_registered
from support.prefect_api import PrefectAPI, state_message, state_type
from support.server import PrefectServer

from agent.api import PrefectClient
from agent.observe.metrics import Metrics
from agent.observe.sdnotify import SystemdNotifier
from agent.runtime.app import Agent
from agent.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

T = TypeVar("T")
KILL_GRACE = 0.5
WAIT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_kind() -> Iterator[None]:
    with fake_registered():
        yield


@pytest.fixture
def fake_pool(api: PrefectAPI, pool: str) -> str:
    body = {"name": pool, "type": "fake", "base_job_template": FAKE_TEMPLATE}
    api.request("POST", "/work_pools/", json=body)
    return pool


@pytest.fixture
def deployment(api: PrefectAPI, fake_pool: str) -> str:
    flow_id = api.create_flow("flow-agent-inprocess")
    return api.create_deployment(flow_id, f"{fake_pool}-fake", fake_pool)


@pytest.fixture
def make_agent(fake_kind: None, prefect_server: PrefectServer, tmp_path: Path) -> Callable[..., Agent]:
    def make(pool: str, *, limit: int | None = None) -> Agent:
        settings = Settings(
            api_url=prefect_server.api_url,
            pools=[pool],
            limit=limit,
            name="flow-agent-inprocess",
            poll_interval=0.2,
            events=False,
            kill_grace=KILL_GRACE,
            data_dir=tmp_path,
        )
        api = PrefectClient.from_settings(settings)
        return Agent(settings, api, environ={}, metrics=Metrics(), notifier=SystemdNotifier(None))

    return make


# -- helpers --------------------------------------------------------------------------------


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking PrefectAPI call, off the event loop the agent runs on."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@contextlib.asynccontextmanager
async def serving(agent: Agent) -> AsyncIterator[FakeBackend]:
    """The agent's poller runs (claimed runs go to its runner) for the block's duration."""
    await agent.pools.ensure_all()
    backend = agent.backends["fake"]
    assert isinstance(backend, FakeBackend)
    try:
        async with anyio.create_task_group() as runs:
            runs.start_soon(agent.poller.run, agent.stop, runs)
            yield backend
            agent.stop.set()
            with anyio.move_on_after(WAIT):
                await agent.runner.wait_idle()
            runs.cancel_scope.cancel()
    finally:
        for built in agent.backends.built():
            await built.aclose()
        await agent.api.aclose()


async def create_run(api: PrefectAPI, deployment: str, **job_variables: Any) -> str:
    run = await call(api.create_flow_run, deployment, job_variables=job_variables)
    return str(run["id"])


async def check_cancellations(agent: Agent) -> None:
    """One pass of the watchdog's cancellation check, now; returns once the runner has
    taken every request it found."""
    async with anyio.create_task_group() as tg:
        await agent.watchdog.check_cancellations(tg)


async def until_done(agent: Agent, run_id: str) -> None:
    """Until the runner has reported the run's end and let it go."""
    with anyio.fail_after(WAIT):
        while agent.runner.watching(run_id):
            await anyio.sleep(0.05)


def state_history(api: PrefectAPI, run_id: str) -> list[str]:
    states = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    return [s["type"] for s in sorted(states, key=lambda s: s["timestamp"])]


def set_state(api: PrefectAPI, run_id: str, type_: str) -> str:
    """What the flow's engine proposes (not forced); the server's answer."""
    body = {"state": {"type": type_, "name": type_.title()}}
    return str(api.request("POST", f"/flow_runs/{run_id}/set_state", json=body).json()["status"])


def ended(agent: Agent, outcome: str) -> float | None:
    return agent.metrics.registry.get_sample_value(
        "flow_agent_runs_ended_total", {"backend": "fake", "outcome": outcome}
    )


# -- the tests ------------------------------------------------------------------------------


async def test_cancel_during_launch_kills_the_workload_right_after_launch(
    api: PrefectAPI, fake_pool: str, deployment: str, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(fake_pool)
    async with serving(agent) as backend:
        run_id = await create_run(api, deployment, hold_launch=True, hold=True)
        with anyio.fail_after(WAIT):
            await backend.launch_started(run_id)
        await call(api.cancel, run_id)
        await check_cancellations(agent)
        assert backend.run(run_id).history == ["launching"]  # the request came mid-launch
        backend.release_launch(run_id)
        await until_done(agent, run_id)

    run = await call(api.read_flow_run, run_id)
    [workload] = backend.run(run_id).workloads
    assert backend.run(run_id).history == ["launching", "launched", "killed", "ended"]
    assert workload.kills == [KILL_GRACE]
    assert run["infrastructure_pid"] == workload.handle.pid
    assert await call(state_history, api, run_id) == ["SCHEDULED", "PENDING", "CANCELLING", "CANCELLED"]
    assert "killed its infrastructure" in state_message(run)
    assert ended(agent, "cancelled") == 1
    assert agent.slots.in_use == 0


async def test_a_run_deleted_after_launch_has_its_workload_killed_and_nothing_raised(
    api: PrefectAPI, fake_pool: str, deployment: str, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(fake_pool)
    with structlog.testing.capture_logs() as logs:
        async with serving(agent) as backend:
            run_id = await create_run(api, deployment, hold_launch=True, hold=True)
            with anyio.fail_after(WAIT):
                await backend.launch_started(run_id)
            await call(api.request, "DELETE", f"/flow_runs/{run_id}")
            backend.release_launch(run_id)  # the pid report now meets a 404
            await until_done(agent, run_id)

            after = await create_run(api, deployment, exit_code=0)  # the agent goes on
            with anyio.fail_after(WAIT):
                await backend.launched(after)

    [workload] = backend.run(run_id).workloads
    assert backend.run(run_id).history == ["launching", "launched", "killed", "ended"]
    assert workload.kills == [KILL_GRACE]
    assert (await call(api.request, "GET", f"/flow_runs/{run_id}", ok={404})).status_code == 404
    ours = [entry for entry in logs if entry.get("flow_run_id") == run_id]
    assert any("deleted after launch" in entry["event"] for entry in ours)
    assert not [e["event"] for e in ours if e["log_level"] in ("error", "critical", "exception")]
    assert agent.slots.in_use == 0


async def test_a_launch_error_crashes_the_run_with_the_reason_and_the_agent_goes_on(
    api: PrefectAPI, fake_pool: str, deployment: str, make_agent: Callable[..., Agent]
) -> None:
    reason = "no capacity for fake workloads in zone z-1"
    agent = make_agent(fake_pool, limit=1)
    async with serving(agent) as backend:
        failing = await create_run(api, deployment, launch_error=reason)
        failed = await call(api.wait_for_state, failing, "CRASHED", timeout=WAIT)
        # one slot: this run is claimed only if the failed launch gave its slot back
        next_run = await create_run(api, deployment, exit_code=3)
        crashed = await call(api.wait_for_state, next_run, "CRASHED", timeout=WAIT)
        await until_done(agent, next_run)

    assert state_message(failed) == f"flow-agent could not launch the infrastructure: {reason}"
    assert backend.run(failing).history == ["launching", "launch failed"]
    assert backend.run(failing).workloads == [] and not failed["infrastructure_pid"]
    assert await call(state_history, api, failing) == ["SCHEDULED", "PENDING", "CRASHED"]
    assert ended(agent, "failed_to_launch") == 1
    assert backend.run(next_run).history == ["launching", "launched", "ended"]
    assert state_message(crashed).startswith("exit code 3: ")
    assert await call(state_history, api, next_run) == ["SCHEDULED", "PENDING", "CRASHED"]
    assert agent.slots.in_use == 0


@pytest.mark.parametrize("final", ["COMPLETED", "FAILED"])
async def test_an_exit_reported_after_the_engine_ended_the_run_keeps_its_state(
    api: PrefectAPI, fake_pool: str, deployment: str, make_agent: Callable[..., Agent], final: str
) -> None:
    agent = make_agent(fake_pool)
    async with serving(agent) as backend:
        run_id = await create_run(api, deployment, hold=True)
        await call(api.wait_for_pid, run_id, timeout=WAIT)  # the runner waits on the workload
        # the flow's engine reports its own states while it runs, then its end
        assert await call(set_state, api, run_id, "RUNNING") == "ACCEPT"
        assert await call(set_state, api, run_id, final) == "ACCEPT"
        backend.release(run_id, exit_code=1)  # and then the workload's exit is seen
        await until_done(agent, run_id)

    run = await call(api.read_flow_run, run_id)
    assert state_type(run) == final
    assert await call(state_history, api, run_id) == ["SCHEDULED", "PENDING", "RUNNING", final]
    assert backend.run(run_id).history == ["launching", "launched", "ended"]
    assert ended(agent, "crashed") == 1  # counted as what the workload did
