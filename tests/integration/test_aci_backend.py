"""ACI runs end to end: the real agent, the real Prefect server, the real Azure SDK over HTTPS
against the ARM fake (tests/fakes/aci_fake.py), with real Entra credentials
(`DefaultAzureCredential` from the environment for the pool, the block's client secret for
the block) getting their tokens from the fake's identity endpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.core.credentials import AccessToken
from contract.harness_aci import StaticTokenCredential
from fakes.aci_fake import SCENARIO_ENV, AciFake
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for

from agent.backends.aci import AciBackend
from agent.backends.base import BackendError, BackendOptions, Job
from agent.infra.aci import AciKind
from agent.infra.patch import apply_customizations
from agent.infra.spec import RunContext
from agent.outcome import Reason

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/azure-container-instance.json"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
TENANT, CLIENT_ID, CLIENT_SECRET = "tenant-1", "client-1", "client-secret-value-1"
BLOCK_CLIENT_ID, BLOCK_SECRET = "block-client", "block-secret-value-2"
PIPELINE_SECRET = "pipeline-secret-value-3"
GROUP_TYPE = "Microsoft.ContainerInstance/containerGroups"
IDENTITY = "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
SUBNET = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/a"


@pytest.fixture(scope="module")
def fake() -> Iterator[AciFake]:
    with AciFake() as started:
        started.client_secrets.update({CLIENT_ID: CLIENT_SECRET, BLOCK_CLIENT_ID: BLOCK_SECRET})
        yield started


def _agent_env(fake: AciFake) -> dict[str, str]:
    return {
        "FLOW_AGENT_AZURE_ARM_ENDPOINT": fake.url,
        "FLOW_AGENT_WATCH_INTERVAL": "0.2",
        "REQUESTS_CA_BUNDLE": fake.ca_file,  # the SDK and MSAL trust the fake's test CA
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
    }


def _credential_kwargs(fake: AciFake) -> dict[str, Any]:
    return {"authority": fake.url, "disable_instance_discovery": True}


def _set_state(api: PrefectAPI, run_id: str, type_: str) -> None:
    body = {"state": {"type": type_, "name": type_.title()}, "force": True}
    api.request("POST", f"/flow_runs/{run_id}/set_state", json=body)


def _group_of(api: PrefectAPI, run_id: str) -> str:
    pid = api.wait_for_pid(run_id, timeout=30)["infrastructure_pid"]
    prefix = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-agents/providers/{GROUP_TYPE}/"
    assert pid.startswith(prefix), pid
    return pid.removeprefix(prefix)


def _gone(fake: AciFake, *names: str) -> None:
    wait_for(lambda: not set(names) & set(fake.list_groups()), 20, message=f"groups {names} deleted")


def _pool_deployment(api: PrefectAPI, pool: str, name: str, variables: dict[str, Any]) -> str:
    """An ACI pool with Prefect's default template, and a deployment on it."""
    template = json.loads(TEMPLATE.read_text())
    api.request(
        "POST",
        "/work_pools/",
        json={"name": pool, "type": "azure-container-instance", "base_job_template": template},
    )
    body = {
        "name": f"{pool}-{name}",
        "flow_id": api.create_flow("aci-flow"),
        "work_pool_name": pool,
        "job_variables": variables,
    }
    return api.request("POST", "/deployments/", json=body).json()["id"]


def test_pool_runs_end_truthfully_and_leave_nothing_behind(
    api: PrefectAPI, pool: str, start_agent, fake: AciFake
) -> None:
    variables = {
        "image": "registry.example/flows:1",
        "resource_group_name": "rg-agents",
        "subscription_id": SUBSCRIPTION,
        "task_start_timeout_seconds": 3,
        "cpu": 2, "memory": 3.5, "gpu_count": 1, "gpu_sku": "V100",
        "identities": [IDENTITY],
        "subnet_ids": [SUBNET],
        "dns_servers": ["10.0.0.10"],
        "image_registry": {"registry_url": "registry.example", "username": "puller", "password": "pw-4"},
        "aci_credentials": {"credential_kwargs": _credential_kwargs(fake)},
        "env": {"GREETING": "hello"},
    }  # fmt: skip
    deployment = _pool_deployment(api, pool, "aci", variables)

    def run(scenario: str = "") -> str:
        env = {"GREETING": "hello", **({SCENARIO_ENV: scenario} if scenario else {})}
        return api.create_flow_run(deployment, job_variables={"env": env})["id"]

    runs = {
        "success": run(), "exit1": run(), "oom": run(), "cancel": run(),
        "timeout": run("waiting:ErrImagePull: registry.example/flows:1 not found"),
        "provisioning": run("fail:The requested resource is not available in the location 'westeurope'"),
    }  # fmt: skip
    agent = start_agent(pool, env={**_agent_env(fake), "FLOW_AGENT_API_KEY": PIPELINE_SECRET})
    groups = {key: _group_of(api, run_id) for key, run_id in runs.items()}

    sent = fake.body(groups["success"])  # what the SDK sent: the kind's body, byte for byte
    container = sent["properties"]["containers"][0]["properties"]
    assert container["image"] == "registry.example/flows:1"
    assert container["resources"]["requests"] == {
        "cpu": 2.0,
        "memoryInGB": 3.5,
        "gpu": {"count": 1, "sku": "V100"},
    }
    env = {item["name"]: item for item in container["environmentVariables"]}
    assert env["GREETING"] == {"name": "GREETING", "value": "hello"}
    assert env["PREFECT_API_KEY"] == {"name": "PREFECT_API_KEY", "secureValue": PIPELINE_SECRET}
    assert sent["location"] == "westeurope"  # looked up from the resource group
    assert list(sent["identity"]["userAssignedIdentities"]) == variables["identities"]
    assert sent["properties"]["subnetIds"] == [{"id": variables["subnet_ids"][0]}]
    assert sent["properties"]["dnsConfig"] == {"nameServers": ["10.0.0.10"]}
    assert sent["properties"]["imageRegistryCredentials"][0]["username"] == "puller"

    _set_state(api, runs["success"], "RUNNING")  # what the engine in the container would do
    _set_state(api, runs["success"], "COMPLETED")
    fake.terminate(groups["success"], 0)
    fake.terminate(groups["exit1"], 1)
    fake.terminate(groups["oom"], 137, "OOMKilled")
    api.cancel(runs["cancel"])

    assert state_type(api.wait_for_state(runs["success"], "COMPLETED", "CRASHED", timeout=30)) == "COMPLETED"
    exit1 = api.wait_for_state(runs["exit1"], "CRASHED", timeout=30)
    assert "exit code 1" in state_message(exit1) and "OOM" not in state_message(exit1)
    assert "OOM" in state_message(api.wait_for_state(runs["oom"], "CRASHED", timeout=30))
    timeout = state_message(api.wait_for_state(runs["timeout"], "CRASHED", timeout=30))
    assert "did not start within 3 s" in timeout and "ErrImagePull" in timeout, timeout
    provisioning = state_message(api.wait_for_state(runs["provisioning"], "CRASHED", timeout=30))
    assert "not available in the location" in provisioning, provisioning
    api.wait_for_state(runs["cancel"], "CANCELLED", timeout=30)
    _gone(fake, *groups.values())
    assert CLIENT_ID in fake.token_clients  # DefaultAzureCredential, from the environment
    assert PIPELINE_SECRET not in agent.output() and CLIENT_SECRET not in agent.output()
    assert "pw-4" not in agent.output()


def test_a_block_run_uses_the_blocks_service_principal(
    api: PrefectAPI, pool: str, start_agent, fake: AciFake
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "blocks", "register"],
        env={"PREFECT_API_URL": api.api_url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    credentials = {
        "client_id": BLOCK_CLIENT_ID, "tenant_id": TENANT, "client_secret": BLOCK_SECRET,
        "credential_kwargs": _credential_kwargs(fake),
    }  # fmt: skip
    data = {
        "image": "registry.example/flows:2",
        "resource_group_name": "rg-agents",
        "subscription_id": SUBSCRIPTION,
        "aci_credentials": credentials,
        "location": "northeurope",
    }
    block = api.create_block_document("azure-container-instance-job", data)
    api.create_process_pool(pool)
    body = {"name": f"{pool}-block", "flow_id": api.create_flow("aci-flow"), "work_pool_name": pool,
            "infrastructure_document_id": block["id"]}  # fmt: skip
    deployment = api.request("POST", "/deployments/", json=body).json()["id"]
    run_id = api.create_flow_run(deployment)["id"]
    env = {**_agent_env(fake), "AZURE_CLIENT_SECRET": "wrong: the block's principal must be used"}
    agent = start_agent(pool, env=env)

    group = _group_of(api, run_id)
    assert fake.body(group)["location"] == "northeurope"
    fake.terminate(group, 1)
    assert "exit code 1" in state_message(api.wait_for_state(run_id, "CRASHED", timeout=30))
    _gone(fake, group)
    assert BLOCK_CLIENT_ID in fake.token_clients
    assert BLOCK_SECRET not in agent.output()


def test_a_stopped_agent_leaves_the_run_and_the_next_one_adopts_it(
    api: PrefectAPI, pool: str, start_agent, fake: AciFake
) -> None:
    # Stage two of shutdown leaves remote workloads running; the next agent watches them.
    variables = {
        "image": "registry.example/flows:1",
        "resource_group_name": "rg-agents",
        "subscription_id": SUBSCRIPTION,
        "location": "westeurope",
        "aci_credentials": {"credential_kwargs": _credential_kwargs(fake)},
    }
    deployment = _pool_deployment(api, pool, "restart", variables)
    run_id = api.create_flow_run(deployment)["id"]

    first = start_agent(pool, env={**_agent_env(fake), "FLOW_AGENT_SHUTDOWN_GRACE": "1"})
    group = _group_of(api, run_id)
    assert first.stop() == 0  # drain grace runs out: stage two
    assert group in fake.list_groups(), "the agent must not delete a remote run when it stops"
    assert state_type(api.read_flow_run(run_id)) == "PENDING"

    # without the run's job config the adopting agent authenticates as itself
    # (DefaultAzureCredential): point its identity at the fake's authority
    second = start_agent(pool, env={**_agent_env(fake), "AZURE_AUTHORITY_HOST": fake.url})
    wait_for(lambda: "adopted" in second.output(), 30, message="the new agent to adopt the run")
    fake.terminate(group, 3)

    final = api.wait_for_state(run_id, "CRASHED", timeout=30)
    assert "exit code 3" in state_message(final)
    _gone(fake, group)


# -- find(job): the group a run's launch made, looked up by a NEW backend from a rebuilt Job --
# (the real SDK over HTTPS against the fake; no agent, no server)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _backend(fake: AciFake, credential: Any = None) -> AciBackend:
    return AciBackend(
        BackendOptions(watch_interval=0.1, azure_arm_endpoint=fake.url),
        credential=credential or StaticTokenCredential(),
        client_kwargs={"connection_verify": fake.ca_file},
    )


def _job(run_id: str, **variables: Any) -> Job:
    """The run's job as any agent rebuilds it from its pool: the same kind, config and run."""
    kind = AciKind()
    resolved = {
        "image": "registry.example/flows:1",
        "resource_group_name": "rg-agents",
        "subscription_id": SUBSCRIPTION,
        "task_start_timeout_seconds": 30,
        **variables,
    }
    config = kind.config_from_pool(resolved, pool_type="azure-container-instance", source="test")
    context = RunContext(
        run_id,
        "nightly-run",
        env={"PREFECT_API_URL": "http://x", "PREFECT__FLOW_RUN_ID": run_id},
        labels={"prefect.io/flow-run-id": run_id, "prefect.io/flow-run-name": "nightly-run"},
    )
    payload = apply_customizations(
        kind.build_payload(config, context),
        kind.customizations(config),
        field="customizations",
        source="test",
        target="payload",
    )
    return Job(run_id, "nightly-run", "aci", payload, kind.runtime(config))


def _name(job: Job) -> str:
    return str(job.payload["container_group_name"])


@pytest.fixture
async def finder(fake: AciFake) -> AsyncIterator[AciBackend]:
    backend = _backend(fake)
    try:
        yield backend
    finally:
        await backend.aclose()


async def _launched_by_a_gone_agent(fake: AciFake, job: Job) -> Any:
    """Launch `job` with a backend that then goes away (the agent died, maybe before the
    server learned the pid): only Azure knows the group now."""
    launcher = _backend(fake)
    try:
        return await launcher.launch(job)
    finally:
        await launcher.aclose()


@pytest.mark.anyio
async def test_find_a_running_group_then_its_real_end(fake: AciFake, finder: AciBackend) -> None:
    run_id = str(uuid.uuid4())
    handle = await _launched_by_a_gone_agent(fake, _job(run_id))
    before = len(fake.requests)

    found = await finder.find(_job(run_id))
    assert found == handle and found is not None
    assert found.runtime == _job(run_id).runtime  # the run's credentials and cleanup flag
    assert await finder.inspect(found) is None  # alive
    assert {method for method, _ in fake.requests[before:]} == {"GET"}  # find created nothing

    fake.terminate(_name(_job(run_id)), 3)
    ended = await finder.find(_job(run_id))
    assert ended == handle
    outcome = await finder.inspect(ended)  # type: ignore[arg-type]
    assert outcome is not None and outcome.reason is Reason.EXITED and outcome.exit_code == 3

    with anyio.fail_after(30):  # adopted: watched to its end, then cleaned up
        assert (await finder.wait(ended)).exit_code == 3  # type: ignore[arg-type]
    assert _name(_job(run_id)) not in fake.list_groups()
    assert await finder.find(_job(run_id)) is None


@pytest.mark.anyio
async def test_find_returns_no_other_runs_group(fake: AciFake, finder: AciBackend) -> None:
    other = str(uuid.uuid4())
    handle = await _launched_by_a_gone_agent(fake, _job(other))
    try:
        assert await finder.find(_job(str(uuid.uuid4()))) is None  # another run: another name
        assert await finder.find(_job(other)) == handle
    finally:
        await finder.kill(handle, 0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "customizations",
    [[], [{"op": "remove", "path": "/tags"}]],
    ids=["by-tag-and-env", "by-env-alone"],
)
async def test_a_group_under_the_runs_name_that_says_it_is_another_runs_is_not_found(
    fake: AciFake, finder: AciBackend, customizations: list[dict[str, Any]]
) -> None:
    # A group named as this run's would be (made by hand, or a name from a customized kind)
    # whose run id tag and PREFECT__FLOW_RUN_ID say it belongs to another run.
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    job = _job(mine, customizations=customizations)
    squatter = _job(other, customizations=customizations)
    squatter = replace(squatter, payload={**squatter.payload, "container_group_name": _name(job)})
    handle = await _launched_by_a_gone_agent(fake, squatter)
    try:
        assert ("tags" in fake.body(_name(job))) == (not customizations)
        assert await finder.find(job) is None
        assert await finder.find(replace(job, flow_run_id=other)) == handle
    finally:
        await finder.kill(handle, 0)


@pytest.mark.anyio
async def test_no_group_is_none_and_unknown_is_an_error(fake: AciFake, finder: AciBackend) -> None:
    assert await finder.find(_job(str(uuid.uuid4()))) is None
    assert await finder.find(_job(str(uuid.uuid4()), resource_group_name="rg-gone")) is None

    class Refused:  # a token ARM does not accept: the lookup cannot tell, so it must not say "none"
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("not-a-token-the-fake-issued", int(time.time()) + 3600)

    refused = _backend(fake, Refused())
    try:
        with pytest.raises(BackendError):
            await refused.find(_job(str(uuid.uuid4())))
    finally:
        await refused.aclose()
