"""What every job is told about its run, end to end on the session's server.

* the flow's name reaches the kinds (issue 15's bug: ECS block families were
  `prefect__unknown-flow__...` in production, ACI groups named after the run);
* the agent's Prefect settings, its profile's included, reach a launched flow's process;
* a run launched by the agent carries Prefect's worker labels (issue 12's, checked here).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from support.prefect_api import PrefectAPI
from support.proxy import FaultProxy

from agent.api import PrefectClient
from agent.infra import default_base_job_template
from agent.infra.kinds import Kinds
from agent.runtime.jobs import JobBuilder

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FLOW = "Nightly ETL Flow"


def _builder(api: PrefectClient) -> JobBuilder:
    return JobBuilder(
        api, Kinds(python=sys.executable, base_env={}), api_url=api.api_url, api_key=None,
        auth_string=None, environ={}, worker_name="w", on_secret=lambda _v: None,
    )  # fmt: skip


async def _build(url: str, run_id: str) -> dict:
    async with PrefectClient(url) as client:
        run = await client.read_flow_run(run_id)
        pool = await client.read_work_pool(run.work_pool_name) if run.work_pool_name else None
        deployment = await client.read_deployment(run.deployment_id) if run.deployment_id else None
        job = await _builder(client).build(run, pool, deployment)
    return dict(job.payload)


async def test_ecs_block_family_is_named_after_the_flow(api: PrefectAPI, registered: None, pool: str) -> None:
    definition = {"containerDefinitions": [{"name": "prefect", "image": "flows:1"}]}
    block = api.create_block_document("ecs-task", {"task_definition": definition})
    api.request("POST", "/work_pools/", json={"name": pool, "type": "ecs"})
    body = {"name": f"{pool}-daily", "flow_id": api.create_flow(FLOW), "work_pool_name": pool,
            "infrastructure_document_id": block["id"]}  # fmt: skip
    deployment = api.request("POST", "/deployments/", json=body).json()["id"]
    run = api.create_flow_run(deployment)
    payload = await _build(api.api_url, run["id"])
    assert payload["task_definition"]["family"] == f"prefect__nightly-etl-flow__{pool}-daily"


async def test_env_and_labels_name_the_flow_the_version_and_the_deployments_update(
    api: PrefectAPI, pool: str
) -> None:
    body = {"name": pool, "type": "kubernetes", "base_job_template": default_base_job_template("kubernetes")}
    api.request("POST", "/work_pools/", json=body)
    # deployments are upserted on (flow, name): a name of this test's own
    deployment_id = api.create_deployment(
        api.create_flow(FLOW), f"{pool}-daily", pool, job_variables={"image": "flows:1"}
    )
    run = api.create_flow_run(deployment_id)
    payload = await _build(api.api_url, run["id"])
    container = payload["job"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_NAME"] == FLOW
    version = api.request("GET", "/admin/version").json()
    updated = api.request("GET", f"/deployments/{deployment_id}").json()["updated"]
    job = payload["job"]
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["prefect.io/flow-name"] == "Nightly-ETL-Flow"
        assert labels["prefect.io/version"] == version == labels["app.kubernetes.io/version"]
        # the deployment's name wins, as in Prefect (slugified: runs of "-" collapse)
        assert labels["app.kubernetes.io/name"] == re.sub("-+", "-", f"{pool}-daily")
        assert labels["prefect.io/deployment-updated"].startswith(updated[:19].replace(":", "-"))


def test_agent_settings_reach_the_flow_and_the_run_carries_worker_labels(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "ops"\n[profiles.ops]\nPREFECT_TASKS_DEFAULT_RETRIES = 2\n')
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    run = api.create_flow_run(deployment)
    start_agent(pool, env={"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "DEBUG"})
    api.wait_for_state(run["id"], "COMPLETED", "CRASHED", "FAILED", timeout=90)
    seen = json.loads(out.read_text())
    assert seen["PREFECT_LOGGING_LEVEL"] == "DEBUG"  # env-set on the agent
    assert seen["PREFECT_TASKS_DEFAULT_RETRIES"] == "2"  # from the agent's active profile
    assert seen["PREFECT__FLOW_NAME"] == "flow-agent-tests"
    labels = api.read_flow_run(run["id"])["labels"]
    pool_id = api.request("GET", f"/work_pools/{pool}").json()["id"]
    assert labels["prefect.worker.type"] == "process"
    assert labels["prefect.work-pool.name"] == pool and labels["prefect.work-pool.id"] == pool_id
    assert labels["prefect.worker.name"]


async def test_a_server_without_admin_version_is_asked_once_and_the_label_left_out(
    api: PrefectAPI, pool: str
) -> None:
    api.create_process_pool(pool)
    deployment = api.command_deployment(pool, "true")
    runs = [api.create_flow_run(deployment)["id"] for _ in range(2)]
    with FaultProxy(api.api_url, fail_ratio=0, status=404) as proxy:
        proxy.fail_route(r"/admin/version$")
        async with PrefectClient(proxy.url) as client:
            builder = _builder(client)
            pool_model = await client.read_work_pool(pool)
            for run_id in runs:
                run = await client.read_flow_run(run_id)
                job = await builder.build(run, pool_model, await client.read_deployment(deployment))
                assert builder.context(run, pool_model, None).labels.get("prefect.io/version") is None
                assert job.payload["env"]["PREFECT__FLOW_NAME"] == "flow-agent-tests"
        assert proxy.by_route["GET /api/admin/version"] == 1
        assert proxy.by_route["GET /api/flows/{id}"] == 1  # the flow's name: read once per flow
