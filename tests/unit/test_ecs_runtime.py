"""`EcsKind.runtime`: what the ECS backend gets beyond the payload, from either source."""

from __future__ import annotations

from typing import Any

from support.golden import run_context

from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.ecs import EcsKind, EcsRuntime
from agent.infra.ecs_payload import EcsConfig

KIND = EcsKind()
CREDS = {
    "aws_access_key_id": "AKIAEXAMPLE",
    "aws_secret_access_key": "do-not-print",
    "region_name": "eu-west-1",
}
CTX = run_context(
    "0c5b6a4e-1111-4222-8333-444455556666", api_url="https://api.example/api", api_key="k", labels={}
)


def _pool(variables: dict[str, Any], **configuration: Any) -> EcsConfig:
    template = default_base_job_template("ecs")
    template["job_configuration"].update(configuration)
    resolved = resolve_job_configuration(template, variables, None, source="t")
    return KIND.config_from_pool(resolved, pool_type="ecs", source="t")


def _payload_container(config: EcsConfig) -> str:
    """The name of the container the payload's run_task request overrides with the run's env."""
    overrides = KIND.build_payload(config, CTX)["run_task"]["overrides"]["containerOverrides"]
    return next(c["name"] for c in overrides if "command" in c)


def test_a_pool_run_carries_its_credentials_deadline_and_container() -> None:
    config = _pool({"image": "img:1", "aws_credentials": CREDS, "vpc_id": "vpc-1", "container_name": "flow"})
    runtime = KIND.runtime(config)
    assert runtime == EcsRuntime(
        aws_credentials=CREDS,
        vpc_id="vpc-1",
        container_name="flow",
        task_start_timeout_seconds=300.0,
        auto_deregister_task_definition=False,
    )
    assert runtime.aws_credentials == CREDS
    assert "do-not-print" not in repr(runtime)


def test_the_container_is_the_one_the_payload_names() -> None:
    definition = {
        "containerDefinitions": [{"name": "main", "image": "img:1", "memory": 512}, {"name": "sidecar"}]
    }
    config = _pool({}, task_definition=definition)
    assert KIND.runtime(config).container_name == _payload_container(config) == "main"
    arn = _pool(
        {},
        task_definition=definition,
        task_run_request={"taskDefinition": "arn:aws:ecs:eu-west-1:1:task-definition/x:3"},
    )
    assert KIND.runtime(arn).container_name == _payload_container(arn) == "prefect"


def test_a_block_keeps_its_own_defaults() -> None:
    config = KIND.config_from_block({"image": "img:1", "aws_credentials": CREDS}, source="block")
    runtime = KIND.runtime(config)
    assert runtime.auto_deregister_task_definition is True
    assert runtime.task_start_timeout_seconds == 120.0
    assert runtime.container_name == "prefect" and runtime.aws_credentials == CREDS
