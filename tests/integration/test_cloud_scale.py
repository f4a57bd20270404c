"""Cloud backends at scale, the correctness half (issue 18), through the backends directly:
many ECS runs with a fifth of RegisterTaskDefinition, RunTask and DescribeTasks throttled
(every run starts, none ends CRASHED or LOST because of throttling, each distinct task
definition is registered once, status reads ask about up to 100 tasks a call); many Cloud
Run executions read with one list a round (a get each when listing is refused); many
Kubernetes jobs followed by the namespace watches alone (no status read per run). The
figures at 1,000 runs (time, memory per tracked run) are bench/cloud_scale.py's; nothing
here is timed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest
from contract.harness_cloud_run import CloudRunHarness
from contract.harness_kubernetes import KubernetesHarness
from support.ecs_throttle import throttled
from support.moto_ecs import MotoEcs, ecs_job, moto_ecs

from agent.backends import BackendOptions
from agent.backends.base import Backend, Handle, Job
from agent.backends.cloud_run import CloudRunBackend
from agent.backends.ecs import EcsBackend
from agent.backends.ecs.taskdefs import digest
from agent.outcome import Outcome, Reason
from agent.retry import RetryPolicy

pytestmark = [
    pytest.mark.integration,
    # moto serializes the error though ECS's model names no ThrottlingException shape
    pytest.mark.filterwarnings(r"ignore:Exception\(ECSException\) with code ThrottlingException"),
]

RUNS = 50
IMAGES = ("registry.example/flows:1", "registry.example/flows:2")


@pytest.fixture
def moto() -> MotoEcs:
    double = moto_ecs()
    double.reset()
    return double


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_throttled_ecs_runs_all_start_and_end_as_their_tasks_did(
    moto: MotoEcs, anyio_backend: str
) -> None:
    jobs = [ecs_job(moto, f"scale-{i:03d}", IMAGES[i % 2]) for i in range(RUNS)]
    configurations = {digest(job.payload["task_definition"]) for job in jobs}
    # the user's policy, with short sleeps: the test waits for no 30 s backoff
    retry = RetryPolicy(initial=0.05, maximum=0.5, budget=60)
    backend = EcsBackend(BackendOptions(watch_interval=0.2, retry=retry))
    handles: dict[str, Handle] = {}
    outcomes: dict[str, Outcome] = {}
    with throttled(0.2, seed=18, first=True) as calls:
        try:
            async with anyio.create_task_group() as tg:  # a burst: every launch at once
                for job in jobs:

                    async def launch(job=job) -> None:  # noqa: ANN001 - the loop's job
                        handles[job.flow_run_id] = await backend.launch(job)

                    tg.start_soon(launch)
            await anyio.sleep(0.6)  # a few watch rounds, some of them throttled
            for handle in handles.values():
                moto.finish(handle.pid.split("::", 1)[1], exit_code=0)
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for run, handle in handles.items():

                        async def wait(run=run, handle=handle) -> None:  # noqa: ANN001
                            outcomes[run] = await backend.wait(handle)

                        tg.start_soon(wait)
        finally:
            await backend.aclose()

    # throttling happened on each of the three calls (else this test proves nothing)
    assert set(calls.throttled) == {"register_task_definition", "run_task", "describe_tasks"}
    assert len(handles) == RUNS and len(moto.tasks()) == RUNS  # every run started, once
    assert Counter(o.reason for o in outcomes.values()) == {Reason.EXITED: RUNS}
    assert {o.exit_code for o in outcomes.values()} == {0}
    # one revision per distinct configuration, though registrations were throttled
    assert len(configurations) == 2
    assert len(moto.task_definitions()) == len(configurations)
    assert sum(calls.registered_families.values()) == len(configurations)
    # status reads are batched: up to 100 tasks a call, every tracked task in one call here
    assert max(calls.describe_sizes) <= 100
    assert RUNS in calls.describe_sizes


# -- Kubernetes and Cloud Run: many tracked runs, statuses read together ---------------------------


async def _launch_all(backend: Backend, jobs: list[Job]) -> dict[str, Handle]:
    handles: dict[str, Handle] = {}
    async with anyio.create_task_group() as tg:
        for job in jobs:

            async def launch(job: Job = job) -> None:
                handles[job.flow_run_id] = await backend.launch(job)

            tg.start_soon(launch)
    return handles


async def _wait_all(backend: Backend, handles: dict[str, Handle]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for run, handle in handles.items():

                async def wait(run: str = run, handle: Handle = handle) -> None:
                    outcomes[run] = await backend.wait(handle)

                tg.start_soon(wait)
    return outcomes


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("list_refused", [False, True], ids=["listed", "list-refused"])
async def test_cloud_run_reads_many_executions_with_one_list_a_round(
    tmp_path: Path, anyio_backend: str, list_refused: bool
) -> None:
    harness = CloudRunHarness(tmp_path)
    await harness.backend.aclose()  # the contract's short start deadline is not this test's point
    fake = harness.fake
    backend = CloudRunBackend(BackendOptions(watch_interval=0.1, gcp_endpoint=fake.url), start_timeout=120)
    try:
        if list_refused:  # a role with run.executions.get but not list: a get each, still right
            fake.inject("list_executions", 403)
        handles = await _launch_all(backend, [harness.job(f"scale-{i:02d}") for i in range(30)])
        for handle in handles.values():
            fake.start_execution(handle.pid)
        with anyio.fail_after(30):
            # the first list (refused or not) came after the rounds of fewer executions:
            # from here on every round reads all 30 (rounds follow one another)
            while "list_executions" not in fake.calls:
                await anyio.sleep(0.05)
            before = Counter(fake.calls)
            read = "get_execution" if list_refused else "list_executions"
            wanted = 60 if list_refused else 2  # two rounds with every run tracked and running
            while (Counter(fake.calls) - before)[read] < wanted:
                await anyio.sleep(0.05)
        rounds = Counter(fake.calls) - before
        if list_refused:  # a get each, every round, and no list tried again
            assert rounds["list_executions"] == 0
        else:  # one list a round, no get of an execution that is still running
            assert rounds["get_execution"] == 0
        for handle in handles.values():
            fake.finish_execution(handle.pid, 0)
        outcomes = await _wait_all(backend, handles)
    finally:
        await backend.aclose()
        fake.close()
    assert [(o.reason, o.exit_code) for o in outcomes.values()] == [(Reason.EXITED, 0)] * 30
    assert fake.list_jobs() == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_kubernetes_tracks_many_jobs_with_its_watches_alone(tmp_path: Path, anyio_backend: str) -> None:
    harness = KubernetesHarness(tmp_path)
    fake, backend = harness.fake, harness.backend
    fake.auto_start = True
    try:
        handles = await _launch_all(backend, [harness.job(f"scale-{i:02d}") for i in range(30)])
        with anyio.fail_after(30):  # every pod's output is followed (its stream opened)
            while len({path for _, path, _ in fake.requests if path.endswith("/log")}) < 30:
                await anyio.sleep(0.05)
        before = len(fake.requests)
        await anyio.sleep(0.5)  # 5 watch intervals with every run tracked: the watches say it all
        # a status read: any GET but the watch streams and the pods' log streams
        reads = [
            (method, path)
            for method, path, query in fake.requests[before:]
            if method == "GET" and "watch" not in query and not path.endswith("/log")
        ]
        assert reads == []
        state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        for handle in handles.values():
            fake.set_pod_phase(handle.pid.split(":")[-1], "Succeeded", container_state=state)
        outcomes = await _wait_all(backend, handles)
    finally:
        await harness.aclose()
    assert [(o.reason, o.exit_code) for o in outcomes.values()] == [(Reason.EXITED, 0)] * 30
