"""ECS: prefect-aws 0.7.12's ECSWorker against flow-agent, five job-variable sets."""

from __future__ import annotations

from typing import Any

import pytest
from prefect_aws.workers.ecs_worker import ECSWorker

from fidelity.harness import REFERENCED_ENV, REGION, Case, World, assert_same, block_ref, both_sides

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flows:2026.12"
# Filled at launch by flow-agent's ECS backend, from the cloud, where Prefect's worker fills
# them while it builds the request:
LAUNCH = {
    # the subnets of vpc_id (or the default VPC): an EC2 look-up at launch
    "run_task.networkConfiguration.awsvpcConfiguration.subnets": "EC2 DescribeSubnets at launch",
    # flow-agent's own: how it finds the run's task after a restart (README)
    "run_task.startedBy": "flow-agent marks the task with the flow run id",
}
# what DescribeTaskDefinition answers for an existing ARN (the cloud boundary)
DESCRIBED = {
    "family": "etl",
    "networkMode": "awsvpc",
    "requiresCompatibilities": ["FARGATE"],
    "containerDefinitions": [{"name": "prefect", "image": "flows:1"}],
}


async def _finish(config: Any, *, flow_run: Any, pool: Any, **_: Any) -> dict[str, Any]:
    worker = ECSWorker(work_pool_name=pool.name)
    # the cloud boundary: EC2's view of the VPC (subnets are filled at launch on both sides)
    skeleton = {"subnets": [], "assignPublicIp": "ENABLED", "securityGroups": []}
    worker._load_network_configuration = lambda vpc_id, configuration: {"awsvpcConfiguration": skeleton}
    worker._custom_network_configuration = lambda vpc_id, network, configuration: {
        "awsvpcConfiguration": network
    }
    arn = config.task_run_request.get("taskDefinition")
    task_definition = None
    if not arn:
        # the ECS client's region: its credentials' region, else the environment's (boundary)
        region = config.aws_credentials.region_name or REGION
        task_definition = worker._prepare_task_definition(config, region=region, flow_run=flow_run)
        arn = task_definition["family"]  # flow-agent names the family; the ARN comes at registration
    # as for a definition it has just registered (the first run of a deployment)
    registered = task_definition is not None
    request = worker._prepare_task_run_request(config, task_definition or DESCRIBED, arn, registered)
    # the one listed difference in the tags (README): Prefect's observer deregisters a definition
    # whose task carries this tag; flow-agent retires superseded revisions itself instead
    deregister = {"key": "prefect.io/degregister-task-definition", "value": "true"}
    if config.auto_deregister_task_definition and registered:
        request["tags"].remove(deregister)
    return {"task_definition": task_definition, "run_task": request}


CASES = [
    Case("defaults", {"image": IMAGE}),
    Case(
        "every-variable",
        {
            "image": IMAGE,
            "name": "etl-{{ ctx.flow.name }}",
            "env": {"TEAM": "data", "EMPTY": "", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data", "cost center": "42"},
            "command": "python -m prefect.engine --verbose",
            "cluster": "prod",
            "family": "etl-family",
            "launch_type": "FARGATE_SPOT",
            "cpu": 2048,
            "memory": 4096,
            "container_name": "flow",
            "task_role_arn": "arn:aws:iam::123456789012:role/task",
            "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
            "vpc_id": "vpc-123",
            "network_configuration": {
                "subnets": ["subnet-1"],
                "securityGroups": ["sg-1"],
                "assignPublicIp": "DISABLED",
            },
            "configure_cloudwatch_logs": True,
            "cloudwatch_logs_options": {"awslogs-group": "flows"},
            "cloudwatch_logs_prefix": "etl",
            "auto_deregister_task_definition": True,
            "match_latest_revision_in_family": True,
            "prefect_api_auth_string_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:auth",
        },
        allowed={
            # the region of the credentials (eu-west-1 here) vs the worker's client region
            "task_definition.containerDefinitions[0].logConfiguration.options.awslogs-region": (
                "the backend adds its session's region at launch when no credentials say one"
            ),
        },
    ),
    Case(
        "block-references",
        {
            "image": IMAGE,
            "env": REFERENCED_ENV,
        },
        template_edits=[
            (("variables", "properties", "aws_credentials", "default"), block_ref("fid-aws")),
            (("variables", "properties", "configure_cloudwatch_logs", "default"), True),
            (("variables", "properties", "execution_role_arn", "default"), "arn:aws:iam::1:role/exec"),
        ],
    ),
    Case(
        "run-overrides",
        {"image": IMAGE, "env": {"A": "deployment", "B": "deployment"}, "cpu": 512, "memory": 1024},
        run_vars={"env": {"B": "run", "C": "run"}, "memory": 2048, "labels": {"run": "yes"}},
    ),
    Case(
        "customized-template",
        {"image": IMAGE, "env": {"PYTHONUNBUFFERED": "1"}},
        template_edits=[
            (("job_configuration", "task_run_request", "enableExecuteCommand"), True),
            (("job_configuration", "task_run_request", "tags"), [{"key": "owner", "value": "platform"}]),
            (
                ("job_configuration", "task_definition", "runtimePlatform"),
                {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
            ),
        ],
    ),
    Case(
        "existing-task-definition",
        {"task_definition_arn": "arn:aws:ecs:us-east-1:1:task-definition/etl:7", "cluster": "prod"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_ecs_request_matches_prefects_worker(world: World, case: Case) -> None:
    sides = await both_sides(world, ECSWorker, "ecs", case, _finish)
    assert_same(sides, {**LAUNCH, **case.allowed})
