"""Direct runs through each cloud SDK against its double (issue 16): the output lines in
order, the exit code, a detached run killed from another session (a fresh backend, the job
rebuilt from the id), a start timeout, and nothing left behind. Each kind is driven by its contract harness
(tests/contract/harness_<kind>.py) and a work pool on the session's real server."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.moto_ecs import ecs_template
from support.prefect_api import PrefectAPI

from agent.backends.base import Backend, BackendOptions, Handle
from agent.direct import DirectSession, InfraId, Request, Result, Target
from agent.infra import default_base_job_template
from agent.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ecs(harness: Any) -> tuple[str, dict[str, Any], dict[str, Any], Callable[[], Backend]]:
    from agent.backends.ecs import EcsBackend

    harness.moto.client("logs").create_log_group(logGroupName="prefect")
    variables = {
        "image": "busybox:latest",
        "aws_credentials": harness.moto.credentials,
        "configure_cloudwatch_logs": True,
        "execution_role_arn": "arn:aws:iam::123456789012:role/ecs-task-execution",
    }
    return (
        "ecs",
        ecs_template(start_timeout=1),
        variables,
        lambda: EcsBackend(BackendOptions(watch_interval=0.1)),
    )


def _cloud_run(harness: Any) -> tuple[str, dict[str, Any], dict[str, Any], Callable[[], Backend]]:
    from agent.backends.cloud_run import CloudRunBackend

    variables = {"image": "us-docker.pkg.dev/demo/tools/tool:1", "credentials": {"project": "demo"}}
    url = harness.fake.url
    options = BackendOptions(watch_interval=0.05, gcp_endpoint=url, gcp_logging_endpoint=url)
    template = default_base_job_template("cloud-run-v2")
    return "cloud-run-v2", template, variables, lambda: CloudRunBackend(options, start_timeout=5)


def _aci(harness: Any) -> tuple[str, dict[str, Any], dict[str, Any], Callable[[], Backend]]:
    from contract.harness_aci import RESOURCE_GROUP, SUBSCRIPTION, StaticTokenCredential

    from agent.backends.aci import AciBackend

    variables = {
        "image": "busybox:1",
        "resource_group_name": RESOURCE_GROUP,
        "subscription_id": SUBSCRIPTION,
        "task_start_timeout_seconds": 2,
    }

    def fresh() -> Backend:
        options = BackendOptions(watch_interval=0.1, azure_arm_endpoint=harness.fake.url)
        kwargs = {"connection_verify": harness.fake.ca_file}
        return AciBackend(options, credential=StaticTokenCredential(), client_kwargs=kwargs)

    return "azure-container-instance", default_base_job_template("azure-container-instance"), variables, fresh


def _kubernetes(harness: Any) -> tuple[str, dict[str, Any], dict[str, Any], Callable[[], Backend]]:
    from contract.harness_kubernetes import START_DEADLINE

    from agent.backends.kubernetes import KubernetesBackend

    variables = {"image": "busybox:1", "pod_watch_timeout_seconds": START_DEADLINE}
    options = BackendOptions(watch_interval=0.1, kubeconfig=harness.kubeconfig)
    return (
        "kubernetes",
        default_base_job_template("kubernetes"),
        variables,
        lambda: KubernetesBackend(options),
    )


def _write(kind: str, harness: Any, handle: Handle, *lines: str) -> None:
    """The workload prints `lines`, as the platform's log service then shows them."""
    if kind == "ecs":
        from integration.test_ecs_output import _stream
        from integration.test_ecs_output import _write as put_events

        put_events(harness.moto, _stream(harness.moto, handle), *lines)
    elif kind == "cloud-run":
        harness.fake.start_execution(handle.pid)  # its entries are read once it runs
        harness.fake.write_output(handle.pid, *lines)
    elif kind == "aci":
        harness.fake.write_output(handle.pid.rsplit("/", 1)[1], *lines)
    else:
        job = handle.pid.split(":")[-1]
        harness.fake.set_pod_phase(job, "Running")
        harness.fake.write_output(job, *lines)


SETUPS = {"ecs": _ecs, "cloud-run": _cloud_run, "aci": _aci, "kubernetes": _kubernetes}


class Direct:
    """One kind's double, its harness, a pool for it, and sessions on them."""

    def __init__(self, kind: str, harness: Any, api: PrefectAPI, tmp_path: Path) -> None:
        self.kind, self.harness = kind, harness
        pool_type, template, self.variables, self.fresh_backend = SETUPS[kind](harness)
        self.pool = f"direct-{kind}-{uuid.uuid4().hex[:6]}"
        api.request(
            "POST", "/work_pools/", json={"name": self.pool, "type": pool_type, "base_job_template": template}
        )
        self.target = Target.pool(self.pool)
        self.backend = self.fresh_backend()  # what `infra run` builds: options only
        self.settings = Settings(api_url=api.api_url, kill_grace=1, data_dir=tmp_path / "data")

    def session(self, backend: Backend | None = None) -> DirectSession:
        return DirectSession(self.settings, environ={}, backends={self.kind: backend or self.backend})

    def request(self, *command: str) -> Request:
        return Request(list(command), {"GREETING": "hi"}, job_vars=self.variables)

    async def run(
        self, then: Callable[[Handle], Any], output: list[str] | None = None
    ) -> tuple[Result, Handle]:
        """Run to the end; `then(handle)` drives the double once the workload exists."""
        launched = anyio.Event()
        found: list[Any] = []

        async def go(session: DirectSession) -> None:
            found.append(
                await session.run(
                    self.target,
                    self.request("sh", "-c", "echo $GREETING"),
                    output=(output if output is not None else []).append,
                    on_launched=lambda ident: (found.append(ident), launched.set()),
                )
            )

        async with self.session() as session, anyio.create_task_group() as group:
            group.start_soon(go, session)
            with anyio.fail_after(60):
                await launched.wait()
            handle = Handle(self.kind, InfraId.parse(found[0]).pid)
            await then(handle)
        return found[1], handle


@pytest.fixture(params=list(SETUPS))
async def direct(request: pytest.FixtureRequest, api: PrefectAPI, tmp_path: Path) -> AsyncIterator[Direct]:
    kind = request.param
    module = importlib.import_module(f"contract.harness_{kind.replace('-', '_')}")
    harness = module.make_harness(tmp_path)
    try:
        made = Direct(kind, harness, api, tmp_path)
        try:
            yield made
        finally:
            await made.backend.aclose()
    finally:
        await harness.aclose()


async def test_output_lines_arrive_in_order_then_the_exit_code(direct: Direct) -> None:
    lines: list[str] = []

    async def prints_then_exits(handle: Handle) -> None:
        _write(direct.kind, direct.harness, handle, "line 1", "line 2")
        with anyio.fail_after(20):
            while len(lines) < 2:
                await anyio.sleep(0.05)
        _write(direct.kind, direct.harness, handle, "line 3", "last words")  # then it exits at once
        await direct.harness.finish(handle, exit_code=5)

    result, handle = await direct.run(prints_then_exits, output=lines)
    assert (result.exit_code, result.oom, result.reason) == (5, False, "exited"), result
    assert result.infrastructure_id.startswith(f"pool/{direct.pool}:")
    assert lines == ["line 1", "line 2", "line 3", "last words"]
    assert await direct.harness.leftovers(handle) == []


async def test_a_start_timeout_fails_in_one_line_and_cleans_up(direct: Direct) -> None:
    result, handle = await direct.run(
        lambda handle: direct.harness.never_start(handle, reason="CannotPullContainerError: image not found")
    )
    assert result.reason == "start_failed" and result.exit_code == 1, result
    assert "CannotPullContainerError" in result.explanation and "\n" not in result.explanation
    assert await direct.harness.leftovers(handle) == []


async def test_detached_then_killed_from_another_session_removes_the_workload(direct: Direct) -> None:
    async with direct.session() as session:
        job, handle, ident = await session.launch(direct.target, direct.request("sleep", "600"), output=print)
    assert job.flow_run_name.startswith("direct-") and job.flow_run_id == ident.run_id
    text = str(job.payload)  # named and labelled as a direct run; no server credentials in it
    assert job.flow_run_id[:8] in text and "direct-run" in text and "PREFECT_API_URL" not in text
    assert await direct.harness.leftovers(handle) != []
    # another process: a fresh backend, the job and the handle rebuilt from the id's text
    async with direct.session(direct.fresh_backend()) as other:
        with anyio.fail_after(60):
            await other.kill(InfraId.parse(str(ident)), direct.variables)
    assert await direct.harness.leftovers(handle) == []


async def test_cancelled_as_by_ctrl_c_the_workload_is_killed_and_cleaned_up(direct: Direct) -> None:
    found: list[str] = []
    async with direct.session() as session, anyio.create_task_group() as group:
        launched = anyio.Event()

        async def go() -> None:
            request = direct.request("sleep", "600")
            await session.run(
                direct.target, request, output=print, on_launched=lambda i: (found.append(i), launched.set())
            )

        group.start_soon(go)
        with anyio.fail_after(60):
            await launched.wait()
        group.cancel_scope.cancel()  # what the CLI does on SIGINT
    assert await direct.harness.leftovers(Handle(direct.kind, InfraId.parse(found[0]).pid)) == []


async def test_a_detached_run_waited_for_from_another_session_ends_with_its_code(direct: Direct) -> None:
    async with direct.session() as session:
        _job, handle, ident = await session.launch(
            direct.target, direct.request("sleep", "600"), output=print
        )
    results: list[Result] = []
    async with direct.session(direct.fresh_backend()) as other, anyio.create_task_group() as group:

        async def wait() -> None:
            results.append(await other.wait(InfraId.parse(str(ident)), direct.variables))

        group.start_soon(wait)
        await anyio.sleep(0.3)  # the waiter watches; then the workload ends by itself
        await direct.harness.finish(handle, exit_code=7)
        with anyio.fail_after(60):
            while not results:
                await anyio.sleep(0.05)
    assert results[0].exit_code == 7 and results[0].infrastructure_id == str(ident)
    assert await direct.harness.leftovers(handle) == []
