"""Block registration for the UI, `flow-agent blocks ...`, `flow-agent deployment set-infra`,
and legacy block loading, against the session's real Prefect server."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
import typer
from support.prefect_api import PrefectAPI
from typer.testing import CliRunner, Result

from agent.api.client import PrefectClient
from agent.blocks import INFRASTRUCTURE_BLOCKS, INFRASTRUCTURE_SLUGS
from agent.cli.blocks import blocks_app, deployment_app
from agent.infra import InfraError
from agent.infra.legacy import apply_overrides, load_infrastructure_block

pytestmark = pytest.mark.integration

_app = typer.Typer()
_app.add_typer(blocks_app, name="blocks")
_app.add_typer(deployment_app, name="deployment")


def cli(api_url: str | None, *args: str) -> Result:
    env = {"PREFECT_API_URL": api_url or "", "FLOW_AGENT_API_URL": api_url or ""}
    return CliRunner().invoke(_app, list(args), env=env)


@pytest.fixture(scope="module")
def registered(api: PrefectAPI) -> Result:
    result = cli(api.api_url, "blocks", "register")
    assert result.exit_code == 0, result.output
    return result


def _doc(api: PrefectAPI, slug: str, data: dict[str, Any]) -> dict[str, Any]:
    block_type = api.request("GET", f"/block_types/slug/{slug}").json()
    body = {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1}
    schema = api.request("POST", "/block_schemas/filter", json=body).json()[0]
    doc = {
        "name": f"b-{uuid.uuid4().hex[:8]}",
        "data": data,
        "block_schema_id": schema["id"],
        "block_type_id": block_type["id"],
    }
    return api.request("POST", "/block_documents/", json=doc).json()


def test_registered_types_and_schemas_are_served_as_the_ui_needs_them(
    api: PrefectAPI, registered: Result
) -> None:
    for spec in INFRASTRUCTURE_BLOCKS:
        assert f"{spec.slug}: block type" in registered.output
        block_type = api.request("GET", f"/block_types/slug/{spec.slug}").json()
        assert block_type["name"] == spec.name
        assert block_type["description"] == spec.description
        assert block_type["code_example"] == spec.code_example
        body = {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1}
        [schema] = api.request("POST", "/block_schemas/filter", json=body).json()
        assert schema["capabilities"] == ["run-infrastructure"]
        fields = schema["fields"]
        assert fields["block_type_slug"] == spec.slug
        assert list(fields["properties"]) == list(spec.fields["properties"])
        # filtering by capability is how the UI finds infrastructure blocks
    found = api.request(
        "POST",
        "/block_schemas/filter",
        json={"block_schemas": {"block_capabilities": {"all_": ["run-infrastructure"]}}},
    ).json()
    assert set(INFRASTRUCTURE_SLUGS) <= {s["block_type"]["slug"] for s in found}


def test_credentials_fields_select_the_servers_credentials_blocks(
    api: PrefectAPI, registered: Result
) -> None:
    block_type = api.request("GET", "/block_types/slug/ecs-task").json()
    body = {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1}
    [schema] = api.request("POST", "/block_schemas/filter", json=body).json()
    fields = schema["fields"]
    assert fields["properties"]["aws_credentials"]["anyOf"][0] == {"$ref": "#/definitions/AwsCredentials"}
    assert fields["block_schema_references"]["aws_credentials"]["block_type_slug"] == "aws-credentials"
    assert "aws_credentials.aws_secret_access_key" in fields["secret_fields"]


def test_registering_again_changes_nothing(api: PrefectAPI, registered: Result) -> None:
    again = cli(api.api_url, "blocks", "register")
    assert again.exit_code == 0, again.output
    for slug in INFRASTRUCTURE_SLUGS:
        assert f"{slug}: block type unchanged, schema unchanged" in again.output


def test_secret_fields_are_masked_unless_asked_for(api: PrefectAPI, registered: Result) -> None:
    doc = _doc(
        api,
        "azure-container-instance-job",
        {"resource_group_name": "rg", "subscription_id": "sub-1234-secret"},
    )
    masked = api.request("GET", f"/block_documents/{doc['id']}").json()
    assert masked["data"]["subscription_id"] == "********"
    seen: list[str] = []

    async def scenario() -> Any:
        async with PrefectClient(api.api_url) as client:
            return await load_infrastructure_block(client, doc["id"], source="test", on_secret=seen.append)

    legacy = anyio.run(scenario)
    assert legacy.slug == "azure-container-instance-job"
    assert legacy.data["subscription_id"] == "sub-1234-secret"
    assert seen == ["sub-1234-secret"]
    assert "sub-1234" not in repr(legacy)


def test_blocks_list_shows_infrastructure_documents(api: PrefectAPI, registered: Result) -> None:
    doc = _doc(api, "process", {"command": ["echo", "hi"]})
    result = cli(api.api_url, "blocks", "list")
    assert result.exit_code == 0, result.output
    assert f"process/{doc['name']}" in result.output and doc["id"] in result.output


def test_set_infra_points_the_deployment_at_the_block(api: PrefectAPI, registered: Result, pool: str) -> None:
    doc = _doc(api, "process", {"env": {"A": "1"}})
    api.create_process_pool(pool)
    flow_id = api.create_flow(f"legacy-{pool}")
    deployment_id = api.create_deployment(flow_id, "dep", pool, job_variables={"env.B": "2"})

    result = cli(api.api_url, "deployment", "set-infra", f"legacy-{pool}/dep", f"process/{doc['name']}")

    assert result.exit_code == 0, result.output
    deployment = api.request("GET", f"/deployments/{deployment_id}").json()
    assert deployment["infrastructure_document_id"] == doc["id"]
    assert deployment["job_variables"] == {"env.B": "2"}  # nothing else changed
    assert deployment["work_pool_name"] == pool
    run = api.create_flow_run(deployment_id)
    assert run["infrastructure_document_id"] == doc["id"]

    async def scenario() -> Any:
        async with PrefectClient(api.api_url) as client:
            return await load_infrastructure_block(
                client, deployment["infrastructure_document_id"], source="t"
            )

    legacy = anyio.run(scenario)
    assert apply_overrides(legacy.data, deployment["job_variables"], {"env": {"C": "3"}})["env"] == {
        "A": "1",
        "B": "2",
        "C": "3",
    }


def test_set_infra_by_id_and_clear_errors(api: PrefectAPI, registered: Result, pool: str) -> None:
    doc = _doc(api, "kubernetes-job", {"namespace": "ns"})
    api.create_process_pool(pool)
    deployment_id = api.create_deployment(api.create_flow(f"legacy-{pool}"), "dep", pool)

    assert cli(api.api_url, "deployment", "set-infra", deployment_id, doc["id"]).exit_code == 0
    assert (
        api.request("GET", f"/deployments/{deployment_id}").json()["infrastructure_document_id"] == doc["id"]
    )

    missing = cli(api.api_url, "deployment", "set-infra", deployment_id, "kubernetes-job/nope")
    assert missing.exit_code == 1 and "no 'kubernetes-job' block named 'nope'" in missing.output
    wrong_type = cli(api.api_url, "deployment", "set-infra", deployment_id, "secret/x")
    assert wrong_type.exit_code == 2 and "not an infrastructure block type" in wrong_type.output
    no_server = cli(None, "blocks", "list")
    assert no_server.exit_code == 2 and "PREFECT_API_URL is not set" in no_server.output


def test_a_block_of_another_type_is_refused_with_the_supported_ones(api: PrefectAPI) -> None:
    secret = _doc(api, "secret", {"value": "x"})

    async def scenario() -> Any:
        async with PrefectClient(api.api_url) as client:
            return await load_infrastructure_block(client, secret["id"], source="deployment 'f/d'")

    with pytest.raises(InfraError) as err:
        anyio.run(scenario)
    assert "'secret'" in str(err.value) and "kubernetes-job" in str(err.value)
    assert "deployment 'f/d'" in str(err.value)


def test_a_changed_block_type_card_is_updated_back(api: PrefectAPI, registered: Result) -> None:
    block_type = api.request("GET", "/block_types/slug/process").json()
    api.request("PATCH", f"/block_types/{block_type['id']}", json={"description": "stale"})

    again = cli(api.api_url, "blocks", "register")

    assert "process: block type updated, schema unchanged" in again.output
    assert api.request("GET", "/block_types/slug/process").json()["description"] != "stale"


def test_deployment_ls_names_what_run_and_set_infra_take(api: PrefectAPI, pool: str) -> None:
    api.create_process_pool(pool)
    flow_id = api.create_flow(f"listed-{pool}")
    first = api.create_deployment(flow_id, "nightly etl", pool)
    second = api.create_deployment(flow_id, "hourly", pool)

    result = cli(api.api_url, "deployment", "ls", "--pool", pool)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"listed-{pool}/hourly", f"listed-{pool}/nightly etl"]
    assert second in lines[0] and first in lines[1] and all(pool in line for line in lines)
    empty = cli(api.api_url, "deployment", "ls", "--pool", f"{pool}-none")
    assert empty.exit_code == 0 and "no deployments in work pool" in empty.output
