"""Block and variable references (steps 7-8), legacy block overrides, block schemas.

The pure parts run without a server; reference resolution runs against the session's real
Prefect server (marked `integration`): no fake of the server's answers.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from support.prefect_api import PrefectAPI

from agent.api.client import PrefectClient
from agent.blocks import INFRASTRUCTURE_BLOCKS, INFRASTRUCTURE_SLUGS
from agent.infra import InfraError
from agent.infra.legacy import LEGACY_SLUGS, apply_overrides
from agent.infra.references import resolve_references, secret_values
from agent.observe.logging import Redactor

# -- pure: which values are secret -------------------------------------------------------------------


def _doc(slug: str, data: dict[str, Any], secret_fields: list[str]) -> dict[str, Any]:
    return {
        "data": data,
        "block_type": {"slug": slug},
        "block_schema": {"fields": {"secret_fields": secret_fields}},
    }


def test_secret_fields_of_the_schema_are_secret_and_others_are_not() -> None:
    doc = _doc(
        "ecs-task",
        {"image": "img", "aws_credentials": {"aws_secret_access_key": "AKIA-secret"}},
        ["aws_credentials.aws_secret_access_key"],
    )
    assert secret_values(doc) == ["AKIA-secret"]


def test_a_wildcard_secret_field_covers_every_value_under_it() -> None:
    info = {"private_key": "-----BEGIN-----\nabcdefgh\n-----END-----", "client_email": "me@x.iam"}
    doc = _doc("gcp-credentials", {"service_account_info": info, "project": "p"}, ["service_account_info.*"])
    found = secret_values(doc)
    assert info["private_key"] in found and "abcdefgh" in found and "me@x.iam" in found
    assert "p" not in found


def test_everything_in_a_secret_block_is_secret() -> None:
    assert secret_values(_doc("secret", {"value": {"user": "u-name", "pw": ["p4ssw0rd"]}}, [])) == [
        "u-name",
        "p4ssw0rd",
    ]


# -- pure: legacy overrides ------------------------------------------------------------------------------


def test_overrides_apply_dot_paths_and_deep_merge_with_the_run_on_top() -> None:
    data = {
        "image": "old",
        "env": {"A": "1", "B": "2"},
        "job": {"spec": {"x": 1, "y": 2}},
        "customizations": [1],
    }
    result = apply_overrides(
        data,
        {"env.B": "dep", "job": {"spec": {"y": 3}}, "image": "dep-image", "customizations": [2]},
        {"env": {"C": "run"}, "image": "run-image"},
    )
    assert result == {
        "image": "run-image",
        "env": {"A": "1", "B": "dep", "C": "run"},
        "job": {"spec": {"x": 1, "y": 3}},
        "customizations": [2],
    }
    assert data["env"] == {"A": "1", "B": "2"}  # input untouched


def test_an_override_into_a_null_field_creates_it() -> None:
    assert apply_overrides({"image_registry": None}, {"image_registry.identity": "id"}, None) == {
        "image_registry": {"identity": "id"}
    }


def test_conflicting_override_paths_name_the_field() -> None:
    with pytest.raises(InfraError) as err:
        apply_overrides({}, {"job.spec": 1, "job.spec.x": 2}, None, source="deployment 'f/d'")
    assert err.value.field == "job.spec.x"
    assert "deployment 'f/d'" in str(err.value)


# -- pure: block type specs --------------------------------------------------------------------------------


def test_the_five_block_types_have_prefect_form_schemas() -> None:
    assert INFRASTRUCTURE_SLUGS == LEGACY_SLUGS
    for spec in INFRASTRUCTURE_BLOCKS:
        assert not spec.name.lower().startswith("prefect")  # the server answers 403
        assert spec.capabilities == ("run-infrastructure",)
        fields = spec.fields
        assert fields["block_type_slug"] == spec.slug
        positions = [prop["position"] for prop in fields["properties"].values()]
        assert positions == list(range(len(positions)))
        assert next(iter(fields["properties"])) == "type"
        assert "$defs" not in fields
        for name, prop in fields["properties"].items():
            assert prop.get("description"), f"{spec.slug}.{name} has no description for the UI"


def test_optionals_default_to_null_and_secrets_are_password_fields() -> None:
    aci = next(spec for spec in INFRASTRUCTURE_BLOCKS if spec.slug == "azure-container-instance-job")
    props = aci.fields["properties"]
    assert props["gpu_count"]["anyOf"][-1] == {"type": "null"} and props["gpu_count"]["default"] is None
    assert {k: props["subscription_id"][k] for k in ("format", "type", "writeOnly")} == {
        "format": "password",
        "type": "string",
        "writeOnly": True,
    }
    assert aci.fields["secret_fields"] == ["subscription_id", "image_registry.password"]
    assert props["type"]["default"] == "container-instance-job"  # the 2.x `type`, not the slug


def test_prefect_2_defaults() -> None:
    by_slug = {spec.slug: spec.fields["properties"] for spec in INFRASTRUCTURE_BLOCKS}
    assert by_slug["process"]["stream_output"]["default"] is True
    assert by_slug["ecs-task"]["launch_type"]["default"] == "FARGATE"
    assert by_slug["ecs-task"]["task_start_timeout_seconds"]["default"] == 120
    assert by_slug["ecs-task"]["auto_deregister_task_definition"]["default"] is True
    assert by_slug["cloud-run-job"]["timeout"]["default"] == 600
    assert by_slug["cloud-run-job"]["max_retries"]["default"] == 3
    assert by_slug["azure-container-instance-job"]["entrypoint"]["default"] == "/opt/prefect/entrypoint.sh"
    assert by_slug["kubernetes-job"]["pod_watch_timeout_seconds"]["default"] == 60


# -- against the real server -------------------------------------------------------------------------------


def create_block(api: PrefectAPI, slug: str, data: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A named block document of an already registered type."""
    block_type = api.request("GET", f"/block_types/slug/{slug}").json()
    body = {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1}
    schema = api.request("POST", "/block_schemas/filter", json=body).json()[0]
    doc = {
        "name": name or f"b-{uuid.uuid4().hex[:10]}",
        "data": data,
        "block_schema_id": schema["id"],
        "block_type_id": block_type["id"],
        "is_anonymous": False,
    }
    return api.request("POST", "/block_documents/", json=doc).json()


def create_variable(api: PrefectAPI, value: Any) -> str:
    name = f"v_{uuid.uuid4().hex[:10]}"
    api.request("POST", "/variables/", json={"name": name, "value": value})
    return name


def resolve(api_url: str, obj: Any) -> tuple[Any, list[str], int]:
    """Resolve against the server; (result, secrets reported, requests sent)."""
    secrets: list[str] = []

    async def scenario() -> tuple[Any, int]:
        async with PrefectClient(api_url) as client:
            result = await resolve_references(obj, client, on_secret=secrets.append, source="pool 'p'")
            return result, client.requests_sent

    result, sent = anyio.run(scenario)
    return result, secrets, sent


@pytest.mark.integration
def test_a_secret_block_resolves_and_is_reported(api: PrefectAPI) -> None:
    secret = create_block(api, "secret", {"value": "s3cr3t-token-value"})
    obj = {
        "env": {"TOKEN": f"{{{{ prefect.blocks.secret.{secret['name']} }}}}"},
        "command": f"run --token={{{{ prefect.blocks.secret.{secret['name']} }}}}",
    }

    result, secrets, sent = resolve(api.api_url, obj)

    assert result == {"env": {"TOKEN": "s3cr3t-token-value"}, "command": "run --token=s3cr3t-token-value"}
    assert "s3cr3t-token-value" in secrets
    assert sent == 1  # one request per distinct block
    assert "s3cr3t" not in Redactor(secrets).mask(f"line with {result['command']}")


@pytest.mark.integration
def test_json_block_paths_whole_and_inline(api: PrefectAPI) -> None:
    # 3.8.8 has no JSON/String blocks any more; a Secret holds any JSON
    block = create_block(api, "secret", {"value": {"image": "repo/img:1", "sizes": [1, 2]}})
    ref = f"prefect.blocks.secret.{block['name']}"
    obj = {
        "whole": f"{{{{ {ref} }}}}",
        "image": f"{{{{ {ref}.image }}}}",
        "tag": f"x-{{{{ {ref}.sizes[1] }}}}",
    }

    result, secrets, _ = resolve(api.api_url, obj)

    assert result == {"whole": {"image": "repo/img:1", "sizes": [1, 2]}, "image": "repo/img:1", "tag": "x-2"}
    assert secrets == ["repo/img:1", "1", "2"]


@pytest.mark.integration
def test_a_ref_by_document_id_becomes_the_block_data(api: PrefectAPI) -> None:
    block = create_block(api, "secret", {"value": "plain"})
    result, _, _ = resolve(api.api_url, {"cfg": {"$ref": {"block_document_id": block["id"]}}})
    assert result == {"cfg": {"value": "plain"}}


@pytest.mark.integration
def test_variables_whole_inline_and_missing(api: PrefectAPI) -> None:
    name = create_variable(api, {"a": [1, 2]})
    text = create_variable(api, "v-123")
    obj = {
        "raw": f"{{{{ prefect.variables.{name} }}}}",
        "inline": f"run-{{{{ prefect.variables.{text} }}}}",
        "missing": "{{ prefect.variables.no_such_variable_here }}",
        "missing_inline": "a-{{ prefect.variables.no_such_variable_here }}-b",
    }

    result, _, sent = resolve(api.api_url, obj)

    assert result == {"raw": {"a": [1, 2]}, "inline": "run-v-123", "missing": "", "missing_inline": "a--b"}
    assert sent == 3


@pytest.mark.integration
def test_a_missing_block_names_the_field_the_block_and_the_fix(api: PrefectAPI) -> None:
    obj = {"env": {"TOKEN": "{{ prefect.blocks.secret.does-not-exist }}"}}
    with pytest.raises(InfraError) as err:
        resolve(api.api_url, obj)
    assert err.value.field == "env.TOKEN"
    message = str(err.value)
    assert "secret/does-not-exist" in message and "create the block" in message and "pool 'p'" in message


@pytest.mark.integration
def test_a_dict_inline_is_an_error_and_a_bad_path_names_the_keys(api: PrefectAPI) -> None:
    block = create_block(api, "secret", {"value": {"a": {"b": 1}}})
    with pytest.raises(InfraError, match="cannot be put inside a string"):
        resolve(api.api_url, {"x": f"pre-{{{{ prefect.blocks.secret.{block['name']}.a }}}}"})
    with pytest.raises(InfraError, match="has no 'nope'") as err:
        resolve(api.api_url, {"y": [f"{{{{ prefect.blocks.secret.{block['name']}.nope }}}}"]})
    assert err.value.field == "y[0]"
