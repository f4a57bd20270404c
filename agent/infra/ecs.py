"""The `ecs` infrastructure kind: an ECS task, from an `ecs` work pool or an `ecs-task` block.

Both sources become one `EcsConfig` shaped like prefect-aws's `ECSJobConfiguration` (a
`task_definition` template, a `task_run_request` template and the worker's options), so
one code path builds the payload, following the 3.x ECS worker step for step:

    {"task_definition": <register_task_definition kwargs, or null with a task definition ARN>,
     "run_task": <run_task kwargs>}

Without an ARN, `run_task.taskDefinition` is the family: the backend registers (or reuses an
equal ACTIVE revision of) `task_definition` and puts the revision's ARN there instead.

Deviations from the ECS worker, all where it would send less than it should:
* overrides for the orchestration container are always sent, even when the pool template
  has no `overrides` (Prefect then launched the task without PREFECT__FLOW_RUN_ID);
* the generated family is slugified (Prefect computes the slug and discards it);
* `startedBy` defaults to the flow run id, so a task can be found with `ListTasks`;
* an awsvpc task always carries `networkConfiguration.awsvpcConfiguration`: the pool's
  `network_configuration` verbatim, or `{"subnets": [], "assignPublicIp": "ENABLED",
  "securityGroups": []}`, whose empty `subnets` the backend fills at launch with every
  subnet of `vpc_id` (or of the default VPC), as Prefect's discovery does. Building the
  payload never calls AWS; the skeleton is there so that customizations can patch it;
* there is no default image: without a task definition ARN the orchestration container
  needs one (job variable / block field `image`, or the task definition's container);
* a block with `task_definition_arn` runs that definition as is: fields that would need a
  changed copy of it (`image`, `family`, `configure_cloudwatch_logs`) are rejected.

Customizations (RFC 6902): the block's `task_customizations` or the pool job variable
`customizations` (add `"customizations": "{{ customizations }}"` to the pool's
`job_configuration` to use it). Every operation targets the `run_task` request, as in
Prefect 2 (`/networkConfiguration/awsvpcConfiguration/subnets`, `/overrides/...`), except
paths starting with `/task_definition/`, which target the register_task_definition
request (`task_definition` is never a run_task field, so nothing is ambiguous). They are
returned by `EcsKind.customizations` rewritten against the whole payload (`/run_task/...`).
"""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from agent.infra.patch import parse_customizations
from agent.infra.process import Command, EnvName, EnvValue
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError

__all__ = [
    "DEFAULT_COMMAND",
    "EcsConfig",
    "EcsKind",
    "Origin",
    "SecretDict",
    "config_error",
    "merged_env",
    "stable_suffix",
    "validate_model",
]

# Shared with the other container kinds (cloud_run.py imports them from here).
DEFAULT_COMMAND: Final = ("prefect", "flow-run", "execute")  # reads PREFECT__FLOW_RUN_ID
Origin = Literal["pool", "block"]
# Credential blocks' data: kept for the backend, out of reprs and dumps (they hold keys).
SecretDict = Annotated[dict[str, Any] | None, Field(repr=False, exclude=True)]
_M = TypeVar("_M", bound=BaseModel)


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


def config_error(message: str, field: str, source: str) -> InfraError:
    return InfraError(message, field=field, source=source)


def merged_env(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The run's environment with the configured env on top; None unsets a variable."""
    env = {**base, **overrides}
    return {name: value for name, value in env.items() if value is not None}


def stable_suffix(flow_run_id: str, length: int) -> str:
    """Hex digits derived from the run id: the same run always gets the same name."""
    return hashlib.sha256(flow_run_id.encode()).hexdigest()[:length]


def validate_model(
    model: type[_M],
    data: Mapping[str, Any],
    *,
    source: str,
    fixes: Mapping[str, str],
    hidden: frozenset[str],
    what: str = "job variable",
) -> _M:
    """`model` from `data`, or one-line `InfraError` naming the field, the source and the fix.

    Not chained (`from None`): pydantic errors carry the input, which may be a secret.
    """
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    raise _error(error, source, fixes, hidden, what) from None


def _error(
    error: ErrorDetails, source: str, fixes: Mapping[str, str], hidden: frozenset[str], what: str
) -> InfraError:
    loc = [part for part in error["loc"] if part != "[key]"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "configuration"
    field = str(loc[0]) if loc else path
    fix = fixes.get(field, f"correct {field}")
    problem = error["msg"][:1].lower() + error["msg"][1:]
    if error["type"] != "missing":
        value = error.get("input")
        shown = repr(value)
        hide = field in hidden or len(shown) > 60
        problem += f" (got {type(value).__name__}{', value hidden' if hide else ': ' + shown})"
    where = f" from {source}" if source else ""
    return InfraError(f"{what} {path!r}{where}: {problem}; {fix}", field=path, source=source)


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


class _EcsTaskBlock(BaseModel):
    """A Prefect 2 `ECSTask` block's data: field names and defaults of prefect-aws 0.4."""

    model_config = ConfigDict(extra="ignore")

    aws_credentials: SecretDict = None
    task_definition_arn: str | None = None
    task_definition: dict[str, Any] | None = None
    family: str | None = None
    image: str | None = None
    auto_deregister_task_definition: bool = True
    cpu: int | None = Field(default=None, gt=0)
    memory: int | None = Field(default=None, gt=0)
    execution_role_arn: str | None = None
    configure_cloudwatch_logs: bool | None = None
    cloudwatch_logs_options: dict[str, str] = Field(default_factory=dict)
    stream_output: bool | None = None
    launch_type: Literal["FARGATE", "EC2", "EXTERNAL", "FARGATE_SPOT"] | None = "FARGATE"
    vpc_id: str | None = None
    cluster: str | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    command: Command = None
    task_role_arn: str | None = None
    task_start_timeout_seconds: int = Field(default=120, ge=0)
    task_watch_poll_interval: float = Field(default=5.0, ge=0)


_FIXES: Final = {
    "cpu": "give CPU units as an integer such as 1024",
    "memory": "give memory in MiB as an integer such as 2048",
    "launch_type": "use FARGATE, FARGATE_SPOT, EC2 or EXTERNAL",
    "env": 'give env as an object such as {"NAME": "value"}',
    "task_definition": "give the task definition as an object (register_task_definition fields)",
    "task_run_request": "fix the work pool's base job template",
    "aws_credentials": "reference an AwsCredentials block",
}
_HIDDEN: Final = frozenset({"env", "command", "aws_credentials", "task_definition", "task_run_request"})


class EcsKind:
    """The ECS kind: configuration from either source, and the ECS request payloads."""

    kind: ClassVar[str] = "ecs"
    pool_types: ClassVar[tuple[str, ...]] = ("ecs",)
    block_slug: ClassVar[str] = "ecs-task"

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> EcsConfig:
        data = dict(_mapping(resolved, source, "job configuration"))
        trr = data.get("task_run_request")
        arn = trr.get("taskDefinition") if isinstance(trr, Mapping) else None
        data.update(origin="pool", task_definition_arn=arn or None)
        for unused in ("task_start_timeout_seconds", "task_watch_poll_interval"):
            if data.get(unused) == 0:  # the stock template's literal 0: "not used", keep our default
                data.pop(unused)
        data["customizations"] = parse_customizations(
            data.get("customizations"), field="customizations", source=source
        )
        config = validate_model(EcsConfig, data, source=source, fixes=_FIXES, hidden=_HIDDEN)
        _check(config, source, "job variable")
        return config

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> EcsConfig:
        block_data = _mapping(data, source, "block data")
        block = validate_model(
            _EcsTaskBlock, block_data, source=source, fixes=_FIXES, hidden=_HIDDEN, what="block field"
        )
        ops = parse_customizations(
            block_data.get("task_customizations"), field="task_customizations", source=source
        )
        config = EcsConfig(**_pool_shape(block, source), customizations=ops)
        _check(config, source, "block field")
        return config

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, EcsConfig)
        env = merged_env(ctx.env, config.env)
        for option, name in _SECRET_ENV.items():
            if getattr(config, option):  # provided by a Secrets Manager secret instead
                env.pop(name, None)
        task_definition = None if config.task_definition_arn else _task_definition(config, ctx)
        return {
            "task_definition": task_definition,
            "run_task": _run_task(config, ctx, task_definition, env),
        }

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, EcsConfig)
        return [_retarget(op) for op in config.customizations]


def _mapping(value: Any, source: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise config_error(f"{what} of {source} must be an object", what.replace(" ", "_"), source)
    return value


def _retarget(op: dict[str, Any]) -> dict[str, Any]:
    op = dict(op)
    for key in ("path", "from"):
        path = op.get(key)
        if isinstance(path, str) and not (path + "/").startswith("/task_definition/"):
            op[key] = "/run_task" + path
    return op


def _pool_shape(block: _EcsTaskBlock, source: str) -> dict[str, Any]:
    """A block's fields laid out as the pool's job configuration (prefect-aws 2.x semantics)."""
    if block.task_definition_arn:
        for field in ("task_definition", "image", "family", "configure_cloudwatch_logs"):
            if getattr(block, field):
                raise config_error(
                    f"block field {field!r} from {source} cannot be used with 'task_definition_arn' "
                    "(flow-agent runs an existing task definition unchanged); remove one of them, "
                    "or give the whole definition in 'task_definition'",
                    field,
                    source,
                )
    td = copy.deepcopy(block.task_definition or {})
    if not block.task_definition_arn:
        containers = td.setdefault("containerDefinitions", [])
        container = _find(containers, DEFAULT_CONTAINER)
        if container is None:
            container = {"name": DEFAULT_CONTAINER}
            containers.append(container)
        updates = {"image": block.image}
        container.update({k: v for k, v in updates.items() if v})
        td.update({k: v for k, v in _td_fields(block).items() if v})
    prefect_override = {"name": DEFAULT_CONTAINER, "cpu": block.cpu, "memory": block.memory}
    overrides = {
        "containerOverrides": [_without_none(prefect_override)],
        "cpu": str(block.cpu) if block.cpu else None,
        "memory": str(block.memory) if block.memory else None,
        "executionRoleArn": block.execution_role_arn,
        "taskRoleArn": block.task_role_arn,
    }
    request = {"launchType": block.launch_type, "cluster": block.cluster}
    request["overrides"] = _without_none(overrides)
    configure_logs = block.configure_cloudwatch_logs
    return {
        **{field: getattr(block, field) for field in _BLOCK_AS_IS},
        "origin": "block",
        "task_definition": td,
        "task_run_request": _without_none(request),
        "container_name": DEFAULT_CONTAINER,
        "configure_cloudwatch_logs": block.stream_output if configure_logs is None else configure_logs,
        "customizations_field": "task_customizations",
    }


_BLOCK_AS_IS: Final = (
    "aws_credentials",
    "task_definition_arn",
    "env",
    "labels",
    "name",
    "command",
    "vpc_id",
    "cluster",
    "execution_role_arn",
    "cloudwatch_logs_options",
    "auto_deregister_task_definition",
    "stream_output",
    "task_start_timeout_seconds",
    "task_watch_poll_interval",
)


def _td_fields(block: _EcsTaskBlock) -> dict[str, Any]:
    return {
        "family": block.family,
        "cpu": block.cpu,
        "memory": block.memory,
        "executionRoleArn": block.execution_role_arn,
    }


def _without_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def _find(containers: list[Any], name: str) -> dict[str, Any] | None:
    for container in containers:
        if isinstance(container, dict) and container.get("name") == name:
            return container
    return None


def _container_name(config: EcsConfig, task_definition: Mapping[str, Any] | None) -> str:
    """The orchestration container: configured, else "prefect" if defined, else the first."""
    if config.container_name:
        return config.container_name
    containers = (task_definition or {}).get("containerDefinitions") or []
    if _find(containers, DEFAULT_CONTAINER) is None and containers and isinstance(containers[0], dict):
        return str(containers[0].get("name") or DEFAULT_CONTAINER)
    return DEFAULT_CONTAINER


def _check(config: EcsConfig, source: str, what: str) -> None:
    """Prefect's `ECSJobConfiguration` validators, plus: the container needs an image."""
    td = config.task_definition
    if config.task_definition_arn:
        return _check_logging(config, source, what)
    containers = td.get("containerDefinitions", [])
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise config_error(
            f"task definition from {source} must have 'containerDefinitions' as a list of objects; "
            "fix the task definition",
            "task_definition",
            source,
        )
    if containers and all(c.get("essential") is False for c in containers):
        raise config_error(
            f"task definition from {source} has no essential container; mark one container 'essential': true",
            "task_definition",
            source,
        )
    name = _container_name(config, td)
    container = _find(containers, name)
    if container is None and name != DEFAULT_CONTAINER:
        raise config_error(
            f"{what} 'container_name' from {source} names {name!r}, which is not in the task "
            "definition; use the name of one of its containerDefinitions",
            "container_name",
            source,
        )
    if not (container or _unnamed(containers)).get("image"):
        raise config_error(
            f"{what} 'image' from {source} is missing: the container {name!r} needs an image unless "
            "a task_definition_arn is given; set image, e.g. prefecthq/prefect:3-python3.12",
            "image",
            source,
        )
    _check_logging(config, source, what)


def _unnamed(containers: list[dict[str, Any]]) -> dict[str, Any]:
    return next((c for c in containers if "name" not in c), {})


def _check_logging(config: EcsConfig, source: str, what: str) -> None:
    has_role = config.execution_role_arn or config.task_definition.get("executionRoleArn")
    if config.configure_cloudwatch_logs and not (has_role or config.task_definition_arn):
        raise config_error(
            f"{what} 'configure_cloudwatch_logs' from {source} needs an execution role; "
            "set execution_role_arn",
            "execution_role_arn",
            source,
        )
    if config.cloudwatch_logs_options and not config.configure_cloudwatch_logs:
        raise config_error(
            f"{what} 'cloudwatch_logs_options' from {source} needs configure_cloudwatch_logs; "
            "set configure_cloudwatch_logs to true or remove the options",
            "cloudwatch_logs_options",
            source,
        )
    if config.network_configuration and not config.vpc_id:
        raise config_error(
            f"{what} 'network_configuration' from {source} needs a vpc_id; set vpc_id to the VPC "
            "of its subnets",
            "vpc_id",
            source,
        )


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
    name = _container_name(config, td)
    container = _find(td["containerDefinitions"], name) or _unnamed(td["containerDefinitions"])
    if not container:
        td["containerDefinitions"].append(container)
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
        prefix = config.name or ctx.flow_run_name or DEFAULT_FAMILY
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
    name = _container_name(config, td)
    if containers and not containers[0].get("name"):
        containers[0]["name"] = name
    orchestration = _find(containers, name)
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
