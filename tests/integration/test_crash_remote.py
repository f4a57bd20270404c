"""Death between launch and pid report, on ECS (moto) and Kubernetes (the API double).

The first agent reaches the server through a proxy that refuses its pid reports, so it
creates the workload and then sits retrying `PATCH /flow_runs/{id}`; it is SIGKILLed
there. The server then knows a PENDING run claimed by a dead agent and nothing about where
it runs. The next agent must find the workload by the run's id, adopt it, report its pid
and its end, and start no second workload.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.kubernetes_fake import KubernetesFake
from support.moto_ecs import MotoEcs, ecs_template, moto_ecs
from support.prefect_api import PrefectAPI, state_message, wait_for
from support.proxy import FaultProxy
from support.server import PrefectServer

pytestmark = pytest.mark.integration

K8S_TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/kubernetes.json"
IMAGE = "registry.example/flows:1"
FAST = {"FLOW_AGENT_RECONCILE_INTERVAL": "1", "FLOW_AGENT_WATCH_INTERVAL": "0.2"}


@pytest.fixture
def no_pid_reports(any_server: PrefectServer) -> Iterator[FaultProxy]:
    """Forwards everything but the pid report (`PATCH /flow_runs/{id}`), answered 503; on
    SQLite and on PostgreSQL (every test that takes it runs on both)."""
    with FaultProxy(any_server.api_url, fail_ratio=0.0) as proxy:
        proxy.fail_route(r"^PATCH /api/flow_runs/\{id\}$")
        yield proxy


def _pool(api: PrefectAPI, name: str, type: str, template: dict[str, Any]) -> None:
    api.request("POST", "/work_pools/", json={"name": name, "type": type, "base_job_template": template})


def _deployment(api: PrefectAPI, pool: str, **fields: Any) -> str:
    body = {"name": f"{pool}-d", "flow_id": api.create_flow("crash-remote"), "work_pool_name": pool, **fields}
    return api.request("POST", "/deployments/", json=body).json()["id"]


def _die_after_launch(start_agent, pool: str, env: dict[str, str], proxy: FaultProxy, launched) -> None:
    """Start an agent behind `proxy`; SIGKILL it once `launched()` shows the workload."""
    first = start_agent(pool, "--name", f"{pool}-a", api_url=proxy.url, env=env)
    wait_for(launched, 60, interval=0.2, message="the workload created")
    wait_for(lambda: proxy.stats()["injected"] >= 1, 30, message="a refused pid report")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)


def test_ecs_task_created_before_the_agent_died_is_found_and_adopted(
    any_api: PrefectAPI, pool: str, any_start_agent, no_pid_reports: FaultProxy
) -> None:
    api, start_agent = any_api, any_start_agent
    moto: MotoEcs = moto_ecs()
    moto.reset()
    env = {**moto.env, **FAST}
    _pool(api, pool, "ecs", ecs_template())
    run_id = api.create_flow_run(_deployment(api, pool, job_variables={"image": IMAGE}))["id"]

    def tasks_of_run() -> list[Any]:
        return [t for t in moto.tasks() if t.started_by == run_id or _tagged(t, run_id)]

    _die_after_launch(start_agent, pool, env, no_pid_reports, tasks_of_run)
    assert not api.read_flow_run(run_id)["infrastructure_pid"]
    (task,) = tasks_of_run()

    start_agent(pool, "--name", f"{pool}-a", env=env)  # the restart, straight to the server
    pid = api.wait_for_pid(run_id, timeout=60)["infrastructure_pid"]
    assert pid.endswith(f"::{task.task_arn}")
    moto.finish(task.task_arn, exit_code=3)
    final = api.wait_for_state(run_id, "CRASHED", timeout=60)
    assert "exit code 3" in state_message(final), state_message(final)
    assert tasks_of_run() == [task]  # no second task


def _tagged(task: Any, run_id: str) -> bool:
    tags = getattr(task, "tags", None) or []
    return any(t.get("value") == run_id and t.get("key") == "prefect.io/flow-run-id" for t in tags)


@pytest.fixture
def k8s() -> Iterator[KubernetesFake]:
    fake = KubernetesFake().start()
    yield fake
    fake.stop()


def test_kubernetes_job_created_before_the_agent_died_is_found_and_adopted(
    any_api: PrefectAPI,
    pool: str,
    any_start_agent,
    no_pid_reports: FaultProxy,
    k8s: KubernetesFake,
    tmp_path: Path,
) -> None:
    api, start_agent = any_api, any_start_agent
    env = {"FLOW_AGENT_KUBECONFIG": str(k8s.write_kubeconfig(tmp_path / "kubeconfig")), **FAST}
    _pool(api, pool, "kubernetes", json.loads(K8S_TEMPLATE.read_text()))
    run_id = api.create_flow_run(_deployment(api, pool, job_variables={"image": IMAGE}))["id"]

    def jobs_of_run() -> list[dict[str, Any]]:
        jobs = k8s.list_jobs("default")
        return [j for j in jobs if j["metadata"]["labels"].get("prefect.io/flow-run-id") == run_id]

    creates: list[str] = []
    create_job = k8s.create_job

    def counting_create(namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        creates.append(namespace)
        return create_job(namespace, body)

    k8s.create_job = counting_create  # type: ignore[method-assign]

    _die_after_launch(start_agent, pool, env, no_pid_reports, jobs_of_run)
    assert not api.read_flow_run(run_id)["infrastructure_pid"]
    (job,) = jobs_of_run()
    name = job["metadata"]["name"]

    start_agent(pool, "--name", f"{pool}-a", env=env)
    pid = api.wait_for_pid(run_id, timeout=60)["infrastructure_pid"]
    assert pid == f"{k8s.cluster_uid}:default:{name}"
    k8s.set_pod_phase(name, "Failed")
    final = api.wait_for_state(run_id, "CRASHED", timeout=60)
    assert "exit code 1" in state_message(final), state_message(final)
    assert creates == ["default"]  # one Job, never a second
