"""Kubernetes: prefect-kubernetes 0.8.0's job configuration against flow-agent, five variable sets."""

from __future__ import annotations

from typing import Any

import pytest
from prefect_kubernetes.worker import KubernetesWorker

from fidelity.harness import REFERENCED_ENV, Case, World, assert_same, both_sides

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "ghcr.io/acme/flows:2026.12"


async def _finish(config: Any, **_: Any) -> dict[str, Any]:
    # the manifest `create_namespaced_job` receives (KubernetesWorker._create_job)
    return {"namespace": config.namespace, "job": config.job_manifest}


CASES = [
    Case("defaults", {"image": IMAGE}),
    Case(
        "every-variable",
        {
            "image": IMAGE,
            "name": "Nightly ETL",
            "env": {"TEAM": "data", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data", "Cost Center": "42"},
            "annotations": {"owner": "platform@example.com"},
            "command": "prefect flow-run execute",
            "namespace": "flows",
            "service_account_name": "flow-runner",
            "image_pull_policy": "Always",
            "backoff_limit": 0,
            "finished_job_ttl": 600,
            "job_watch_timeout_seconds": 3600,
            "pod_watch_timeout_seconds": 120,
            "stream_output": False,
            "cpu_request": "500m",
            "cpu_limit": "2",
            "memory_request": "512Mi",
            "memory_limit": "4Gi",
        },
        allowed={
            "job.metadata.generateName": (
                "Prefect sends the name as it is ('Nightly ETL-') and the API rejects the Job; "
                "flow-agent makes it a valid name (kubernetes_manifest.generate_name)"
            ),
        },
    ),
    Case(
        "block-references",
        {"image": IMAGE, "env": REFERENCED_ENV},
    ),
    Case(
        "run-overrides",
        {"image": IMAGE, "env": {"A": "deployment", "B": "deployment"}, "namespace": "flows"},
        run_vars={"env": {"B": "run", "C": "run"}, "image": IMAGE + "-hotfix", "labels": {"run": "yes"}},
    ),
    Case(
        "customized-template",
        {"image": IMAGE},
        template_edits=[
            (
                ("job_configuration", "job_manifest", "spec", "template", "spec", "nodeSelector"),
                {"pool": "flows"},
            ),
            (("job_configuration", "job_manifest", "metadata", "labels"), {"owner": "platform"}),
            (
                ("job_configuration", "job_manifest", "spec", "template", "spec", "containers", 0, "env"),
                [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}],
            ),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_kubernetes_manifest_matches_prefects_worker(world: World, case: Case) -> None:
    sides = await both_sides(world, KubernetesWorker, "kubernetes", case, _finish)
    assert_same(sides, case.allowed)
