"""The Kubernetes backend end to end: the real agent, the real Prefect server, the real
`kubernetes` client over HTTP against the Kubernetes API double (tests/fakes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes.kubernetes_fake import KubernetesFake
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/kubernetes.json"
IMAGE = "prefecthq/prefect:3-latest"


@pytest.fixture
def fake() -> Iterator[KubernetesFake]:
    fake = KubernetesFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def agent_env(fake: KubernetesFake, tmp_path: Path) -> dict[str, str]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    return {"FLOW_AGENT_KUBECONFIG": str(kubeconfig), "FLOW_AGENT_WATCH_INTERVAL": "0.2"}


def _pool(api: PrefectAPI, name: str) -> None:
    body = {"name": name, "type": "kubernetes", "base_job_template": json.loads(TEMPLATE.read_text())}
    api.request("POST", "/work_pools/", json=body)


def _deployment(api: PrefectAPI, pool: str, name: str, **fields: Any) -> str:
    body = {
        "name": f"{pool}-{name}",
        "flow_id": api.create_flow("k8s-tests"),
        "work_pool_name": pool,
        **fields,
    }
    return api.request("POST", "/deployments/", json=body).json()["id"]


def _job_of(fake: KubernetesFake, run_id: str, namespace: str = "default") -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        jobs = fake.list_jobs(namespace)
        return next(
            (j for j in jobs if j["metadata"]["labels"].get("prefect.io/flow-run-id") == run_id), None
        )

    return wait_for(find, 30, message=f"the job of run {run_id}")


def _force(api: PrefectAPI, run_id: str, state: str) -> None:
    body = {"state": {"type": state, "name": state.title()}, "force": True}
    api.request("POST", f"/flow_runs/{run_id}/set_state", json=body)


def _gone(fake: KubernetesFake, name: str, namespace: str = "default") -> bool:
    return not fake.leftovers(namespace, name)


def test_pool_runs_success_failure_oom_and_cleanup(
    api: PrefectAPI, pool: str, start_agent, fake: KubernetesFake, agent_env: dict[str, str]
) -> None:
    fake.auto_start = True
    _pool(api, pool)
    deployment = _deployment(api, pool, "ok", job_variables={"image": IMAGE, "pod_watch_timeout_seconds": 20})
    runs = [api.create_flow_run(deployment)["id"] for _ in range(3)]
    start_agent(pool, env=agent_env)
    jobs = [_job_of(fake, run) for run in runs]
    names = [job["metadata"]["name"] for job in jobs]

    pid = api.wait_for_pid(runs[0])["infrastructure_pid"]
    assert pid == f"{fake.cluster_uid}:default:{names[0]}"
    labels = jobs[0]["metadata"]["labels"]
    assert labels["prefect.io/flow-run-id"] == runs[0]
    assert labels["prefect.io/deployment-id"] == deployment and labels["prefect.io/flow-id"]
    assert jobs[0]["spec"]["template"]["metadata"]["labels"]["prefect.io/flow-run-id"] == runs[0]

    # success: the engine (played here) reports RUNNING then COMPLETED, the container exits 0
    _force(api, runs[0], "RUNNING")
    _force(api, runs[0], "COMPLETED")
    fake.set_pod_phase(names[0], "Succeeded")
    fake.set_pod_phase(names[1], "Failed")
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    fake.set_pod_phase(names[2], "Failed", container_state=oom)

    failed = api.wait_for_state(runs[1], "CRASHED", timeout=30)
    assert "exit code 1" in state_message(failed)
    killed = api.wait_for_state(runs[2], "CRASHED", timeout=30)
    assert "OOMKilled" in state_message(killed) and "OOM" in state_message(killed)
    for name in names:  # finished jobs are deleted (no finished_job_ttl), pods first
        wait_for(lambda name=name: _gone(fake, name), 15, message=f"job {name} deleted")
    assert state_type(api.read_flow_run(runs[0])) == "COMPLETED"
    assert {d["propagationPolicy"] for d in fake.deletions} == {"Foreground"}


def test_image_pull_backoff_fails_the_run_within_the_deadline(
    api: PrefectAPI, pool: str, start_agent, fake: KubernetesFake, agent_env: dict[str, str]
) -> None:
    _pool(api, pool)
    deployment = _deployment(
        api, pool, "pull", job_variables={"image": "nope:1", "pod_watch_timeout_seconds": 3}
    )
    run = api.create_flow_run(deployment)["id"]
    start_agent(pool, env=agent_env)
    name = _job_of(fake, run)["metadata"]["name"]
    message = 'Back-off pulling image "nope:1": ErrImagePull: not found'
    fake.waiting(name, reason="ImagePullBackOff", message=message)

    final = api.wait_for_state(run, "CRASHED", timeout=20)
    assert "ImagePullBackOff: " + message in state_message(final)
    assert "never started" in state_message(final)
    assert _gone(fake, name)


def test_cancel_deletes_the_job_in_the_foreground_with_a_grace_period(
    api: PrefectAPI, pool: str, start_agent, fake: KubernetesFake, agent_env: dict[str, str]
) -> None:
    fake.auto_start = True
    _pool(api, pool)
    deployment = _deployment(api, pool, "cancel", job_variables={"image": IMAGE})
    run = api.create_flow_run(deployment)["id"]
    start_agent(pool, env=agent_env)
    name = _job_of(fake, run)["metadata"]["name"]
    api.wait_for_pid(run)

    api.cancel(run)
    final = api.wait_for_state(run, "CANCELLED", timeout=30)
    assert name in (final["state"].get("message") or "")
    assert _gone(fake, name)
    deletion = next(d for d in fake.deletions if d["name"] == name)
    assert deletion["propagationPolicy"] == "Foreground" and str(deletion["gracePeriodSeconds"]) == "3"


def test_the_watch_resumes_after_410_gone(
    api: PrefectAPI, pool: str, start_agent, fake: KubernetesFake, agent_env: dict[str, str]
) -> None:
    fake.auto_start = True
    _pool(api, pool)
    deployment = _deployment(api, pool, "gone", job_variables={"image": IMAGE})
    run = api.create_flow_run(deployment)["id"]
    start_agent(pool, env=agent_env)
    name = _job_of(fake, run)["metadata"]["name"]
    api.wait_for_pid(run)

    def lists() -> int:
        return sum(1 for m, p, q in fake.requests if m == "GET" and p.endswith("/jobs") and "watch" not in q)

    before = lists()

    fake.expire_watches()
    fake.set_pod_phase(name, "Failed", container_state={"terminated": {"exitCode": 3, "reason": "Error"}})

    final = api.wait_for_state(run, "CRASHED", timeout=30)
    assert "exit code 3" in state_message(final)
    assert lists() > before  # it listed again instead of giving up


def test_a_kubernetes_job_block_launches_and_its_ttl_keeps_the_finished_job(
    api: PrefectAPI, registered: None, pool: str, start_agent, fake: KubernetesFake, agent_env: dict[str, str]
) -> None:
    fake.auto_start = True
    fake.namespaces.add("flows")
    block = api.create_block_document(
        "kubernetes-job",
        {"image": IMAGE, "namespace": "flows", "finished_job_ttl": 300, "labels": {"team": "data"}},
    )
    _pool(api, pool)
    deployment = _deployment(api, pool, "block", infrastructure_document_id=block["id"])
    run = api.create_flow_run(deployment)["id"]
    agent = start_agent(pool, env=agent_env)

    job = _job_of(fake, run, namespace="flows")
    name = job["metadata"]["name"]
    assert job["metadata"]["labels"]["team"] == "data" and job["spec"]["ttlSecondsAfterFinished"] == 300
    assert api.wait_for_pid(run)["infrastructure_pid"].endswith(f":flows:{name}")
    _force(api, run, "RUNNING")
    _force(api, run, "COMPLETED")
    fake.set_pod_phase(name, "Succeeded")

    wait_for(lambda: "infrastructure exited cleanly" in agent.output(), 15, message="the run's end")
    assert state_type(api.read_flow_run(run)) == "COMPLETED"
    assert [j["metadata"]["name"] for j in fake.list_jobs("flows")] == [name]  # kept for its TTL
    assert not any(d["name"] == name for d in fake.deletions)


# -- the backend alone against the double: start problems, evictions, pids -----------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    from contract.harness_kubernetes import make_harness

    made = make_harness(tmp_path)
    yield made
    await made.aclose()


async def _launched(harness: Any, name: str) -> tuple[Any, str]:
    handle = await harness.backend.launch(harness.job(name))
    return handle, handle.pid.split(":")[-1]


@pytest.mark.anyio
async def test_unschedulable_and_quota_refusals_fail_with_kubernetes_words(harness: Any) -> None:
    unschedulable, job_a = await _launched(harness, "run-unschedulable")
    quota, job_b = await _launched(harness, "run-quota")
    harness.fake.unschedulable(job_a, "0/3 nodes are available: 3 Insufficient cpu.")
    harness.fake.quota_exceeded(job_b, "exceeded quota: compute, requested: cpu=2, limited: cpu=1")

    first = await harness.backend.wait(unschedulable)
    second = await harness.backend.wait(quota)
    assert first.reason.value == "start_failed"
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu." in first.message()
    assert second.reason.value == "start_failed"
    assert "FailedCreate: " in second.detail and "exceeded quota: compute" in second.detail
    assert harness.fake.leftovers("default", job_a) == harness.fake.leftovers("default", job_b) == []


@pytest.mark.anyio
async def test_an_eviction_is_reported_as_such(harness: Any) -> None:
    handle, job = await _launched(harness, "run-evicted")
    harness.fake.set_pod_phase(job, "Running")
    harness.fake.evict(job, "The node was low on resource: memory.")

    outcome = await harness.backend.wait(handle)
    assert outcome.reason.value == "lost" and not outcome.oom
    assert "was evicted: The node was low on resource: memory." in outcome.message()


@pytest.mark.anyio
async def test_pids_name_the_cluster_and_another_backend_can_wait_and_kill(
    harness: Any, tmp_path: Path
) -> None:
    from agent.backends.base import BackendError, BackendOptions
    from agent.backends.kubernetes import KubernetesBackend

    handle, job = await _launched(harness, "run-adopted")
    harness.fake.set_pod_phase(job, "Running")
    kubeconfig = str(tmp_path / "kubeconfig")
    other = KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig=kubeconfig))
    try:
        plain = other.parse_pid(f"default:{job}", handle.flow_run_id)  # Prefect 3's format
        with pytest.raises(BackendError, match="another-cluster|connected to cluster"):
            await other.kill(other.parse_pid(f"another-cluster:default:{job}"), 1)
        outcomes = []

        async def wait() -> None:
            outcomes.append(await other.wait(plain))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)  # watching a job this backend did not create
            await anyio.sleep(0.5)
            await other.kill(plain, 1)
        assert outcomes[0].reason.value == "killed"
        await other.kill(plain, 1)  # idempotent
        assert await other.inspect(plain) is not None  # gone: LOST, not "still running"
    finally:
        await other.aclose()
    assert harness.fake.leftovers("default", job) == []


@pytest.mark.anyio
async def test_a_cluster_config_block_picks_the_cluster(harness: Any) -> None:
    from agent.backends.base import BackendOptions, Job
    from agent.backends.kubernetes import KubernetesBackend

    kubeconfig = json.loads(
        harness.fake.write_kubeconfig(Path(harness.kubeconfig).with_name("block.json")).read_text()
    )
    backend = KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig="/nonexistent/kubeconfig"))
    job = harness.job("run-cluster-config")
    runtime = replace(job.runtime, cluster_config={"config": kubeconfig, "context_name": "fake"})
    try:
        handle = await backend.launch(Job(job.flow_run_id, job.flow_run_name, job.kind, job.payload, runtime))
        assert handle.pid.startswith(harness.fake.cluster_uid + ":default:")
        harness.fake.set_pod_phase(handle.pid.split(":")[-1], "Succeeded")
        assert (await backend.wait(handle)).succeeded
    finally:
        await backend.aclose()
