"""The ACI kind: pool and block configs, the container group payload (golden files), bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.golden import assert_golden, render_payload, run_context

from agent.infra import InfraError, default_base_job_template, resolve_job_configuration
from agent.infra.aci import AciConfig, AciKind, AcrIdentity, RegistryLogin
from agent.registry import REGISTRY

SOURCE = "deployment 'etl/daily'"
SECRET = "pnu_secret"
RUN_ID = "0b1c6a1e-1b7e-4c1e-9a2b-7f6c0d7e8f90"
CTX = run_context(
    RUN_ID,
    api_url="http://prefect:4200/api",
    api_key=SECRET,
    labels={"prefect.io/flow-name": "Nightly ETL"},
    work_pool_name="aci",
)
KIND = AciKind()
# the pool types and block slug are named once, in the registry's entry of the kind
ENTRY = REGISTRY.get(KIND.kind)
REQUIRED = {
    "image": "prefecthq/prefect:3-latest",
    "subscription_id": "sub-1234",
    "resource_group_name": "flows",
}


def template() -> dict[str, Any]:
    return default_base_job_template("azure-container-instance")


def from_pool(dep: dict[str, Any] | None = None, run: dict[str, Any] | None = None, tpl: Any = None) -> Any:
    resolved = resolve_job_configuration(tpl or template(), {**REQUIRED, **(dep or {})}, run, source=SOURCE)
    return KIND.config_from_pool(resolved, pool_type="azure-container-instance", source=SOURCE)


def from_block(**data: Any) -> Any:
    return KIND.config_from_block(
        {"type": "container-instance-job", **REQUIRED, **data}, source="block 'aci'"
    )


def render(config: Any) -> dict[str, Any]:
    return render_payload(KIND, config, CTX, field="customizations", source=SOURCE)


def container(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["container_group"]["properties"]["containers"][0]


def error(call: Any, *args: Any, **kwargs: Any) -> InfraError:
    with pytest.raises(InfraError) as info:
        call(*args, **kwargs)
    for secret in (SECRET, "sub-1234", "hunter2"):
        assert secret not in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


class TestKind:
    def test_identity(self) -> None:
        assert KIND.kind == "aci"
        assert ENTRY.pool_types == ("azure-container-instance",)
        assert ENTRY.block_slug == "azure-container-instance-job"

    def test_template_has_prefects_variable_names(self) -> None:
        names = set(template()["variables"]["properties"])
        expected = {"image", "resource_group_name", "subscription_id", "identities", "entrypoint", "cpu"}
        assert expected | {"memory", "gpu_count", "gpu_sku", "subnet_ids", "dns_servers"} <= names
        assert "arm_template" in template()["job_configuration"]


class TestFromPool:
    def test_stock_template(self) -> None:
        config = from_pool({"env": {"TEAM": "data", "DROP": None}}, {"cpu": 2, "memory": 4})
        assert isinstance(config, AciConfig)
        assert (config.cpu, config.memory, config.task_start_timeout_seconds) == (2, 4, 240)
        assert config.stream_output is False and config.keep_container_group is False
        assert_golden("aci", "pool_stock", render(config))

    def test_everything_set_and_customized(self) -> None:
        tpl = template()
        tpl["job_configuration"]["customizations"] = "{{ customizations }}"
        tpl["job_configuration"]["secure_env"] = ["DB_PASSWORD"]
        tpl["job_configuration"]["arm_template"]["parameters"]["location"]["defaultValue"] = "westeurope"
        ops = [{"op": "add", "path": "/properties/containers/0/properties/ports", "value": [{"port": 80}]}]
        dep = {
            "identities": ["/subscriptions/s/resourceGroups/r/providers/id/one"],
            "subnet_ids": ["/subscriptions/s/subnets/a"],
            "dns_servers": ["10.0.0.4"],
            "image_registry": {"registry_url": "r.example.com", "username": "u", "password": "hunter2"},
            "gpu_count": 1,
            "gpu_sku": "V100",
            "command": "python -m prefect.engine",
            "env": {"DB_PASSWORD": "hunter2", "PREFECT_API_AUTH_STRING": "admin:pw"},
            "labels": {"team": "data"},
        }
        config = from_pool(dep, {"customizations": ops}, tpl=tpl)
        assert "hunter2" not in repr(config)
        payload = render(config)
        env = {e["name"]: e for e in container(payload)["properties"]["environmentVariables"]}
        assert env["DB_PASSWORD"] == {"name": "DB_PASSWORD", "secureValue": "hunter2"}
        assert "secureValue" in env["PREFECT_API_AUTH_STRING"] and "secureValue" in env["PREFECT_API_KEY"]
        assert payload["container_group"]["location"] == "westeurope"
        assert_golden("aci", "pool_customized", payload)

    def test_acr_managed_identity(self) -> None:
        registry = {"registry_url": "me.azurecr.io", "identity": "/id/pull"}
        config = from_pool({"image_registry": registry})
        assert isinstance(config.image_registry, AcrIdentity)
        credentials = render(config)["container_group"]["properties"]["imageRegistryCredentials"]
        assert credentials == [{"server": "me.azurecr.io", "identity": "/id/pull"}]

    def test_literal_cpu_in_the_arm_template_is_what_is_sent(self) -> None:
        tpl = template()
        requests = tpl["job_configuration"]["arm_template"]["resources"][0]["properties"]["containers"][0]
        requests["properties"]["resources"]["requests"]["cpu"] = 4
        assert (
            render(from_pool(tpl=tpl, run={"cpu": 1}))["container_group"]["properties"]["containers"][0][
                "properties"
            ]["resources"]["requests"]["cpu"]
            == 4
        )

    def test_location_job_variable_and_no_entrypoint(self) -> None:
        tpl = template()
        tpl["job_configuration"]["location"] = "{{ location }}"
        payload = render(from_pool({"location": "northeurope", "entrypoint": None}, tpl=tpl))
        assert payload["container_group"]["location"] == "northeurope"
        assert container(payload)["properties"]["command"] == ["prefect", "flow-run", "execute"]

    def test_group_name(self) -> None:
        payload = render(from_pool())
        assert payload["container_group_name"] == f"nightly-etl-{RUN_ID}"
        assert container(payload)["name"] == payload["container_group_name"]
        assert len("prefect-" + payload["container_group_name"]) <= 64


class TestFromBlock:
    def test_prefect2_defaults(self) -> None:
        config = from_block(stream_output=None, identities=None, unknown_field=1)
        assert (config.cpu, config.memory, config.entrypoint) == (1.0, 1.0, "/opt/prefect/entrypoint.sh")
        assert_golden("aci", "block_default", render(config))

    def test_full_block(self) -> None:
        config = from_block(
            aci_credentials={"client_id": "c", "tenant_id": "t", "client_secret": "hunter2"},
            image_registry={
                "registry_url": "r.example.com",
                "username": "u",
                "password": "hunter2",
                "reauth": True,
            },
            identities=["/id/one", "/id/two"],
            subnet_ids=["/subnet/a"],
            dns_servers=["1.1.1.1", "8.8.8.8"],
            cpu=0.5,
            memory=1.5,
            command=["python", "-m", "prefect.engine"],
            env={"EXTRA": "1", "PREFECT_API_URL": None},
            customizations=json.dumps([{"op": "add", "path": "/zones", "value": ["1"]}]),
        )
        assert isinstance(config.image_registry, RegistryLogin)
        assert config.aci_credentials.client_secret is not None
        assert config.aci_credentials.client_secret.get_secret_value() == "hunter2"
        assert "hunter2" not in repr(config) and "sub-1234" not in repr(config)
        assert_golden("aci", "block_full", render(config))


class TestBadInput:
    @pytest.mark.parametrize("field", ["subscription_id", "resource_group_name", "image"])
    def test_required(self, field: str) -> None:
        data = {key: value for key, value in REQUIRED.items() if key != field}
        exc = error(KIND.config_from_block, data, source="block 'aci'")
        assert exc.field == field and "is not set" in str(exc) and "block 'aci'" in str(exc)

    def test_required_from_pool(self) -> None:
        resolved = resolve_job_configuration(template(), {"image": "i"}, None, source=SOURCE)
        exc = error(KIND.config_from_pool, resolved, pool_type="azure-container-instance", source=SOURCE)
        assert exc.field in ("resource_group_name", "subscription_id") and SOURCE in str(exc)

    @pytest.mark.parametrize(
        ("field", "value"), [("memory", "1Gi"), ("memory", 0), ("cpu", -1), ("cpu", "lots")]
    )
    def test_resources(self, field: str, value: Any) -> None:
        exc = error(from_block, **{field: value})
        assert exc.field == field and "number" in str(exc)

    def test_gpu_needs_both(self) -> None:
        assert error(from_block, gpu_count=1).field == "gpu_sku"

    def test_secrets_are_not_echoed(self) -> None:
        exc = error(KIND.config_from_block, {**REQUIRED, "subscription_id": ["sub-1234"]}, source="b")
        assert exc.field == "subscription_id" and "value hidden" in str(exc)
        exc = error(from_block, image_registry={"registry_url": "r", "password": "hunter2"})
        assert exc.field.startswith("image_registry")
        exc = error(from_block, env={"TOKEN": {"v": SECRET}})
        assert exc.field == "env.TOKEN"

    def test_unsupported_arm_expression(self) -> None:
        tpl = template()
        tpl["job_configuration"]["arm_template"]["resources"][0]["properties"]["osType"] = "[variables('os')]"
        exc = error(from_pool, tpl=tpl)
        assert exc.field == "arm_template.resources[0].properties.osType"

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda r: r.update(type="Microsoft.Web/sites"), "arm_template.resources[0].type"),
            (
                lambda r: r["properties"].update(restartPolicy="Always"),
                "arm_template.resources[0].properties.restartPolicy",
            ),
            (
                lambda r: r["properties"].update(containers=[]),
                "arm_template.resources[0].properties.containers",
            ),
        ],
    )
    def test_arm_resource_shape(self, change: Any, field: str) -> None:
        tpl = template()
        change(tpl["job_configuration"]["arm_template"]["resources"][0])
        assert error(from_pool, tpl=tpl).field == field

    def test_bad_customizations(self) -> None:
        assert error(from_block, customizations="{not json").field == "customizations"
        config = from_block(customizations=[{"op": "remove", "path": "/properties/nope"}])
        assert error(render, config).field == "customizations[0]"

    def test_not_an_object(self) -> None:
        exc = error(KIND.config_from_pool, ["x"], pool_type="azure-container-instance", source=SOURCE)
        assert exc.field == "job_configuration"
