"""Cloud Run v2: prefect-gcp 0.6.22's CloudRunWorkerV2 job body against flow-agent, five variable sets."""

from __future__ import annotations

from typing import Any

import pytest
from prefect_gcp.workers.cloud_run import CloudRunWorker
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

from fidelity.harness import REFERENCED_ENV, Case, World, assert_same, block_ref, both_sides

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "us-docker.pkg.dev/acme/flows/etl:2026.12"
CREDENTIALS = (("variables", "properties", "credentials", "default"), block_ref("fid-gcp"))
LAUNCH = {
    # Prefect: "<slug>-<uuid4 hex>", new for every attempt; flow-agent: "<slug>-<7 hex of the
    # run id>", the same for the same run, so a restarted agent finds the job it created
    "job_id": "a random suffix at Prefect, derived from the run id in flow-agent",
}


async def _finish(config: Any, **_: Any) -> dict[str, Any]:
    # what `JobV2.create` sends (CloudRunWorkerV2._create_job_and_wait_for_registration)
    return {
        "job": config.job_body,
        "job_id": config.job_name,
        "parent": f"projects/{config.project}/locations/{config.region}",
    }


CASES = [
    Case("defaults", {"image": IMAGE}, template_edits=[CREDENTIALS]),
    Case("template-default-image", {}, template_edits=[CREDENTIALS]),
    Case(
        "every-variable",
        {
            "image": IMAGE,
            "name": "nightly-etl",
            "env": {"TEAM": "data", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data", "Cost Center": "42"},
            "command": "prefect flow-run execute",
            "region": "europe-west1",
            "args": ["--verbose"],
            "env_from_secrets": {"DB_PASSWORD": {"secret": "db-password", "version": "3"}},
            "prefect_api_key_secret": {"secret": "prefect-api-key", "version": "latest"},
            "cloudsql_instances": ["acme:europe-west1:db"],
            "keep_job": True,
            "launch_stage": "BETA",
            "max_retries": 1,
            "cpu": "2",
            "memory": "4Gi",
            "timeout": 3600,
            "vpc_connector_name": "projects/acme/locations/europe-west1/connectors/flows",
            "service_account_name": "flows@acme.iam.gserviceaccount.com",
        },
        template_edits=[CREDENTIALS],
    ),
    Case(
        "block-references",
        {"image": IMAGE, "env": REFERENCED_ENV},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "run-overrides",
        {"image": IMAGE, "env": {"A": "deployment", "B": "deployment"}, "cpu": "1"},
        run_vars={"env": {"B": "run", "C": "run"}, "memory": "2Gi", "labels": {"run": "yes"}},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "customized-template",
        {"image": IMAGE},
        template_edits=[
            CREDENTIALS,
            (("job_configuration", "job_body", "labels"), {"owner": "platform"}),
            (("job_configuration", "job_body", "template", "parallelism"), 1),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_cloud_run_body_matches_prefects_worker(world: World, case: Case) -> None:
    sides = await both_sides(world, CloudRunWorkerV2, "cloud-run-v2", case, _finish)
    assert_same(sides, {**LAUNCH, **case.allowed})


# ---------------------------------------------------------------- Cloud Run v1 (`cloud-run` pools)

LAUNCH_V1 = {
    # Prefect: "<slug>-<uuid4 hex>"; flow-agent: 32 hex digits derived from the run id
    "job.metadata.name": "a random suffix at Prefect, derived from the run id in flow-agent",
}


async def _finish_v1(config: Any, **_: Any) -> dict[str, Any]:
    # what `Job.create` sends (CloudRunWorker._create_job_and_wait_for_registration)
    return {
        "job": config.job_body,
        "parent": f"namespaces/{config.credentials.project}",
        "endpoint": f"https://{config.region}-run.googleapis.com",
    }


CASES_V1 = [
    Case("defaults", {"image": IMAGE}, template_edits=[CREDENTIALS]),
    Case(
        "every-variable",
        {
            "image": IMAGE,
            "name": "nightly-etl",
            "env": {"TEAM": "data", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data", "Cost Center": "42"},
            "command": "prefect flow-run execute",
            "region": "europe-west1",
            "prefect_api_auth_string_secret": {"secret": "prefect-auth", "version": "2"},
            "keep_job": True,
            "cpu": "2000m",
            "memory": "4Gi",
            "timeout": 3600,
            "vpc_connector_name": "flows-connector",
            "service_account_name": "flows@acme.iam.gserviceaccount.com",
        },
        template_edits=[CREDENTIALS],
    ),
    Case(
        "block-references",
        {"image": IMAGE, "env": REFERENCED_ENV},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "run-overrides",
        {"image": IMAGE, "env": {"A": "deployment", "B": "deployment"}, "cpu": "1000m"},
        run_vars={"env": {"B": "run", "C": "run"}, "memory": "2Gi", "labels": {"run": "yes"}},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "customized-template",
        {"image": IMAGE},
        template_edits=[
            CREDENTIALS,
            (("job_configuration", "job_body", "metadata", "labels"), {"owner": "platform"}),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES_V1, ids=[c.id for c in CASES_V1])
async def test_cloud_run_v1_body_matches_prefects_worker(world: World, case: Case) -> None:
    sides = await both_sides(world, CloudRunWorker, "cloud-run", case, _finish_v1)
    assert_same(sides, {**LAUNCH_V1, **case.allowed})
