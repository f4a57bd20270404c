"""Prefect 2 infrastructure blocks: every 2.x field against flow-agent's block models and schemas.

Prefect 2 cannot be installed next to Prefect 3, so the 2.x side is transcribed here, field by
field (name, type, default, required), from the 2.x source at these pinned versions:

* Process, and the fields every block has: PrefectHQ/prefect@68841f37f4fd8c5047a386d3b25febc2e7af724a
  (tag 2.20.25, the last 2.x) src/prefect/infrastructure/base.py:71-87 (env, labels, name,
  command), src/prefect/infrastructure/process.py:83-98.
* KubernetesJob: same commit, src/prefect/infrastructure/kubernetes.py:118-185 (fields),
  :226-248 (`base_job_manifest`); `cluster_config` is prefect/blocks/kubernetes.py's
  `KubernetesClusterConfig` (no secret fields).
* ECSTask: PrefectHQ/prefect-aws@1e21cd54218ac912d4716c3c47f490b7e00a8c51 (v0.4.14)
  prefect_aws/ecs.py:307-490; `AwsCredentials.aws_secret_access_key` is a SecretStr
  (prefect_aws/credentials.py:83).
* CloudRunJob (v1): PrefectHQ/prefect-gcp@fa7832b405f14b60dd70cf36b5193c5e022f418e (v0.5.8)
  prefect_gcp/cloud_run.py:245-326; `GcpCredentials.service_account_info` is a SecretDict
  (prefect_gcp/credentials.py:111, secret field `service_account_info.*`).
* AzureContainerInstanceJob: PrefectHQ/prefect-azure@5e9ef2c929cd35ce58a482f06d2af04b46faf158
  (v0.3.7) prefect_azure/container_instance.py:117-120 (defaults), :151-170
  (ACRManagedIdentity), :191-325 (fields); `DockerRegistry` is prefect 2.20.25
  src/prefect/infrastructure/container.py (username, password SecretStr, registry_url,
  reauth=True); `AzureContainerInstanceCredentials.client_secret` is a SecretStr
  (prefect_azure/credentials.py:499).

Secret fields are what Prefect 2's `_collect_secret_fields` (prefect 2.20.25
src/prefect/blocks/core.py:126-148) derives from those types, nested credentials blocks
included. flow-agent's side: the pydantic models (`agent.blocks.models`, `agent.blocks.cloud`)
and the block schemas registered from them (`agent.blocks.INFRASTRUCTURE_BLOCKS`), whose
credentials fields become nested block references at registration, adding the nested
block type's secret fields (`agent.api.blocks._embed_references`).

Types are spelled as JSON sees them: `str|None`, `list[str]`, `dict[str,any]`,
`literal(a,b)`, `block:<slug>` for a nested block, `secret` for SecretStr. Pydantic v1 made
`x: int = Field(default=None)` optional, so 2.x fields declared like that are `int|None` here.
Any difference fails unless it is in DIFFERENCES, whose reason is a row of README's table
"Where flow-agent differs from Prefect's workers" (checked). The requests these blocks
become are compared in test_prefect2_block_requests.py.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, SecretBytes, SecretStr

from agent.blocks import INFRASTRUCTURE_BLOCKS, get_block_spec
from agent.blocks.cloud import AzureContainerInstanceJobBlock, CloudRunJobBlock, ECSTaskBlock
from agent.blocks.models import KubernetesJobBlock, ProcessBlock

REQUIRED = "<required>"
# a 2.x default made by a factory at block creation, not a JSON value in the schema
FACTORY = "<factory>"

# `Infrastructure`'s fields (base.py:71-87); CloudRunJob and ECSTask/ACI redeclare `env`
BASE = {
    "env": ("dict[str,str|None]", {}),
    "labels": ("dict[str,str]", {}),
    "name": ("str|None", None),
    "command": ("list[str]|None", None),
}

PREFECT2: dict[str, dict[str, tuple[str, Any]]] = {
    "process": {
        **BASE,
        "type": ("literal(process)", "process"),
        "stream_output": ("bool", True),
        # Union[str, Path, None]: a path is a string in JSON
        "working_dir": ("str|None", None),
    },
    "kubernetes-job": {
        **BASE,
        "type": ("literal(kubernetes-job)", "kubernetes-job"),
        "image": ("str|None", None),
        "namespace": ("str|None", None),
        "service_account_name": ("str|None", None),
        # Optional[KubernetesImagePullPolicy], an Enum of these values
        "image_pull_policy": ("literal(IfNotPresent,Always,Never)|None", None),
        "cluster_config": ("block:kubernetes-cluster-config|None", None),
        "job": (
            "dict[str,any]",
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"labels": {}},
                "spec": {
                    "template": {
                        "spec": {
                            "parallelism": 1,
                            "completions": 1,
                            "restartPolicy": "Never",
                            "containers": [{"name": "prefect-job", "env": []}],
                        }
                    }
                },
            },
        ),
        # JsonPatch, serialised as its list of operations (`KubernetesJob.dict`)
        "customizations": ("list[dict[str,any]]", []),
        "job_watch_timeout_seconds": ("int|None", None),
        "pod_watch_timeout_seconds": ("int", 60),
        "stream_output": ("bool", True),
        "finished_job_ttl": ("int|None", None),
    },
    "ecs-task": {
        **BASE,
        "type": ("literal(ecs-task)", "ecs-task"),
        # default_factory=AwsCredentials: a credentials block with every field empty
        "aws_credentials": ("block:aws-credentials", FACTORY),
        "task_definition_arn": ("str|None", None),
        "task_definition": ("dict[str,any]|None", None),
        "family": ("str|None", None),
        "image": ("str|None", None),
        "auto_deregister_task_definition": ("bool", True),
        "cpu": ("int|None", None),
        "memory": ("int|None", None),
        "execution_role_arn": ("str|None", None),
        "configure_cloudwatch_logs": ("bool|None", None),
        "cloudwatch_logs_options": ("dict[str,str]", {}),
        "stream_output": ("bool|None", None),
        "launch_type": ("literal(FARGATE,EC2,EXTERNAL,FARGATE_SPOT)|None", "FARGATE"),
        "vpc_id": ("str|None", None),
        "cluster": ("str|None", None),
        "env": ("dict[str,str|None]", {}),
        "task_role_arn": ("str|None", None),
        "task_customizations": ("list[dict[str,any]]", []),
        "task_start_timeout_seconds": ("int", 120),
        "task_watch_poll_interval": ("float", 5.0),
    },
    "cloud-run-job": {
        **BASE,
        "type": ("literal(cloud-run-job)", "cloud-run-job"),
        "image": ("str", REQUIRED),
        "region": ("str", REQUIRED),
        "credentials": ("block:gcp-credentials", REQUIRED),
        "cpu": ("int|None", None),
        "memory": ("int|None", None),
        "memory_unit": ("literal(G,Gi,M,Mi)|None", None),
        "vpc_connector_name": ("str|None", None),
        "args": ("list[str]|None", None),
        "env": ("dict[str,str]", {}),
        "keep_job": ("bool|None", False),
        "timeout": ("int|None", 600),
        "max_retries": ("int|None", 3),
    },
    "azure-container-instance-job": {
        **BASE,
        "type": ("literal(container-instance-job)", "container-instance-job"),
        "aci_credentials": ("block:azure-container-instance-credentials", FACTORY),
        "resource_group_name": ("str", REQUIRED),
        "subscription_id": ("secret", REQUIRED),
        "identities": ("list[str]|None", None),
        # default_factory=get_prefect_image_name: the image of the creating Prefect's version
        "image": ("str|None", FACTORY),
        "entrypoint": ("str|None", "/opt/prefect/entrypoint.sh"),
        "image_registry": ("DockerRegistry|ACRManagedIdentity|None", None),
        "cpu": ("float", 1.0),
        "gpu_count": ("int|None", None),
        "gpu_sku": ("str|None", None),
        "memory": ("float", 1.0),
        "subnet_ids": ("list[str]|None", None),
        "dns_servers": ("list[str]|None", None),
        "stream_output": ("bool|None", None),
        "env": ("dict[str,str|None]", {}),
        "task_start_timeout_seconds": ("int", 240),
        "task_watch_poll_interval": ("float", 5.0),
    },
}

# the numeric bounds 2.x declares (cloud_run.py:306-325)
PREFECT2_BOUNDS = {
    ("cloud-run-job", "timeout"): {"exclusiveMinimum": 0, "maximum": 3600},
    ("cloud-run-job", "max_retries"): {"minimum": 0, "maximum": 10},
}

# nested models of 2.x (container.py DockerRegistry; container_instance.py:151-170)
PREFECT2_NESTED = {
    "DockerRegistry": {
        "username": ("str", REQUIRED),
        "password": ("secret", REQUIRED),
        "registry_url": ("str", REQUIRED),
        "reauth": ("bool", True),
    },
    "ACRManagedIdentity": {"registry_url": ("str", REQUIRED), "identity": ("str", REQUIRED)},
}

PREFECT2_SECRETS = {
    "process": set(),
    "kubernetes-job": set(),
    "ecs-task": {"aws_credentials.aws_secret_access_key"},
    "cloud-run-job": {"credentials.service_account_info.*"},
    "azure-container-instance-job": {
        "aci_credentials.client_secret",
        "subscription_id",
        "image_registry.password",
    },
}
# the secret fields of the credentials block types flow-agent references (Prefect 3's
# integrations register them with the same names as the 2.x ones above)
NESTED_SECRETS = {
    "aws-credentials": ["aws_secret_access_key"],
    "gcp-credentials": ["service_account_info.*"],
    "azure-container-instance-credentials": ["client_secret"],
    "kubernetes-cluster-config": [],
}

MODELS: dict[str, type[BaseModel]] = {
    "process": ProcessBlock,
    "kubernetes-job": KubernetesJobBlock,
    "ecs-task": ECSTaskBlock,
    "cloud-run-job": CloudRunJobBlock,
    "azure-container-instance-job": AzureContainerInstanceJobBlock,
}

# (slug, field) -> the start of the README row that says why flow-agent differs
ROW_CREDENTIALS = "| Prefect 2 `ECSTask` and `AzureContainerInstanceJob` blocks: credentials left out |"
ROW_IMAGE = "| Kubernetes, ECS and ACI without an image |"
ROW_CLOUD_RUN_ENV = "| Prefect 2 `CloudRunJob` block: `env` values |"
DIFFERENCES = {
    ("ecs-task", "aws_credentials"): ROW_CREDENTIALS,
    ("azure-container-instance-job", "aci_credentials"): ROW_CREDENTIALS,
    ("azure-container-instance-job", "image"): ROW_IMAGE,
    ("cloud-run-job", "env"): ROW_CLOUD_RUN_ENV,
}
README = Path(__file__).resolve().parents[2] / "README.md"


def spell(annotation: Any, references: dict[str, str] | None = None, name: str = "") -> str:
    """A type as JSON sees it, in the spelling of the tables above."""
    if name and references and name in references:
        optional = type(None) in typing.get_args(annotation)
        return f"block:{references[name]}" + ("|None" if optional else "")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return "|".join(spell(arg) for arg in args)
    if origin is Literal:
        return f"literal({','.join(str(arg) for arg in args)})"
    if origin is list:
        return f"list[{spell(args[0])}]"
    if origin is dict:
        return f"dict[{spell(args[0])},{spell(args[1])}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    if annotation in (SecretStr, SecretBytes):
        return "secret"
    return annotation.__name__


def ours(slug: str) -> dict[str, tuple[str, Any]]:
    """flow-agent's fields: the model's types and defaults, the registered schema's required."""
    spec = get_block_spec(slug)
    assert spec is not None
    schema = spec.fields
    required = set(schema.get("required", []))
    fields = {}
    for name, info in MODELS[slug].model_fields.items():
        # a default_factory leaves no `default` in the schema: the model's value is the one
        default = REQUIRED if name in required else info.get_default(call_default_factory=True)
        fields[name] = (spell(info.annotation, dict(spec.references), name), default)
    return fields


def test_every_block_type_is_covered() -> None:
    assert {spec.slug for spec in INFRASTRUCTURE_BLOCKS} == set(PREFECT2)


@pytest.mark.parametrize("slug", list(PREFECT2))
def test_field_names_types_defaults(slug: str) -> None:
    theirs, mine = PREFECT2[slug], ours(slug)
    assert set(mine) == set(theirs), (
        f"{slug}: only 2.x {set(theirs) - set(mine)}, only ours {set(mine) - set(theirs)}"
    )
    differing = {name for name in theirs if theirs[name] != mine[name]}
    unexplained = {name: (theirs[name], mine[name]) for name in differing if (slug, name) not in DIFFERENCES}
    assert not unexplained, f"{slug}: (2.x, flow-agent) differ: {unexplained}"
    # a listed difference that is no longer one must leave the list
    stale = {name for (s, name) in DIFFERENCES if s == slug} - differing
    assert not stale, f"{slug}: listed as different but equal: {stale}"


@pytest.mark.parametrize("slug", list(PREFECT2))
def test_schema_defaults_match_the_models(slug: str) -> None:
    """What the UI's form shows as default is what a block saved without the field gets."""
    spec = get_block_spec(slug)
    assert spec is not None
    properties = spec.fields["properties"]
    for name, info in MODELS[slug].model_fields.items():
        if info.is_required():
            assert "default" not in properties[name], name
        elif "default" in properties[name]:
            assert properties[name]["default"] == info.get_default(call_default_factory=True), name


def test_listed_differences_are_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    for key, row in DIFFERENCES.items():
        assert row in text, f"{key}: no README row {row!r}"


def test_the_listed_differences_are_what_they_say() -> None:
    """Each difference, spelled out: ours is optional and empty where 2.x made a value."""
    mine = {slug: ours(slug) for slug in PREFECT2}
    assert mine["ecs-task"]["aws_credentials"] == ("block:aws-credentials|None", None)
    assert mine["azure-container-instance-job"]["aci_credentials"] == (
        "block:azure-container-instance-credentials|None",
        None,
    )
    assert mine["azure-container-instance-job"]["image"] == ("str|None", None)
    assert mine["cloud-run-job"]["env"] == ("dict[str,str|None]", {})


@pytest.mark.parametrize(("key", "bounds"), list(PREFECT2_BOUNDS.items()))
def test_numeric_bounds(key: tuple[str, str], bounds: dict[str, int]) -> None:
    slug, name = key
    spec = get_block_spec(slug)
    assert spec is not None
    prop = spec.fields["properties"][name]
    # Optional[int] puts the bounds on the int branch of anyOf
    branches = prop.get("anyOf", [prop])
    found = next(branch for branch in branches if branch.get("type") == "integer")
    assert {k: found[k] for k in bounds if k in found} == bounds


@pytest.mark.parametrize("model", ["DockerRegistry", "ACRManagedIdentity"])
def test_aci_image_registry_models(model: str) -> None:
    annotation = AzureContainerInstanceJobBlock.model_fields["image_registry"].annotation
    nested = {
        arg.__name__: arg
        for arg in typing.get_args(annotation)
        if isinstance(arg, type) and issubclass(arg, BaseModel)
    }
    fields = {
        name: (spell(info.annotation), REQUIRED if info.is_required() else info.get_default())
        for name, info in nested[model].model_fields.items()
    }
    assert fields == PREFECT2_NESTED[model]


@pytest.mark.parametrize("slug", list(PREFECT2))
def test_secret_fields(slug: str) -> None:
    """What the UI masks: the block's own secrets plus its credentials block's, as in 2.x."""
    spec = get_block_spec(slug)
    assert spec is not None
    registered = set(spec.fields["secret_fields"])
    for name, nested_slug in spec.references.items():
        registered |= {f"{name}.{s}" for s in NESTED_SECRETS[nested_slug]}
    assert registered == PREFECT2_SECRETS[slug]
