"""Finding a run's Kubernetes Job by its flow run id, as another agent would after the one
that created it died before reporting the pid: the real `kubernetes` client over HTTP
against the Kubernetes API double (tests/fakes), a NEW backend instance each time, and a
Job rebuilt from scratch (no name, no pid: only the run id and the payload's namespace)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from agent.backends.base import BackendError, BackendOptions, Handle
from agent.backends.kubernetes import KubernetesBackend
from agent.retry import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

RUN_LABEL = "prefect.io/flow-run-id"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Any]:
    from contract.harness_kubernetes import make_harness

    made = make_harness(tmp_path)
    yield made
    await made.aclose()


def _backend(harness: Any, **options: Any) -> KubernetesBackend:
    return KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig=harness.kubeconfig, **options))


async def _orphan(harness: Any, run: str) -> Handle:
    """A job whose creator died after creating it, before anyone learned its pid."""
    creator = _backend(harness)
    try:
        handle = await creator.launch(harness.job(run))
    finally:
        await creator.aclose()  # stopped, as a dead agent is: the job is left running
    return handle


def _jobs_of(harness: Any, run: str) -> list[str]:
    jobs = harness.fake.list_jobs("default")
    return [j["metadata"]["name"] for j in jobs if j["metadata"]["labels"].get(RUN_LABEL) == run]


def _creates(harness: Any) -> int:
    return sum(1 for method, path, _ in harness.fake.requests if method == "POST" and path.endswith("/jobs"))


async def test_a_live_orphan_is_found_by_run_id_and_adopted_without_a_second_job(harness: Any) -> None:
    orphan = await _orphan(harness, "run-orphan")
    other = await _orphan(harness, "run-other")
    harness.fake.set_pod_phase(orphan.pid.split(":")[-1], "Running")
    creates = _creates(harness)

    finder = _backend(harness)
    try:
        rebuilt = harness.job("run-orphan")
        found = await finder.find(rebuilt)
        assert found is not None and found == orphan  # kind, pid and run id
        assert found.runtime == rebuilt.runtime  # the credentials it will be watched with
        assert (await finder.find(harness.job("run-other"))) == other  # each run its own job
        assert await finder.find(harness.job("run-never-launched")) is None
        assert await finder.inspect(found) is None  # alive

        outcomes = []

        async def wait() -> None:
            outcomes.append(await finder.wait(found))

        async with anyio.create_task_group() as tg:  # adopted: watched to its real end
            tg.start_soon(wait)
            await anyio.sleep(0.5)
            state = {"terminated": {"exitCode": 3, "reason": "Error"}}
            harness.fake.set_pod_phase(orphan.pid.split(":")[-1], "Failed", container_state=state)
        assert outcomes[0].exit_code == 3 and "exit code 3" in outcomes[0].message()
    finally:
        await finder.aclose()
    assert _creates(harness) == creates  # finding and adopting created nothing
    assert _jobs_of(harness, "run-orphan") == []  # the ended job was cleaned up, once
    assert _jobs_of(harness, "run-other") == [other.pid.split(":")[-1]]


async def test_an_orphan_that_ended_unwatched_is_found_and_inspect_gives_its_real_end(harness: Any) -> None:
    orphan = await _orphan(harness, "run-ended")
    await harness.finish(orphan, exit_code=137, oom=True)  # while no agent was up

    finder = _backend(harness)
    try:
        found = await finder.find(harness.job("run-ended"))
        assert found == orphan
        outcome = await finder.inspect(found)
        assert outcome is not None and outcome.oom and outcome.exit_code == 137, outcome
        assert (await finder.wait(found)) == outcome  # adopting it reports the same end
    finally:
        await finder.aclose()
    assert await harness.leftovers(orphan) == []


async def test_find_says_it_cannot_tell_when_the_cluster_is_unreachable(harness: Any) -> None:
    await _orphan(harness, "run-x")
    harness.fake.stop()  # the API server is gone: "none" cannot be proved
    finder = _backend(harness, retry=RetryPolicy(initial=0.05, maximum=0.1, budget=0.5))
    try:
        with pytest.raises(BackendError, match="cannot reach the Kubernetes API"):
            await finder.find(harness.job("run-x"))
    finally:
        await finder.aclose()


async def test_the_double_answers_label_selectors_as_the_api_documents(harness: Any) -> None:
    for run in ("run-a", "run-b"):
        await harness.backend.launch(harness.job(run))
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=harness.kubeconfig, client_configuration=configuration)
    batch = k8s.BatchV1Api(k8s.ApiClient(configuration))

    def listing(selector: str) -> list[str]:
        listed = batch.list_namespaced_job("default", label_selector=selector)
        assert (listed.kind, listed.api_version) == ("JobList", "batch/v1")
        return sorted(job.metadata.labels[RUN_LABEL] for job in listed.items)

    try:
        assert listing(f"{RUN_LABEL}=run-a") == ["run-a"]
        assert listing(f"{RUN_LABEL}==run-b") == ["run-b"]
        assert listing(f"{RUN_LABEL}!=run-a") == ["run-b"]
        assert listing(f"{RUN_LABEL} in (run-a, run-b)") == ["run-a", "run-b"]
        assert listing(f"{RUN_LABEL} notin (run-a),{RUN_LABEL}") == ["run-b"]
        assert listing(f"{RUN_LABEL}=run-c") == listing("!" + RUN_LABEL) == []
        assert listing("") == ["run-a", "run-b"]  # an empty selector selects everything
        with pytest.raises(k8s.ApiException) as refused:
            batch.list_namespaced_job("default", label_selector=f"{RUN_LABEL} in run-a")
        assert refused.value.status == 400
    finally:
        batch.api_client.close()
