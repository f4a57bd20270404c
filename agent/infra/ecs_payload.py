"""The ECS payload: `EcsConfig` (one task, however configured) and the requests built from it.

`build_payload` follows prefect-aws's 3.x ECS worker step for step without an AWS session
(`_prepare_task_definition`, `_prepare_task_run_request`); agent/infra/ecs.py documents
the payload and its deviations, and makes an `EcsConfig` from a pool or a block.
"""

from __future__ import annotations

import copy
import re
import shlex
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from agent.infra.container import DEFAULT_COMMAND, Origin, SecretDict, merged_env
from agent.infra.fields import Command, EnvName, EnvValue
from agent.infra.spec import RunContext

__all__ = [
    "DEFAULT_CONTAINER",
    "EcsConfig",
    "build_payload",
    "container_name",
    "find_container",
    "unnamed_container",
]

DEFAULT_CONTAINER: Final = "prefect"
DEFAULT_CPU: Final = 1024
DEFAULT_MEMORY: Final = 2048
DEFAULT_FAMILY: Final = "prefect"
_FARGATE: Final = ("FARGATE", "FARGATE_SPOT")
_SECRET_ENV: Final = {
    "prefect_api_key_secret_arn": "PREFECT_API_KEY",
    "prefect_api_auth_string_secret_arn": "PREFECT_API_AUTH_STRING",
}
_TAG_DISALLOWED: Final = re.compile(r"[^a-zA-Z0-9_./=+:@-]+")
_FAMILY_DISALLOWED: Final = re.compile(r"[^a-z0-9_-]+")
_STARTED_BY_DISALLOWED: Final = re.compile(r"[^a-zA-Z0-9_/-]+")


class EcsConfig(BaseModel):
    """One ECS task, prefect-aws's `ECSJobConfiguration` fields plus the source's extras.

    `aws_credentials` (an `AwsCredentials` block's data) and `customizations` are left out
    of the repr and of `model_dump`: they may hold secrets. The backend reads them as
    attributes.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    origin: Origin = "pool"
    task_definition: dict[str, Any] = Field(default_factory=dict, repr=False)
    task_run_request: dict[str, Any] = Field(default_factory=dict, repr=False)
    task_definition_arn: str | None = None
    command: Command = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, repr=False)
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    aws_credentials: SecretDict = None
    cluster: str | None = None
    container_name: str | None = None
    vpc_id: str | None = None
    network_configuration: dict[str, Any] = Field(default_factory=dict)
    execution_role_arn: str | None = None
    configure_cloudwatch_logs: bool | None = None
    cloudwatch_logs_options: dict[str, str] = Field(default_factory=dict)
    cloudwatch_logs_prefix: str | None = None
    auto_deregister_task_definition: bool = False
    match_latest_revision_in_family: bool = False
    prefect_api_key_secret_arn: str | None = None
    prefect_api_auth_string_secret_arn: str | None = None
    stream_output: bool | None = None
    task_start_timeout_seconds: int = Field(default=300, ge=0)
    task_watch_poll_interval: float = Field(default=5.0, ge=0)
    customizations: list[dict[str, Any]] = Field(default_factory=list, repr=False, exclude=True)
    customizations_field: str = "customizations"


def build_payload(config: EcsConfig, ctx: RunContext) -> dict[str, Any]:
    """`{"task_definition": <register_task_definition kwargs or None>, "run_task": <kwargs>}`."""
    env = merged_env(ctx.env, config.env)
    for option, name in _SECRET_ENV.items():
        if getattr(config, option):  # provided by a Secrets Manager secret instead
            env.pop(name, None)
    task_definition = None if config.task_definition_arn else _task_definition(config, ctx)
    return {
        "task_definition": task_definition,
        "run_task": _run_task(config, ctx, task_definition, env),
    }


def find_container(containers: list[Any], name: str) -> dict[str, Any] | None:
    """The container definition (or override) called `name`, if any."""
    for container in containers:
        if isinstance(container, dict) and container.get("name") == name:
            return container
    return None


def container_name(config: EcsConfig, task_definition: Mapping[str, Any] | None) -> str:
    """The orchestration container: configured, else "prefect" if defined, else the first."""
    if config.container_name:
        return config.container_name
    containers = (task_definition or {}).get("containerDefinitions") or []
    missing = find_container(containers, DEFAULT_CONTAINER) is None
    if missing and containers and isinstance(containers[0], dict):
        return str(containers[0].get("name") or DEFAULT_CONTAINER)
    return DEFAULT_CONTAINER


def unnamed_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """The first container without a name (it gets the orchestration one), else {}."""
    return next((c for c in containers if "name" not in c), {})


def _slug(text: str, disallowed: re.Pattern[str], *, lowercase: bool) -> str:
    # python-slugify's steps that matter for ASCII-safe AWS names: normalise, replace runs
    # of disallowed characters with "-", collapse and trim dashes
    text = unicodedata.normalize("NFKC", text)
    text = disallowed.sub("-", text.lower() if lowercase else text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def _family(config: EcsConfig, td: Mapping[str, Any], ctx: RunContext) -> str:
    family = td.get("family")
    if config.origin == "block":
        # ECSTask: "prefect__<flow>__<deployment>", every family slugified
        flow = ctx.labels.get("prefect.io/flow-name")
        if not family and (flow or ctx.deployment_name):
            parts = [DEFAULT_FAMILY, flow or "unknown-flow", ctx.deployment_name]
            family = "__".join(p for p in parts if p)
        return _slug(str(family or DEFAULT_FAMILY), _FAMILY_DISALLOWED, lowercase=True)[:255]
    if family:
        return str(family)
    owner = ctx.deployment_id or ctx.flow_id
    generated = f"{DEFAULT_FAMILY}_{ctx.work_pool_name}_{owner}"
    return _slug(generated, _FAMILY_DISALLOWED, lowercase=True)[:255]


def _task_definition(config: EcsConfig, ctx: RunContext) -> dict[str, Any]:
    """`ECSWorker._prepare_task_definition` without the AWS session."""
    td = copy.deepcopy(config.task_definition)
    td["containerDefinitions"] = [c for c in td.get("containerDefinitions", []) if c]
    name = container_name(config, td)
    defined = td["containerDefinitions"]
    container = find_container(defined, name) or unnamed_container(defined)
    if not container:
        defined.append(container)
    container["name"] = name
    unset = {key for key, value in config.env.items() if value is None}
    if isinstance(container.get("environment"), list):
        kept = (i for i in container["environment"] if i.get("name") not in unset)
        container["environment"] = [i for i in kept if i.get("value") is not None]
    if config.configure_cloudwatch_logs:
        container["logConfiguration"] = _log_configuration(config, ctx)
    td["family"] = _family(config, td, ctx)
    cpu = td.get("cpu") or DEFAULT_CPU
    memory = td.get("memory") or DEFAULT_MEMORY
    if config.task_run_request.get("launchType") in _FARGATE:
        td["cpu"], td["memory"] = str(cpu), str(memory)
        compatibilities = td.setdefault("requiresCompatibilities", [])
        if "FARGATE" not in compatibilities:
            compatibilities.append("FARGATE")
        td.setdefault("networkMode", "awsvpc")
    else:
        container.setdefault("cpu", int(cpu))
        container.setdefault("memory", int(memory))
    for key in ("cpu", "memory"):
        if td.get(key):
            td[key] = str(td[key])
    _drop_empty(td)
    _add_secrets(config, container)
    return td


def _log_configuration(config: EcsConfig, ctx: RunContext) -> dict[str, Any]:
    if config.origin == "block":
        # Prefect 2 used the flow run's name here, which put a per-run value into the task
        # definition and registered a new revision for every run; the deployment is stable.
        prefix = config.name or ctx.deployment_name or ctx.flow_id or DEFAULT_FAMILY
    else:
        prefix = config.cloudwatch_logs_prefix or (
            f"prefect-logs_{ctx.work_pool_name}_{ctx.deployment_id or ctx.flow_id}"
        )
    options = {"awslogs-create-group": "true", "awslogs-group": "prefect"}
    region = (config.aws_credentials or {}).get("region_name")
    if region:  # otherwise the backend adds its session's region at launch
        options["awslogs-region"] = str(region)
    options["awslogs-stream-prefix"] = prefix
    return {"logDriver": "awslogs", "options": {**options, **config.cloudwatch_logs_options}}


def _drop_empty(mapping: dict[str, Any]) -> None:
    """Prefect's `_drop_empty_keys_from_dict`: None, "", [] and {} go, False stays."""
    for key, value in tuple(mapping.items()):
        if not value and value is not False:
            mapping.pop(key)
        if isinstance(value, dict):
            _drop_empty(value)
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _drop_empty(item)


def _add_secrets(config: EcsConfig, container: dict[str, Any]) -> None:
    arns = {name: getattr(config, option) for option, name in _SECRET_ENV.items()}
    wanted = {name: arn for name, arn in arns.items() if arn}
    if not wanted:
        return
    container["environment"] = [i for i in container.get("environment", []) if i.get("name") not in wanted]
    if not container["environment"]:
        container.pop("environment")
    secrets = [dict(s) for s in container.get("secrets") or []]
    for secret in secrets:
        if secret.get("name") in wanted:
            secret["valueFrom"] = wanted.pop(secret["name"])
    container["secrets"] = secrets + [{"name": n, "valueFrom": arn} for n, arn in wanted.items()]


def _run_task(
    config: EcsConfig, ctx: RunContext, td: dict[str, Any] | None, env: dict[str, str]
) -> dict[str, Any]:
    """`ECSWorker._prepare_task_run_request` without the AWS session."""
    request = copy.deepcopy(config.task_run_request)
    request["taskDefinition"] = config.task_definition_arn or (td or {}).get("family")
    if config.cluster and not request.get("cluster"):
        request["cluster"] = config.cluster
    _launch_type(request, td)
    _network(config, request, td)
    overrides = request.setdefault("overrides", {})
    _container_overrides(config, overrides, td, env)
    for key in ("cpu", "memory"):
        if overrides.get(key):
            overrides[key] = str(overrides[key])
    tags = _tags(request.get("tags"), {**ctx.labels, **config.labels})
    if tags:
        request["tags"] = tags
    started_by = _STARTED_BY_DISALLOWED.sub("-", ctx.flow_run_id)[:128]
    request.setdefault("startedBy", started_by)
    return request


def _launch_type(request: dict[str, Any], td: Mapping[str, Any] | None) -> None:
    requires_ec2 = "EC2" in (td or {}).get("requiresCompatibilities", [])
    if not request.get("launchType"):
        request.pop("launchType", None)
        if not requires_ec2:  # EC2 definitions may use the cluster's capacity providers
            request["launchType"] = "FARGATE"
    if request.get("capacityProviderStrategy"):
        request.pop("launchType", None)
    elif request.get("launchType") == "FARGATE_SPOT":
        request.pop("launchType")
        request["capacityProviderStrategy"] = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]


def _network(config: EcsConfig, request: dict[str, Any], td: Mapping[str, Any] | None) -> None:
    if td is not None:
        awsvpc = td.get("networkMode") == "awsvpc"
    else:  # an existing definition: Fargate needs awsvpc; for EC2 the backend decides
        strategy = request.get("capacityProviderStrategy") or []
        providers = {str(s.get("capacityProvider")) for s in strategy if isinstance(s, Mapping)}
        awsvpc = request.get("launchType") in _FARGATE or bool(providers & set(_FARGATE))
    if not awsvpc or request.get("networkConfiguration"):
        return
    if config.network_configuration:
        request["networkConfiguration"] = {"awsvpcConfiguration": copy.deepcopy(config.network_configuration)}
    else:
        # empty subnets: the backend fills them from vpc_id or the default VPC at launch
        skeleton = {"subnets": [], "assignPublicIp": "ENABLED", "securityGroups": []}
        request["networkConfiguration"] = {"awsvpcConfiguration": skeleton}


def _container_overrides(
    config: EcsConfig, overrides: dict[str, Any], td: Mapping[str, Any] | None, env: dict[str, str]
) -> None:
    containers = [c for c in overrides.get("containerOverrides") or [] if isinstance(c, dict)]
    name = container_name(config, td)
    if containers and not containers[0].get("name"):
        containers[0]["name"] = name
    orchestration = find_container(containers, name)
    if orchestration is None:
        orchestration = {"name": name}
        containers.append(orchestration)
    orchestration["command"] = list(config.command or DEFAULT_COMMAND)
    for container in containers:
        if isinstance(container.get("command"), str):
            container["command"] = shlex.split(container["command"])
        environment = container.get("environment") or []
        if isinstance(environment, Mapping):
            environment = [{"name": k, "value": v} for k, v in environment.items()]
        container["environment"] = [i for i in environment if i.get("value") is not None]
    unset = {key for key, value in config.env.items() if value is None}
    gone = env.keys() | unset
    kept = [i for i in orchestration["environment"] if i.get("name") not in gone]
    orchestration["environment"] = kept + [{"name": k, "value": v} for k, v in env.items()]
    overrides["containerOverrides"] = [c for c in containers if c]


def _tags(template_tags: Any, labels: Mapping[str, str]) -> list[dict[str, str]]:
    if isinstance(template_tags, Mapping):
        template_tags = [{"key": k, "value": v} for k, v in template_tags.items()]
    kept = [t for t in template_tags or [] if isinstance(t, Mapping) and t.get("key") not in labels]
    tags = [*kept, *({"key": k, "value": v} for k, v in labels.items() if v is not None)]
    # ECS tag rules as Prefect slugifies them; keys <= 128, values <= 256 characters
    return [
        {
            "key": _slug(str(t.get("key", "")), _TAG_DISALLOWED, lowercase=False)[:128],
            "value": _slug(str(t.get("value", "")), _TAG_DISALLOWED, lowercase=False)[:256],
        }
        for t in tags
    ]
