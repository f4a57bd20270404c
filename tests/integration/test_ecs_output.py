"""ECS output (issue 16): the flow container's CloudWatch Logs stream through the real boto3
clients against moto (ECS and CloudWatch Logs in this process), played as the awslogs
driver writes it: group `awslogs-group`, stream `<prefix>/<container>/<task id>`.

No Prefect server: the backend is driven directly, as the runner and `infra run` do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import structlog
from support.moto_ecs import MotoEcs, moto_ecs

from agent.backends.base import BackendOptions, Handle, Job
from agent.backends.ecs import EcsBackend
from agent.infra.ecs import EcsKind
from agent.infra.spec import RunContext
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "registry.example/flows:1"
ROLE = "arn:aws:iam::123456789012:role/ecs-task-execution"
SECRET = "s3cr3t-ecs-output-canary-value"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def moto() -> MotoEcs:
    double = moto_ecs()
    double.reset()
    double.client("logs").create_log_group(logGroupName="prefect")
    return double


@pytest.fixture
async def backend() -> Any:
    made = EcsBackend(BackendOptions(watch_interval=0.1))
    yield made
    await made.aclose()


def _job(moto: MotoEcs, run_id: str, *, output: Callable[[str], None] | None = None, **fields: Any) -> Job:
    """An `ecs-task` block's job: `fields` are block fields (stream_output, ...)."""
    kind = EcsKind()
    data = {
        "aws_credentials": moto.credentials,
        "task_definition": {"containerDefinitions": [{"name": "prefect", "image": IMAGE, "memory": 512}]},
        "execution_role_arn": ROLE,
        "cluster": "default",
        **fields,
    }
    config = kind.config_from_block(data, source="test")
    ctx = RunContext(run_id, run_id, deployment_id="dep-output", work_pool_name="output")
    return Job(run_id, run_id, "ecs", kind.build_payload(config, ctx), kind.runtime(config), output=output)


def _stream(moto: MotoEcs, handle: Handle) -> str:
    """Where the awslogs driver writes: `<awslogs-stream-prefix>/<container>/<task id>`."""
    task = moto.task(handle.pid.split("::", 1)[1])
    container = moto.client("ecs").describe_task_definition(taskDefinition=task.task_definition_arn)
    options = container["taskDefinition"]["containerDefinitions"][0]["logConfiguration"]["options"]
    return f"{options['awslogs-stream-prefix']}/prefect/{task.task_arn.rsplit('/', 1)[-1]}"


def _write(moto: MotoEcs, stream: str, *messages: str) -> None:
    """What the awslogs driver does with the container's lines: one event each."""
    logs = moto.client("logs")
    if not logs.describe_log_streams(logGroupName="prefect", logStreamNamePrefix=stream)["logStreams"]:
        logs.create_log_stream(logGroupName="prefect", logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": m} for m in messages]  # one millisecond for all
    logs.put_log_events(logGroupName="prefect", logStreamName=stream, logEvents=events)


async def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.05)


async def _wait(backend: EcsBackend, handle: Handle) -> Outcome:
    with anyio.fail_after(30):
        return await backend.wait(handle)


async def test_lines_arrive_in_order_once_and_complete_with_the_exit_code(
    moto: MotoEcs, backend: EcsBackend
) -> None:
    REDACTOR.add(SECRET)
    lines: list[str] = []
    job = _job(moto, "run-output", output=lines.append, configure_cloudwatch_logs=True)
    handle = await backend.launch(job)
    stream = _stream(moto, handle)
    _write(moto, stream, "line 1", "line 2")
    await _until(lambda: len(lines) == 2)
    # written in the same millisecond as the lines before, then the container exits at once
    _write(moto, stream, f"token={SECRET}", "multi\nline", "last words")
    moto.finish(handle.pid.split("::", 1)[1], exit_code=3)
    outcome = await _wait(backend, handle)
    assert outcome.exit_code == 3, outcome
    assert lines == ["line 1", "line 2", "token=********", "multi", "line", "last words"]
    assert not any(SECRET in line for line in lines)


async def test_stream_output_off_reads_nothing(moto: MotoEcs, backend: EcsBackend) -> None:
    job = _job(moto, "run-quiet", stream_output=False, configure_cloudwatch_logs=True)
    with structlog.testing.capture_logs() as logs:
        handle = await backend.launch(job)
        _write(moto, _stream(moto, handle), "not for us")
        await anyio.sleep(0.5)
        moto.finish(handle.pid.split("::", 1)[1], exit_code=0)
        outcome = await _wait(backend, handle)
    assert outcome.exit_code == 0
    assert [e for e in logs if e.get("stream") == "output"] == []


async def test_a_denied_read_says_so_once_and_the_run_still_ends_right(
    moto: MotoEcs, backend: EcsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.logs.responses import LogsResponse

    def denied(self: Any) -> Any:
        raise JsonRESTError(
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/agent/i-1 is not authorized to perform: "
            "logs:GetLogEvents on resource: arn:aws:logs:us-east-1:123456789012:log-group:prefect:*",
        )

    monkeypatch.setattr(LogsResponse, "get_log_events", denied)
    lines: list[str] = []
    with structlog.testing.capture_logs() as logs:
        handle = await backend.launch(_job(moto, "run-denied", stream_output=True, output=lines.append))
        _write(moto, _stream(moto, handle), "unread")
        await anyio.sleep(0.5)
        moto.finish(handle.pid.split("::", 1)[1], exit_code=1)
        outcome = await _wait(backend, handle)
    assert outcome.exit_code == 1, outcome
    assert lines == []
    warnings = [e for e in logs if e["log_level"] == "warning" and "output is unavailable" in e["event"]]
    assert len(warnings) == 1, warnings
    assert "AccessDeniedException" in warnings[0]["event"] and "logs:GetLogEvents" in warnings[0]["event"]
    assert warnings[0]["flow_run_id"] == "run-denied"


async def test_no_awslogs_configuration_is_said_once(moto: MotoEcs, backend: EcsBackend) -> None:
    lines: list[str] = []
    with structlog.testing.capture_logs() as logs:
        handle = await backend.launch(_job(moto, "run-nolog", output=lines.append))
        await anyio.sleep(0.4)
        moto.finish(handle.pid.split("::", 1)[1], exit_code=0)
        assert (await _wait(backend, handle)).exit_code == 0
    warnings = [e for e in logs if "output is unavailable" in e["event"]]
    assert len(warnings) == 1 and "configure_cloudwatch_logs" in warnings[0]["event"], warnings


async def test_an_adopted_run_ships_its_lines_to_its_flow_runs_log(
    moto: MotoEcs, backend: EcsBackend
) -> None:
    job = _job(moto, "run-adopted", stream_output=True)
    handle = await backend.launch(job)
    await backend.aclose()  # the launching agent is gone
    stream = _stream(moto, handle)
    _write(moto, stream, "before the restart")
    other = EcsBackend(BackendOptions(watch_interval=0.1))
    try:
        adopted = Handle("ecs", handle.pid, "run-adopted", job.runtime)
        with structlog.testing.capture_logs() as logs:
            waiting: list[Outcome] = []

            async def wait() -> None:
                waiting.append(await _wait(other, adopted))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.3)
                _write(moto, stream, "after the restart")
                moto.finish(handle.pid.split("::", 1)[1], exit_code=0)
        output = [e for e in logs if e.get("stream") == "output"]
        assert [e["event"] for e in output] == ["before the restart", "after the restart"]
        assert {e["flow_run_id"] for e in output} == {"run-adopted"}
        assert waiting[0].exit_code == 0
    finally:
        await other.aclose()
