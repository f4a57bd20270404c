"""ECS as its documentation describes it, through moto (tests/support/moto_ecs.py): RunTask
capacity failures retried, a lost RunTask answer retried with the same `clientToken`, a
task killed before it started, a stop racing the task's own end, and the flow container
picked among sidecars.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import anyio
import pytest
from support.moto_ecs import MotoEcs, ecs_job, lose_next_run_task_answer, moto_ecs

from agent.backends import BackendOptions
from agent.backends.base import Handle, Job, LaunchError
from agent.backends.ecs import EcsBackend
from agent.outcome import Reason
from agent.retry import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "registry.example/flows:1"
# the words of ECS's "API failure reasons" for a Fargate shortage
NO_CAPACITY = (
    "Capacity is unavailable at this time. Please try again later or in a different availability zone"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def moto() -> MotoEcs:
    double = moto_ecs()
    double.reset()
    return double


def _backend(**retry: float) -> EcsBackend:
    policy = RetryPolicy(initial=0.05, maximum=0.2, jitter=0.0, **retry)
    return EcsBackend(BackendOptions(watch_interval=0.05, retry=policy))


def _arn(handle: Handle) -> str:
    return handle.pid.split("::", 1)[1]


async def _wait(backend: EcsBackend, handle: Handle) -> Any:
    with anyio.fail_after(20):
        return await backend.wait(handle)


def _refuse_placement(monkeypatch: pytest.MonkeyPatch, times: int, calls: list[str]) -> None:
    from moto.core.responses import ActionResult
    from moto.ecs.responses import EC2ContainerServiceResponse

    original = EC2ContainerServiceResponse.run_task

    def short_of_capacity(self: Any) -> Any:
        calls.append(str(self._get_param("clientToken")))
        if len(calls) <= times:
            return ActionResult({"tasks": [], "failures": [{"arn": "arn:x", "reason": NO_CAPACITY}]})
        return original(self)

    monkeypatch.setattr(EC2ContainerServiceResponse, "run_task", short_of_capacity)


async def test_a_capacity_failure_is_retried_with_a_new_request(
    moto: MotoEcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    _refuse_placement(monkeypatch, 2, calls)
    backend = _backend()
    try:
        handle = await backend.launch(ecs_job(moto, "run-capacity", IMAGE))
    finally:
        await backend.aclose()
    assert len(calls) == 3 and len(set(calls)) == 3  # each try its own token: no replayed failure
    assert [t.task_arn for t in moto.tasks()] == [_arn(handle)]


async def test_capacity_that_never_comes_fails_the_launch_with_aws_words(
    moto: MotoEcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    _refuse_placement(monkeypatch, 10**6, calls)
    backend = _backend(budget=0.5)
    try:
        with pytest.raises(LaunchError, match="Capacity is unavailable"):
            await backend.launch(ecs_job(moto, "run-no-capacity", IMAGE))
    finally:
        await backend.aclose()
    assert len(calls) > 1 and moto.tasks() == []


async def test_a_lost_run_task_answer_is_retried_with_the_same_client_token(moto: MotoEcs) -> None:
    backend = _backend()
    try:
        lose_next_run_task_answer()
        handle = await backend.launch(ecs_job(moto, "run-lost-answer", IMAGE))
    finally:
        await backend.aclose()
    assert [t.task_arn for t in moto.tasks()] == [_arn(handle)]  # one task, the first one


async def test_a_task_killed_before_it_started_is_killed_not_a_failed_start(moto: MotoEcs) -> None:
    backend = _backend()
    try:
        with moto.tasks_start_pending("pulling the image"):
            handle = await backend.launch(ecs_job(moto, "run-killed-pending", IMAGE))
        await backend.kill(handle, 1.0)
        outcome = await _wait(backend, handle)
    finally:
        await backend.aclose()
    assert outcome.reason is Reason.KILLED, outcome
    assert moto.task(_arn(handle)).stop_code == "UserInitiated"


async def test_a_stop_that_races_the_tasks_own_end_reports_that_end(moto: MotoEcs) -> None:
    backend = _backend()
    try:
        for code in (0, 1):
            handle = await backend.launch(ecs_job(moto, f"run-raced-{code}", IMAGE))
            moto.finish(_arn(handle), exit_code=code)
            await backend.kill(handle, 1.0)
            outcome = await _wait(backend, handle)
            assert outcome.reason is Reason.EXITED and outcome.exit_code == code, outcome
    finally:
        await backend.aclose()


def _with_sidecar(job: Job, *, flow: str, configured: bool) -> Job:
    """The run's task definition with a sidecar before the flow's container (named `flow`)."""
    payload = copy.deepcopy(dict(job.payload))
    containers = payload["task_definition"]["containerDefinitions"]
    containers[0]["name"] = flow
    containers.insert(0, {"name": "log-router", "image": "fluent-bit:3", "memory": 128, "essential": False})
    payload["run_task"]["overrides"]["containerOverrides"][0]["name"] = flow
    runtime = dataclasses.replace(job.runtime, container_name=flow if configured else None)
    return Job(job.flow_run_id, job.flow_run_name, job.kind, payload, runtime)


@pytest.mark.parametrize("configured", [True, False])
async def test_the_flow_container_is_read_among_sidecars(moto: MotoEcs, configured: bool) -> None:
    backend = _backend()
    run_id = f"run-sidecar-{configured}"
    job = ecs_job(moto, run_id, IMAGE, env={"PREFECT__FLOW_RUN_ID": run_id})
    try:
        handle = await backend.launch(_with_sidecar(job, flow="main", configured=configured))
        task = moto.task(_arn(handle))
        assert [c.name for c in task.containers] == ["log-router", "main"]
        moto.finish(_arn(handle), exit_code=1, container="main", others_exit=0)
        outcome = await _wait(backend, handle)
    finally:
        await backend.aclose()
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 1, outcome
