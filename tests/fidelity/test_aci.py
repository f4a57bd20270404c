"""ACI: prefect-azure 0.4.13's AzureContainerWorker ARM template against flow-agent, five variable sets.

Prefect deploys the ARM template; flow-agent creates the container group it describes.
The cloud boundary here is the ARM engine: `[parameters('...')]` is evaluated literally
(harness.evaluate_arm) and the group resource compared with flow-agent's body.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect_azure.workers.container_instance import AzureContainerWorker
from slugify import slugify

from fidelity.harness import REFERENCED_ENV, Case, World, assert_same, block_ref, both_sides, evaluate_arm

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "acme.azurecr.io/flows:2026.12"
REQUIRED = {"resource_group_name": "flows-rg", "subscription_id": "00000000-0000-0000-0000-000000000001"}
CREDENTIALS = (("variables", "properties", "aci_credentials", "default"), block_ref("fid-azure"))
_BODY_KEYS = ("location", "tags", "zones", "identity", "properties")
LAUNCH = {
    # "[resourceGroup().location]": the backend reads the resource group's location at launch
    "container_group.location": "the resource group's location, read at launch",
    # Prefect puts no tags on the group; flow-agent tags it with the run's labels so that a
    # restarted agent finds the run's group (README, "Where flow-agent differs")
    "container_group.tags": "flow-agent's run labels as tags",
    # "[uniqueString(resourceGroup().id)]": an ARM function evaluated at deployment; flow-agent
    # creates the group itself and names its container after the group
    "container_group.properties.containers[0].name": "ARM's uniqueString(), evaluated at deployment",
}


async def _finish(config: Any, *, flow_run: Any, flow: Any, **_: Any) -> dict[str, Any]:
    # AzureContainerWorker.run: the group's name, then the ARM deployment's parameters
    slug = slugify(flow.name, max_length=55 - len(str(flow_run.id)), regex_pattern=r"[^a-zA-Z0-9-]+")
    group = f"{slug}-{flow_run.id}"
    template = config.arm_template
    params = {
        name: spec["defaultValue"]
        for name, spec in template.get("parameters", {}).items()
        if "defaultValue" in spec
    }
    params["container_group_name"] = group
    resource = evaluate_arm(template["resources"][0], params)
    return {
        "subscription_id": config.subscription_id.get_secret_value(),
        "resource_group": config.resource_group_name,
        "container_group_name": group,
        "api_version": resource["apiVersion"],
        "container_group": {key: resource[key] for key in _BODY_KEYS if key in resource},
    }


CASES = [
    Case("defaults", {**REQUIRED, "image": IMAGE}, template_edits=[CREDENTIALS]),
    Case(
        "every-variable",
        {
            **REQUIRED,
            "image": IMAGE,
            "name": "nightly-etl",
            "env": {"TEAM": "data", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data"},
            "command": "prefect flow-run execute",
            "identities": ["/subscriptions/1/resourceGroups/rg/providers/x/userAssignedIdentities/flows"],
            "entrypoint": "/opt/prefect/entrypoint.sh",
            "cpu": 2,
            "memory": 4,
            "subnet_ids": ["/subscriptions/1/resourceGroups/rg/providers/x/subnets/flows"],
            "dns_servers": ["10.0.0.4"],
            "stream_output": True,
            "task_start_timeout_seconds": 600,
            "task_watch_poll_interval": 10,
            "keep_container_group": True,
            "image_registry": {"registry_url": "acme.azurecr.io", "identity": "/subscriptions/1/id/pull"},
        },
        template_edits=[CREDENTIALS],
    ),
    Case(
        "block-references",
        {**REQUIRED, "image": IMAGE, "env": REFERENCED_ENV},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "run-overrides",
        {**REQUIRED, "image": IMAGE, "env": {"A": "deployment", "B": "deployment"}, "cpu": 1},
        run_vars={"env": {"B": "run", "C": "run"}, "memory": 2, "labels": {"run": "yes"}},
        template_edits=[CREDENTIALS],
    ),
    Case(
        "customized-template",
        {**REQUIRED, "image": IMAGE, "entrypoint": None},
        template_edits=[
            CREDENTIALS,
            (("job_configuration", "arm_template", "resources", 0, "properties", "sku"), "Confidential"),
            (("job_configuration", "arm_template", "resources", 0, "zones"), ["1"]),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_aci_group_matches_prefects_worker(world: World, case: Case) -> None:
    sides = await both_sides(world, AzureContainerWorker, "azure-container-instance", case, _finish)
    assert_same(sides, {**LAUNCH, **case.allowed})


async def test_aci_gpu_is_sent_where_prefect_drops_it(world: World) -> None:
    """The one deliberate payload difference beyond the launch fills (README): a GPU request."""
    case = Case(
        "gpu", {**REQUIRED, "image": IMAGE, "gpu_count": 1, "gpu_sku": "V100"}, template_edits=[CREDENTIALS]
    )
    sides = await both_sides(world, AzureContainerWorker, "azure-container-instance", case, _finish)
    requests = "container_group.properties.containers[0].properties.resources.requests"
    assert_same(sides, {**LAUNCH, requests + ".gpu": "flow-agent sends the GPU request Prefect drops"})
    ours = sides.agent["container_group"]["properties"]["containers"][0]["properties"]["resources"]
    assert ours["requests"]["gpu"] == {"count": 1, "sku": "V100"}
    theirs = sides.prefect["container_group"]["properties"]["containers"][0]["properties"]["resources"]
    assert "gpu" not in theirs["requests"]
