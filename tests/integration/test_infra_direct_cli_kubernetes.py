"""`flow-agent infra run` as a user types it, on a remote backend: the CLI (and the detached
run's follower) in their own processes, the real `kubernetes` client against the fake
cluster (tests/fakes/kubernetes_fake.py) through a kubeconfig, a pool on the real server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.kubernetes_fake import KubernetesFake
from support.prefect_api import PrefectAPI, wait_for

from agent.infra import default_base_job_template

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[KubernetesFake]:
    started = KubernetesFake().start()
    yield started
    started.stop()


@pytest.fixture
def env(api: PrefectAPI, fake: KubernetesFake, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": api.api_url,
        "FLOW_AGENT_KUBECONFIG": str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
        "FLOW_AGENT_DATA_DIR": str(tmp_path / "data"),
        "FLOW_AGENT_WATCH_INTERVAL": "0.1",
        "FLOW_AGENT_KILL_GRACE": "1",
    }


@pytest.fixture
def k8s_pool(api: PrefectAPI) -> str:
    name = f"direct-k8s-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "type": "kubernetes", "base_job_template": default_base_job_template("kubernetes")}
    api.request("POST", "/work_pools/", json=body)
    return name


def _infra(env: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "infra", *args]


def _only_job(fake: KubernetesFake) -> str | None:
    jobs = [job["metadata"]["name"] for job in fake.list_jobs()]
    return jobs[0] if len(jobs) == 1 else None


def test_output_then_the_exit_code_and_the_job_is_gone(
    env: dict[str, str], fake: KubernetesFake, k8s_pool: str
) -> None:
    argv = _infra(env, "run", "--pool", k8s_pool, "--image", "busybox:1", "--", "sh", "-c", "echo hi; exit 3")
    cli = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job = wait_for(lambda: _only_job(fake), timeout=30)
        assert job.startswith("direct-")
        fake.set_pod_phase(job, "Running")
        fake.write_output(job, "hi", "there")
        fake.set_pod_phase(job, "Failed", container_state={"terminated": {"exitCode": 3, "reason": "Error"}})
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 3, err
    assert out == "hi\nthere\n", err
    assert err.startswith("flow-agent: exit code 3") and err.count("\n") == 1
    assert fake.leftovers("default", job) == []


def test_detach_then_logs_and_kill_remove_the_job(
    env: dict[str, str], fake: KubernetesFake, k8s_pool: str
) -> None:
    argv = _infra(env, "run", "--pool", k8s_pool, "--image", "busybox:1", "--detach", "--", "sleep", "600")
    started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    ident = started.stdout.strip()
    job = ident.rsplit(":", 1)[1]
    assert ident.startswith(f"pool/{k8s_pool}:") and job.startswith("direct-")
    fake.set_pod_phase(job, "Running")
    fake.write_output(job, "tick")
    logs = _infra(env, "logs", ident)
    wait_for(
        lambda: subprocess.run(logs, env=env, capture_output=True, text=True).stdout == "tick\n", timeout=30
    )
    killed = subprocess.run(_infra(env, "kill", ident), env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0, killed.stderr
    assert fake.leftovers("default", job) == []
