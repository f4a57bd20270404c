"""Block registration for the UI, `flow-agent blocks ...`, `flow-agent deployment set-infra`,
and legacy block loading, against the session's real Prefect server."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import anyio
import httpx
import pytest
import typer
from support.prefect_api import PrefectAPI
from typer.testing import CliRunner, Result

from agent.api.blocks import (
    SCHEMA_VERSION,
    SIDESTEP_VERSION,
    BlockTypeSpec,
    Registration,
    _embed_references,
    register_block_type_and_schema,
)
from agent.api.client import PrefectClient
from agent.blocks import INFRASTRUCTURE_BLOCKS, INFRASTRUCTURE_SLUGS, get_block_spec
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


# -- block types sharing a name, schemas filed under another type -------------------------------
# Prefect's collections register types named like ours (prefect-kubernetes' `k8s-job` is
# "Kubernetes Job"); the server reads a created type back by name and dedups schemas on
# checksum and version alone. Each test registers copies of our specs under fresh slugs, so
# the module's registration above is untouched.


def _spec(slug: str) -> BlockTypeSpec:
    spec = get_block_spec(slug)
    assert spec is not None
    return spec


def _copy(spec: BlockTypeSpec) -> BlockTypeSpec:
    tag = uuid.uuid4().hex[:6]
    slug = f"{spec.slug}-{tag}"
    fields = {**spec.fields, "block_type_slug": slug}
    return dataclasses.replace(spec, name=f"{spec.name} {tag}", slug=slug, fields=fields)


def _schemas(api: PrefectAPI, block_type_id: str) -> list[dict[str, Any]]:
    body = {"block_schemas": {"block_type_id": {"any_": [block_type_id]}}}
    return list(api.request("POST", "/block_schemas/filter", json=body).json())


def _foreign_type(api: PrefectAPI, name: str) -> dict[str, Any]:
    """A collection's type: another slug, maybe the same name, with a schema of its own."""
    slug = f"collection-{uuid.uuid4().hex[:8]}"
    block_type = api.request("POST", "/block_types/", json={"name": name, "slug": slug}).json()
    fields = {
        "title": "Theirs",
        "type": "object",
        "properties": {"x": {"type": "string"}},
        "block_type_slug": slug,
    }
    api.request(
        "POST",
        "/block_schemas/",
        json={"fields": fields, "block_type_id": block_type["id"], "version": "0.8.0"},
    )
    return block_type


def _register(api: PrefectAPI, spec: BlockTypeSpec) -> Registration:
    async def scenario() -> Registration:
        async with PrefectClient(api.api_url) as client:
            return await register_block_type_and_schema(client, spec)

    return anyio.run(scenario)


def _misfile(api: PrefectAPI, spec: BlockTypeSpec, under: dict[str, Any]) -> dict[str, Any]:
    """What registration did before the fix: our type exists, our schema is under `under`."""
    api.request("POST", "/block_types/", json={"name": spec.name, "slug": spec.slug})

    async def fields() -> dict[str, Any]:
        async with PrefectClient(api.api_url) as client:
            return await _embed_references(client, spec)

    body = {
        "fields": anyio.run(fields),
        "block_type_id": under["id"],
        "capabilities": list(spec.capabilities),
        "version": SCHEMA_VERSION,
    }
    return api.request("POST", "/block_schemas/", json=body).json()


def test_a_type_named_like_a_collections_type_gets_its_own_schema(api: PrefectAPI) -> None:
    for spec in map(_copy, INFRASTRUCTURE_BLOCKS):
        theirs = _foreign_type(api, spec.name)

        done = _register(api, spec)

        ours = api.request("GET", f"/block_types/slug/{spec.slug}").json()
        assert (done.block_type, done.block_schema, done.block_type_id) == ("created", "created", ours["id"])
        [schema] = _schemas(api, ours["id"])
        assert schema["id"] == done.block_schema_id
        assert schema["fields"]["block_type_slug"] == spec.slug
        assert [s["fields"]["title"] for s in _schemas(api, theirs["id"])] == ["Theirs"]
        for field, slug in spec.references.items():  # still selects the server's credentials blocks
            assert schema["fields"]["block_schema_references"][field]["block_type_slug"] == slug
        again = _register(api, spec)
        assert (again.block_type, again.block_schema, again.block_schema_id) == (
            "unchanged",
            "unchanged",
            schema["id"],
        )


def test_the_collections_kubernetes_job_keeps_its_own_schemas(api: PrefectAPI, registered: Result) -> None:
    collection = api.request("GET", "/block_types/slug/k8s-job", ok=[404])
    if collection.status_code == 404:
        pytest.skip("prefect-kubernetes is not installed beside the test server")
    assert collection.json()["name"] == _spec("kubernetes-job").name  # the clash this guards
    assert {s["fields"]["block_type_slug"] for s in _schemas(api, collection.json()["id"])} == {"k8s-job"}
    ours = api.request("GET", "/block_types/slug/kubernetes-job").json()
    [schema] = _schemas(api, ours["id"])
    definition = schema["fields"]["definitions"]["KubernetesClusterConfig"]
    assert definition["block_type_slug"] == "kubernetes-cluster-config"


def test_a_misfiled_schema_is_moved_back_to_our_type(api: PrefectAPI) -> None:
    spec = _copy(_spec("kubernetes-job"))
    theirs = _foreign_type(api, spec.name)
    misfiled = _misfile(api, spec, theirs)
    assert misfiled["block_type_id"] == theirs["id"]

    done = _register(api, spec)

    assert done.block_schema == "repaired"
    ours = api.request("GET", f"/block_types/slug/{spec.slug}").json()
    [schema] = _schemas(api, ours["id"])
    assert schema["id"] == done.block_schema_id and schema["version"] == SCHEMA_VERSION
    assert schema["fields"]["block_schema_references"]["cluster_config"]["block_type_slug"] == (
        "kubernetes-cluster-config"
    )
    assert [s["fields"]["title"] for s in _schemas(api, theirs["id"])] == ["Theirs"]
    assert _register(api, spec).block_schema == "unchanged"


def test_a_misfiled_schema_in_use_stays_and_ours_takes_another_version(api: PrefectAPI) -> None:
    spec = _copy(_spec("ecs-task"))
    theirs = _foreign_type(api, spec.name)
    misfiled = _misfile(api, spec, theirs)
    anonymous = {
        "data": {},
        "is_anonymous": True,
        "block_schema_id": misfiled["id"],
        "block_type_id": theirs["id"],
    }
    document = api.request("POST", "/block_documents/", json=anonymous).json()

    done = _register(api, spec)

    assert done.block_schema == "created"
    ours = api.request("GET", f"/block_types/slug/{spec.slug}").json()
    [schema] = _schemas(api, ours["id"])
    assert schema["id"] == done.block_schema_id and schema["version"] == SIDESTEP_VERSION
    assert (
        api.request("GET", f"/block_documents/{document['id']}").json()["block_schema_id"] == misfiled["id"]
    )
    again = _register(api, spec)
    assert (again.block_schema, again.block_schema_id) == ("unchanged", schema["id"])


class _CreatesFirst(httpx.AsyncBaseTransport):
    """The real server, with another registration creating the same type just before ours."""

    def __init__(self, api: PrefectAPI, spec: BlockTypeSpec) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._api, self._spec = api, spec
        self.answered: list[int] = []  # the server's status for our POST /block_types/

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/block_types/"):
            return await self._inner.handle_async_request(request)
        self._api.request("POST", "/block_types/", json={"name": self._spec.name, "slug": self._spec.slug})
        response = await self._inner.handle_async_request(request)
        self.answered.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_type_created_meanwhile_is_read_back_by_slug(api: PrefectAPI) -> None:
    spec = _copy(_spec("process"))
    transport = _CreatesFirst(api, spec)

    async def scenario() -> Registration:
        async with PrefectClient(api.api_url, transport=transport) as client:
            return await register_block_type_and_schema(client, spec)

    done = anyio.run(scenario)

    assert transport.answered == [409]
    ours = api.request("GET", f"/block_types/slug/{spec.slug}").json()
    assert (done.block_type, done.block_type_id) == ("created", ours["id"])
    assert [s["id"] for s in _schemas(api, ours["id"])] == [done.block_schema_id]
