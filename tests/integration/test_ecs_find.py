"""Finding a run's ECS task from the run alone, and launches that lose RunTask's answer.

Everything goes through the real boto3 over HTTP to moto (tests/support/moto_ecs.py, made
to answer RunTask and ListTasks as the ECS API reference says). Each lookup is made by a
NEW backend from a freshly rebuilt Job, standing for another agent after the launching one
died: nothing of the launching backend's memory can help it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from support.moto_ecs import MotoEcs, ecs_job, moto_ecs

from agent.backends.base import BackendOptions, BackendUnavailable, Handle, Job
from agent.backends.ecs import EcsBackend
from agent.outcome import Reason
from agent.retry import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "registry.example/flows:1"
_QUICK = BackendOptions(watch_interval=0.1, retry=RetryPolicy(initial=0.05, maximum=0.2, budget=5.0))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def moto() -> MotoEcs:
    double = moto_ecs()
    double.reset()
    return double


@pytest.fixture
async def agents() -> AsyncIterator[list[EcsBackend]]:
    """Backends made by the test (one per "agent"), closed at the end."""
    made: list[EcsBackend] = []
    yield made
    for backend in made:
        await backend.aclose()


def _agent(agents: list[EcsBackend], options: BackendOptions = _QUICK) -> EcsBackend:
    agents.append(EcsBackend(options))
    return agents[-1]


def _job(moto: MotoEcs, run_id: str, **kwargs: Any) -> Job:
    env = {"PREFECT__FLOW_RUN_ID": run_id, "RUN": run_id}  # what the agent puts in every run's env
    return ecs_job(moto, run_id, IMAGE, env=env, **kwargs)


def _arn(handle: Handle) -> str:
    return handle.pid.split("::", 1)[1]


def _tasks_of(moto: MotoEcs, run_id: str) -> list[Any]:
    return [t for t in moto.tasks() if t.started_by == run_id]


async def test_a_new_backend_finds_the_runs_task_alive_then_ended(moto: MotoEcs, agents: list) -> None:
    run, other = str(uuid.uuid4()), str(uuid.uuid4())
    launcher = _agent(agents)
    launched = await launcher.launch(_job(moto, run))
    await launcher.launch(_job(moto, other))
    await launcher.aclose()  # the launching agent is gone

    found = await _agent(agents).find(_job(moto, run))
    assert found is not None and found.pid == launched.pid and found.flow_run_id == run
    assert await _agent(agents).inspect(found) is None  # alive

    moto.finish(_arn(launched), exit_code=3)
    ended = await _agent(agents).find(_job(moto, run))  # ECS lists it among the STOPPED now
    assert ended is not None and ended.pid == launched.pid
    later = _agent(agents)
    outcome = await later.inspect(ended)
    assert outcome is not None and outcome.reason is Reason.EXITED and outcome.exit_code == 3
    with anyio.fail_after(10):
        waited = await later.wait(ended)
    assert waited.exit_code == 3 and "EssentialContainerExited" in waited.message()
    assert len(_tasks_of(moto, run)) == 1


async def test_another_runs_task_is_not_found_and_no_task_is_none(moto: MotoEcs, agents: list) -> None:
    launcher = _agent(agents)
    await launcher.launch(_job(moto, str(uuid.uuid4())))
    before = len(moto.tasks())

    assert await _agent(agents).find(_job(moto, str(uuid.uuid4()))) is None
    elsewhere = _job(moto, str(uuid.uuid4()))
    elsewhere.payload["run_task"]["cluster"] = "no-such-cluster"
    assert await _agent(agents).find(elsewhere) is None  # a cluster that does not exist has no tasks
    assert len(moto.tasks()) == before  # looking never starts anything


async def test_a_shared_started_by_is_told_apart_by_the_runs_id(moto: MotoEcs, agents: list) -> None:
    """A configured `startedBy` shared by every run: the lookup pages through all of them
    (over ListTasks' page of 100) and keeps the one whose overrides carry the run's id."""
    launcher = _agent(agents)
    runs = [str(uuid.uuid4()) for _ in range(101)]
    handles: dict[str, Handle] = {}

    async def launch(run: str) -> None:
        job = _job(moto, run)
        job.payload["run_task"]["startedBy"] = "nightly-etl"  # as a customization would set it
        handles[run] = await launcher.launch(job)

    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(launch, run)
    last = moto.tasks()[-1].task_arn  # ListTasks lists in this order: the last is on page two
    wanted = next(run for run, handle in handles.items() if _arn(handle) == last)

    job = _job(moto, wanted)
    job.payload["run_task"]["startedBy"] = "nightly-etl"
    found = await _agent(agents).find(job)
    assert found is not None and found.pid == handles[wanted].pid


async def test_a_rerun_finds_its_live_task_before_the_ended_one(moto: MotoEcs, agents: list) -> None:
    run = str(uuid.uuid4())
    launcher = _agent(agents)
    first = await launcher.launch(_job(moto, run))
    moto.finish(_arn(first), exit_code=1)
    second = await launcher.launch(_job(moto, run))  # the server allows a run to run again

    found = await _agent(agents).find(_job(moto, run))
    assert found is not None and found.pid == second.pid


async def test_a_retry_after_a_lost_answer_starts_one_task(
    moto: MotoEcs, agents: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RunTask's first answer never arrives (the client times out after ECS started the
    task); the retry carries the same client token, and ECS answers with that task."""
    from moto.ecs.responses import EC2ContainerServiceResponse

    run_task = EC2ContainerServiceResponse.run_task
    tokens: list[str] = []

    def slow_first_answer(self: Any) -> Any:
        tokens.append(self._get_param("clientToken"))
        answer = run_task(self)
        if len(tokens) == 1:
            time.sleep(2.5)  # past the client's read timeout: the answer is lost
        return answer

    monkeypatch.setattr(EC2ContainerServiceResponse, "run_task", slow_first_answer)
    impatient = {
        **moto.credentials,
        "aws_client_parameters": {"endpoint_url": moto.url, "config": {"read_timeout": 1}},
    }
    run = str(uuid.uuid4())
    handle = await _agent(agents).launch(_job(moto, run, credentials=impatient))

    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert [t.task_arn for t in _tasks_of(moto, run)] == [_arn(handle)]


async def test_an_agent_dead_before_it_learned_the_task_is_replaced_without_a_second_task(
    moto: MotoEcs, agents: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: the launching agent never gets RunTask's answer (it dies retrying, so the
    server never learns the pid). The next agent finds the task by the run's id, watches
    it to its end and reports the real outcome; nothing is started again."""
    from moto.ecs.exceptions import ECSException
    from moto.ecs.responses import EC2ContainerServiceResponse

    run_task = EC2ContainerServiceResponse.run_task

    def answer_lost(self: Any) -> Any:
        run_task(self)
        raise ECSException("ServerException", "the answer was lost")

    run = str(uuid.uuid4())
    with monkeypatch.context() as patch:
        patch.setattr(EC2ContainerServiceResponse, "run_task", answer_lost)
        brief = BackendOptions(watch_interval=0.1, retry=RetryPolicy(initial=0.05, maximum=0.1, budget=0.5))
        with pytest.raises(BackendUnavailable):
            await _agent(agents, brief).launch(_job(moto, run))
    assert len(_tasks_of(moto, run)) == 1  # every retry carried the one token

    successor = _agent(agents)
    found = await successor.find(_job(moto, run))
    assert found is not None and _arn(found) == _tasks_of(moto, run)[0].task_arn
    moto.finish(_arn(found), exit_code=137)
    with anyio.fail_after(10):
        outcome = await successor.wait(found)
    assert outcome.exit_code == 137 and outcome.oom, outcome
    assert len(_tasks_of(moto, run)) == 1
