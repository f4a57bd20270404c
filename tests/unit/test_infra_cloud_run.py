"""The Cloud Run kind: v2 and v1 pools and the CloudRunJob block, payloads against golden files.

Goldens live in tests/golden/cloud-run/; regenerate with `UPDATE_GOLDEN=1 pytest tests/unit`
and review the diff before committing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.golden import assert_golden, render_payload, run_context

from agent.infra import InfraError, default_base_job_template, resolve_job_configuration
from agent.infra.cloud_run import CloudRunConfig, CloudRunKind
from agent.infra.spec import RunContext
from agent.registry import REGISTRY

SOURCE = "deployment 'etl/daily'"
RUN_ID = "0c5b6a4e-1111-4222-8333-444455556666"
SECRET = "pnu_secret"
KEY_SECRET = "-----BEGIN PRIVATE KEY-----do-not-print"
CTX = run_context(
    RUN_ID,
    api_url="https://api.example/api",
    api_key=SECRET,
    labels={"prefect.io/flow-run-name": "crimson-fox", "prefect.io/flow-name": "ETL Flow"},
    flow_id="f1d2e3c4-0000-4000-8000-000000000001",
    deployment_id="d1d2e3c4-0000-4000-8000-000000000002",
    deployment_name="daily",
    work_pool_name="prod pool",
    worker_name="agent-1",
)
CREDS = {"service_account_info": {"project_id": "acme-prod", "private_key": KEY_SECRET}}
KIND = CloudRunKind()


def final(config: CloudRunConfig, ctx: RunContext = CTX) -> dict[str, Any]:
    """What the backend would send: the payload, then the customizations."""
    return render_payload(KIND, config, ctx, field=config.customizations_field, source="t")


def from_pool(pool_type: str, dep: dict[str, Any] | None = None, **template_extra: Any) -> CloudRunConfig:
    template = default_base_job_template(pool_type)
    template["job_configuration"].update(template_extra)
    resolved = resolve_job_configuration(template, dep, None, source=SOURCE)
    return KIND.config_from_pool(resolved, pool_type=pool_type, source=SOURCE)


def pool_error(pool_type: str, dep: dict[str, Any]) -> InfraError:
    with pytest.raises(InfraError) as info:
        from_pool(pool_type, dep)
    return info.value


def block_error(data: dict[str, Any]) -> InfraError:
    with pytest.raises(InfraError) as info:
        KIND.config_from_block(data, source="cloud-run-job block 'prod'")
    return info.value


def env_names(container: dict[str, Any]) -> list[str]:
    return [item["name"] for item in container["env"]]


BLOCK = {
    "type": "cloud-run-job",
    "image": "us-docker.pkg.dev/acme/flows/etl:2",
    "region": "europe-west1",
    "credentials": CREDS,
    "cpu": 2,
    "memory": 1,
    "memory_unit": "Gi",
    "vpc_connector_name": "conn-1",
    "args": ["--fast"],
    "env": {"EXTRA": "1"},
    "labels": {"Team": "Data Platform"},
    "timeout": 900,
    "_block_document_name": "prod",  # unknown extras are ignored
}


class TestKind:
    def test_identity(self) -> None:
        # the pool types and block slug are named once, in the registry's entry of the kind
        entry = REGISTRY.get(CloudRunKind.kind)
        assert entry is not None
        assert CloudRunKind.kind == "cloud-run" and entry.block_slug == "cloud-run-job"
        assert entry.pool_types == ("cloud-run-v2", "cloud-run")

    @pytest.mark.parametrize("pool_type", ["cloud-run-v2", "cloud-run"])
    def test_templates_have_prefects_variables(self, pool_type: str) -> None:
        variables = default_base_job_template(pool_type)["variables"]["properties"]
        assert {"image", "region", "cpu", "memory", "timeout", "keep_job", "credentials"} <= variables.keys()


class TestV2Pool:
    def test_stock_template(self) -> None:
        config = from_pool("cloud-run-v2", {"credentials": CREDS})
        assert (config.api, config.project, config.region) == ("v2", "acme-prod", "us-central1")
        payload = final(config)
        assert payload["parent"] == "projects/acme-prod/locations/us-central1"
        assert payload["job_id"] == final(config)["job_id"]  # the same run gets the same name
        assert_golden("cloud-run", "v2-default", payload)

    def test_every_variable(self) -> None:
        dep = {
            "credentials": {"project": "acme"},
            "region": "europe-west4",
            "image": "europe-docker.pkg.dev/acme/flows/etl:3",
            "cpu": "2000m",
            "memory": "2Gi",
            "timeout": 7200,
            "max_retries": 1,
            "vpc_connector_name": "projects/acme/locations/europe-west4/connectors/c1",
            "service_account_name": "runner@acme.iam.gserviceaccount.com",
            "args": ["--fast"],
            "cloudsql_instances": ["acme:europe-west4:db"],
            "env_from_secrets": {"DB_PASSWORD": {"secret": "db-password", "version": "3"}},
            "prefect_api_key_secret": {"secret": "prefect-api-key", "version": "latest"},
            "keep_job": True,
            "name": "Nightly ETL!",
            "labels": {"team": "data"},
            "env": {"EXTRA": "1"},
        }
        payload = final(from_pool("cloud-run-v2", dep))
        container = payload["job"]["template"]["template"]["containers"][0]
        assert env_names(container).count("PREFECT_API_KEY") == 1 and SECRET not in json.dumps(payload)
        assert payload["job_id"].startswith("nightly-etl-")
        assert_golden("cloud-run", "v2-every-variable", payload)

    def test_customizations_address_the_job_body(self) -> None:
        ops = [
            {
                "op": "add",
                "path": "/template/template/executionEnvironment",
                "value": "EXECUTION_ENVIRONMENT_GEN2",
            }
        ]
        config = from_pool(
            "cloud-run-v2",
            {"credentials": CREDS, "customizations": ops},
            customizations="{{ customizations }}",
        )
        payload = final(config)
        assert payload["job"]["template"]["template"]["executionEnvironment"] == "EXECUTION_ENVIRONMENT_GEN2"
        assert_golden("cloud-run", "v2-customized", payload)

    def test_env_none_unsets_and_secret_only_in_env(self) -> None:
        payload = final(from_pool("cloud-run-v2", {"credentials": CREDS, "env": {"PREFECT_API_URL": None}}))
        container = payload["job"]["template"]["template"]["containers"][0]
        assert "PREFECT_API_URL" not in env_names(container)
        container.pop("env")
        assert SECRET not in json.dumps(payload)

    def test_credentials_kept_but_hidden(self) -> None:
        config = from_pool("cloud-run-v2", {"credentials": CREDS})
        assert config.credentials == CREDS
        assert KEY_SECRET not in repr(config) and KEY_SECRET not in json.dumps(config.model_dump())
        assert KEY_SECRET not in json.dumps(final(config))


class TestV1Pool:
    def test_stock_template(self) -> None:
        config = from_pool("cloud-run", {"credentials": {"project": "acme"}, "image": "gcr.io/acme/etl:1"})
        payload = final(config)
        assert (
            payload["parent"] == "namespaces/acme"
            and payload["endpoint"] == "https://us-central1-run.googleapis.com"
        )
        assert_golden("cloud-run", "v1-default", payload)

    def test_secrets_use_value_from(self) -> None:
        dep = {"credentials": {"project": "acme"}, "prefect_api_key_secret": {"secret": "k", "version": "2"}}
        container = final(from_pool("cloud-run", dep))["job"]["spec"]["template"]["spec"]["template"]["spec"]
        entry = container["containers"][0]["env"][-1]
        assert entry == {"name": "PREFECT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "2"}}}


class TestBlock:
    def test_block(self) -> None:
        config = KIND.config_from_block(BLOCK, source="cloud-run-job block 'prod'")
        assert (config.api, config.origin, config.project, config.timeout) == (
            "v1",
            "block",
            "acme-prod",
            900,
        )
        payload = final(config)
        assert payload["job"]["metadata"]["name"].startswith("flows-")  # CloudRunJob: third part of the image
        assert_golden("cloud-run", "block", payload)
        assert KEY_SECRET not in repr(config) and KEY_SECRET not in json.dumps(payload)

    def test_service_account_info_as_json_string(self) -> None:
        data = {**BLOCK, "credentials": {"service_account_info": json.dumps({"project_id": "from-key"})}}
        assert KIND.config_from_block(data, source="b").project == "from-key"


class TestBadInput:
    def test_block_needs_region(self) -> None:
        error = block_error({k: v for k, v in BLOCK.items() if k != "region"})
        assert error.field == "region" and "cloud-run-job block 'prod'" in str(error)

    def test_block_needs_image(self) -> None:
        assert block_error({k: v for k, v in BLOCK.items() if k != "image"}).field == "image"

    def test_project_is_required(self) -> None:
        error = pool_error("cloud-run-v2", {"credentials": {"service_account_file": "/k.json"}})
        assert error.field == "project" and "credentials.project" in str(error)

    def test_bad_region(self) -> None:
        assert pool_error("cloud-run-v2", {"credentials": CREDS, "region": "evil.com/x"}).field == "region"

    @pytest.mark.parametrize("memory", ["512", "1.5Gi", "2GB"])
    def test_bad_memory_unit_in_pool(self, memory: str) -> None:
        error = pool_error("cloud-run-v2", {"credentials": CREDS, "memory": memory})
        assert error.field == "memory" and "Mi" in str(error)

    def test_bad_memory_unit_in_block(self) -> None:
        assert block_error({**BLOCK, "memory_unit": "GB"}).field == "memory_unit"

    def test_memory_without_unit(self) -> None:
        assert block_error({**BLOCK, "memory_unit": None}).field == "memory_unit"

    def test_timeout_limits(self) -> None:
        assert block_error({**BLOCK, "timeout": 4000}).field == "timeout"
        assert pool_error("cloud-run", {"credentials": CREDS, "timeout": 4000}).field == "timeout"

    def test_wrong_env_type_hides_value(self) -> None:
        error = block_error({**BLOCK, "env": {"TOKEN": {"v": SECRET}}})
        assert error.field == "env.TOKEN" and SECRET not in str(error)

    def test_credentials_never_echoed(self) -> None:
        error = block_error({**BLOCK, "credentials": KEY_SECRET})
        assert error.field == "credentials" and KEY_SECRET not in str(error)

    def test_job_body_without_container(self) -> None:
        template = default_base_job_template("cloud-run-v2")
        template["job_configuration"]["job_body"]["template"]["template"]["containers"] = []
        resolved = resolve_job_configuration(template, {"credentials": CREDS}, None, source=SOURCE)
        with pytest.raises(InfraError, match="no container") as info:
            KIND.config_from_pool(resolved, pool_type="cloud-run-v2", source=SOURCE)
        assert info.value.field == "job_body"
