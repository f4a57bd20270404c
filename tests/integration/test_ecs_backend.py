"""The ECS backend end to end: the real agent, a real Prefect server, moto as AWS.

moto runs in this process (tests/support/moto_ecs.py) so the tests can end tasks the way
ECS would; the agent reaches it through AWS_ENDPOINT_URL and the default credential chain.
In a double no flow engine runs: a task that exits 0 leaves its run PENDING, so the
success test moves the run through RUNNING to COMPLETED itself, as an engine would.

Reuse is checked twice: 100 launches through `EcsBackend` directly (concurrently, then
from a second backend instance standing for a replica or a restart) register one task
definition; and the agent runs of one deployment below share one.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from support.moto_ecs import OOM_REASON, MotoEcs, ecs_job, ecs_template, moto_ecs
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for

from agent.backends import BackendOptions
from agent.backends.base import Job, LaunchError
from agent.backends.ecs import EcsBackend

pytestmark = pytest.mark.integration

IMAGE = "registry.example/flows:1"


@pytest.fixture
def moto() -> MotoEcs:
    double = moto_ecs()
    double.reset()
    return double


@pytest.fixture
def agent_env(moto: MotoEcs) -> dict[str, str]:
    return {**moto.env, "FLOW_AGENT_WATCH_INTERVAL": "0.2"}


def _ecs_pool(api: PrefectAPI, name: str, *, start_timeout: int | None = None) -> None:
    body = {"name": name, "type": "ecs", "base_job_template": ecs_template(start_timeout)}
    api.request("POST", "/work_pools/", json=body)


def _deployment(api: PrefectAPI, pool: str, name: str = "d", **fields: Any) -> str:
    body = {
        "name": f"{pool}-{name}",
        "flow_id": api.create_flow("ecs-tests"),
        "work_pool_name": pool,
        **fields,
    }
    return api.request("POST", "/deployments/", json=body).json()["id"]


def _task_arn(api: PrefectAPI, run_id: str) -> str:
    pid = str(api.wait_for_pid(run_id, timeout=60)["infrastructure_pid"])
    cluster, _, arn = pid.partition("::")
    assert cluster.startswith("arn:aws:ecs:") and arn.startswith("arn:aws:ecs:"), pid
    return arn


def _set_state(api: PrefectAPI, run_id: str, state: str) -> None:
    body = {"state": {"type": state, "name": state.title()}, "force": True}
    api.request("POST", f"/flow_runs/{run_id}/set_state", json=body)


def test_a_pool_run_carries_the_network_customizations_and_completes(
    api: PrefectAPI, moto: MotoEcs, agent_env: dict[str, str], pool: str, start_agent
) -> None:
    vpc, subnets, sg = moto.vpc()
    base = "/networkConfiguration/awsvpcConfiguration"
    customizations = [
        {"op": "add", "path": f"{base}/subnets", "value": [subnets[1]]},
        {"op": "add", "path": f"{base}/securityGroups", "value": [sg]},
        {"op": "replace", "path": f"{base}/assignPublicIp", "value": "DISABLED"},
    ]
    _ecs_pool(api, pool)
    variables = {"image": IMAGE, "vpc_id": vpc, "customizations": customizations}
    run = api.create_flow_run(_deployment(api, pool, job_variables=variables))

    start_agent(pool, env=agent_env)
    arn = _task_arn(api, run["id"])

    task = moto.task(arn)
    sent = task.network_configuration["awsvpcConfiguration"]
    assert sent == {"subnets": [subnets[1]], "securityGroups": [sg], "assignPublicIp": "DISABLED"}
    environment = {e["name"]: e["value"] for e in task.overrides["containerOverrides"][0]["environment"]}
    assert environment["PREFECT__FLOW_RUN_ID"] == run["id"]  # per-run values travel as overrides
    _set_state(api, run["id"], "RUNNING")
    _set_state(api, run["id"], "COMPLETED")
    moto.finish(arn, exit_code=0)
    wait_for(lambda: moto.task(arn).last_status == "STOPPED", 10)
    final = api.wait_for_state(run["id"], "COMPLETED", "CRASHED", timeout=30)
    assert state_type(final) == "COMPLETED", state_message(final)


def test_a_block_run_discovers_the_default_vpc_and_reports_exit_1(
    api: PrefectAPI, registered: None, moto: MotoEcs, agent_env: dict[str, str], pool: str, start_agent
) -> None:
    definition = {"containerDefinitions": [{"name": "prefect", "image": IMAGE, "memory": 512}]}
    block = api.create_block_document("ecs-task", {"task_definition": definition, "cluster": "default"})
    _ecs_pool(api, pool)
    run = api.create_flow_run(_deployment(api, pool, infrastructure_document_id=block["id"]))

    start_agent(pool, env=agent_env)
    arn = _task_arn(api, run["id"])
    default_vpc = moto.client("ec2").describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    vpc_id = default_vpc["Vpcs"][0]["VpcId"]
    subnets = moto.client("ec2").describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    assert sorted(moto.task(arn).network_configuration["awsvpcConfiguration"]["subnets"]) == sorted(
        s["SubnetId"] for s in subnets
    )
    moto.finish(arn, exit_code=1)
    final = api.wait_for_state(run["id"], "CRASHED", timeout=30)
    assert "exit code 1" in state_message(final), state_message(final)
    assert "EssentialContainerExited" in state_message(final)


def test_oom_with_exit_0_and_exit_137_crash_as_oom_with_one_task_definition(
    api: PrefectAPI, moto: MotoEcs, agent_env: dict[str, str], pool: str, start_agent
) -> None:
    _ecs_pool(api, pool)
    deployment = _deployment(api, pool, job_variables={"image": IMAGE})
    runs = [api.create_flow_run(deployment)["id"] for _ in range(2)]

    start_agent(pool, env=agent_env)
    arns = [_task_arn(api, run) for run in runs]
    moto.finish(arns[0], exit_code=0, reason=OOM_REASON)
    moto.finish(arns[1], exit_code=137)

    reason_only, exit_137 = (state_message(api.wait_for_state(r, "CRASHED", timeout=30)) for r in runs)
    assert "OOM" in reason_only and "OutOfMemoryError" in reason_only, reason_only
    assert "exit code 137" in exit_137 and "OOM" in exit_137, exit_137
    assert len(moto.task_definitions()) == 1


def test_a_task_that_never_runs_is_stopped_at_its_start_deadline(
    api: PrefectAPI, moto: MotoEcs, agent_env: dict[str, str], pool: str, start_agent
) -> None:
    _ecs_pool(api, pool, start_timeout=2)
    run = api.create_flow_run(_deployment(api, pool, job_variables={"image": IMAGE}))

    with moto.tasks_start_pending("CannotPullContainerError: pull access denied for flows"):
        start_agent(pool, env=agent_env)
        arn = _task_arn(api, run["id"])
    final = api.wait_for_state(run["id"], "CRASHED", timeout=30)

    assert "never started" in state_message(final) and "CannotPullContainerError" in state_message(final)
    assert moto.task(arn).last_status == "STOPPED"
    assert moto.task(arn).stopped_reason.startswith("flow-agent: the task did not reach RUNNING within 2 s")


def test_cancel_stops_the_task(
    api: PrefectAPI, moto: MotoEcs, agent_env: dict[str, str], pool: str, start_agent
) -> None:
    _ecs_pool(api, pool)
    run = api.create_flow_run(_deployment(api, pool, job_variables={"image": IMAGE}))

    start_agent(pool, env=agent_env)
    arn = _task_arn(api, run["id"])
    api.cancel(run["id"])

    api.wait_for_state(run["id"], "CANCELLED", timeout=30)
    assert moto.task(arn).last_status == "STOPPED"
    assert moto.task(arn).stopped_reason.startswith("flow-agent: stopped")


# -- reuse, through the backend directly (fast: no server round trips) -------------------------


def _job(moto: MotoEcs, run_id: str) -> Job:
    return ecs_job(moto, run_id, IMAGE)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_100_runs_of_one_deployment_register_one_task_definition(
    moto: MotoEcs, anyio_backend: str
) -> None:
    first, replica = (
        EcsBackend(BackendOptions(watch_interval=60)),
        EcsBackend(BackendOptions(watch_interval=60)),
    )
    try:
        async with anyio.create_task_group() as tg:
            for i in range(90):  # a burst: every launch misses the cache at the same moment
                tg.start_soon(first.launch, _job(moto, f"run-{i}"))
        for i in range(90, 100):  # another agent (or this one restarted) finds it by its tag
            await replica.launch(_job(moto, f"run-{i}"))
    finally:
        await first.aclose()
        await replica.aclose()
    assert len(moto.tasks()) == 100
    assert len(moto.task_definitions()) == 1
    arn = moto.task_definitions()[0].arn
    assert {t.task_definition_arn for t in moto.tasks()} == {arn}
    runs = {o["environment"][-1]["value"] for t in moto.tasks() for o in t.overrides["containerOverrides"]}
    assert len(runs) == 100  # each run's own values went in its overrides


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_throttled_registration_is_retried(
    moto: MotoEcs, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    from moto.ecs.exceptions import EcsClientException
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.register_task_definition
    calls: list[str] = []

    def throttled(backend: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("register")
        if len(calls) == 1:  # what ECS answers a burst on one family (#16485)
            raise EcsClientException(
                "Too many concurrent attempts to create a new revision of the specified family."
            )
        return original(backend, *args, **kwargs)

    monkeypatch.setattr(EC2ContainerServiceBackend, "register_task_definition", throttled)
    backend = EcsBackend(BackendOptions(watch_interval=60))
    try:
        handle = await backend.launch(_job(moto, "run-throttled"))
    finally:
        await backend.aclose()
    assert calls == ["register", "register"]
    assert len(moto.task_definitions()) == 1 and len(moto.tasks()) == 1
    assert handle.pid.endswith(moto.tasks()[0].task_arn)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_failures_in_the_run_task_answer_fail_the_launch(
    moto: MotoEcs, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    from moto.ecs.responses import EC2ContainerServiceResponse

    def no_capacity(self: Any) -> Any:
        from moto.core.responses import ActionResult

        return ActionResult({"tasks": [], "failures": [{"arn": "arn:x", "reason": "RESOURCE:CPU"}]})

    monkeypatch.setattr(EC2ContainerServiceResponse, "run_task", no_capacity)
    backend = EcsBackend(BackendOptions(watch_interval=60))
    try:
        with pytest.raises(LaunchError, match="RESOURCE:CPU"):
            await backend.launch(_job(moto, "run-no-capacity"))
    finally:
        await backend.aclose()
