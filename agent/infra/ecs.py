"""The `ecs` infrastructure kind: an ECS task, from an `ecs` work pool or an `ecs-task` block.

Both sources become one `EcsConfig` shaped like prefect-aws's `ECSJobConfiguration` (a
`task_definition` template, a `task_run_request` template and the worker's options), so
one code path builds the payload (agent/infra/ecs_payload.py), following the 3.x ECS
worker step for step:

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.infra.container import SecretDict, config_error, require_object, validate_model
from agent.infra.ecs_payload import (
    DEFAULT_CONTAINER,
    EcsConfig,
    build_payload,
    container_name,
    find_container,
    unnamed_container,
)
from agent.infra.fields import Command, EnvName, EnvValue
from agent.infra.patch import parse_customizations
from agent.infra.spec import RunContext

__all__ = ["EcsConfig", "EcsKind", "EcsRuntime"]


@dataclass(frozen=True)
class EcsRuntime:
    """What the ECS backend needs beyond the payload: the payload says what to run, this
    says with which credentials, how to finish the request and how to read the result."""

    # an AwsCredentials block's data (None: boto3's default chain); holds keys
    aws_credentials: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    vpc_id: str | None = None  # whose subnets fill an awsvpc request left without any
    container_name: str = DEFAULT_CONTAINER  # the flow's container: its exit code is the run's
    task_start_timeout_seconds: float = 0.0  # a task not RUNNING by then is stopped; 0: no limit
    auto_deregister_task_definition: bool = False  # a new revision retires our older ones
    stream_output: bool = False  # the flow container's CloudWatch (awslogs) lines go to the run's log


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

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> EcsConfig:
        data = dict(require_object(resolved, "job configuration", source))
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
        block_data = require_object(data, "block data", source)
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
        return build_payload(config, ctx)

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, EcsConfig)
        return [_retarget(op) for op in config.customizations]

    def runtime(self, config: BaseModel) -> EcsRuntime:
        assert isinstance(config, EcsConfig)
        # the container the payload names, decided from the same (non-empty) definitions
        containers = [c for c in config.task_definition.get("containerDefinitions") or [] if c]
        td = None if config.task_definition_arn else {"containerDefinitions": containers}
        return EcsRuntime(
            aws_credentials=config.aws_credentials,
            vpc_id=config.vpc_id,
            container_name=container_name(config, td),
            task_start_timeout_seconds=float(config.task_start_timeout_seconds),
            auto_deregister_task_definition=config.auto_deregister_task_definition,
            stream_output=bool(config.stream_output),
        )


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
        container = find_container(containers, DEFAULT_CONTAINER)
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
    name = container_name(config, td)
    container = find_container(containers, name)
    if container is None and name != DEFAULT_CONTAINER:
        raise config_error(
            f"{what} 'container_name' from {source} names {name!r}, which is not in the task "
            "definition; use the name of one of its containerDefinitions",
            "container_name",
            source,
        )
    if not (container or unnamed_container(containers)).get("image"):
        raise config_error(
            f"{what} 'image' from {source} is missing: the container {name!r} needs an image unless "
            "a task_definition_arn is given; set image, e.g. prefecthq/prefect:3-python3.12",
            "image",
            source,
        )
    _check_logging(config, source, what)


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
