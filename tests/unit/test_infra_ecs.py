"""The ECS kind: configs from a pool and from an ECSTask block, payloads against golden files.

Goldens live in tests/golden/ecs/; regenerate with `UPDATE_GOLDEN=1 pytest tests/unit` and
review the diff before committing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.golden import assert_golden, render_payload, run_context

from agent.infra import InfraError, default_base_job_template, resolve_job_configuration
from agent.infra.ecs import EcsConfig, EcsKind
from agent.infra.spec import RunContext
from agent.registry import REGISTRY

SOURCE = "deployment 'etl/daily'"
RUN_ID = "0c5b6a4e-1111-4222-8333-444455556666"
SECRET = "pnu_secret"
AWS_SECRET = "aws-secret-key-do-not-print"
CTX = run_context(
    RUN_ID,
    api_url="https://api.example/api",
    api_key=SECRET,
    labels={
        "prefect.io/flow-run-name": "crimson-fox",
        "prefect.io/flow-name": "ETL Flow",
        "prefect.io/deployment-name": "daily",
    },
    flow_id="f1d2e3c4-0000-4000-8000-000000000001",
    deployment_id="d1d2e3c4-0000-4000-8000-000000000002",
    deployment_name="daily",
    work_pool_name="prod pool",
    worker_name="agent-1",
)
CREDS = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": AWS_SECRET, "region_name": "eu-west-1"}
KIND = EcsKind()


def final(config: EcsConfig, ctx: RunContext = CTX) -> dict[str, Any]:
    """What the backend would send: the payload, then the customizations."""
    return render_payload(KIND, config, ctx, field=config.customizations_field, source="t")


def from_pool(
    dep: dict[str, Any] | None = None, run: dict[str, Any] | None = None, **template_extra: Any
) -> EcsConfig:
    template = default_base_job_template("ecs")
    template["job_configuration"].update(template_extra)
    resolved = resolve_job_configuration(template, dep, run, source=SOURCE)
    return KIND.config_from_pool(resolved, pool_type="ecs", source=SOURCE)


def pool_error(dep: dict[str, Any], **template_extra: Any) -> InfraError:
    with pytest.raises(InfraError) as info:
        from_pool(dep, **template_extra)
    return info.value


def block_error(data: dict[str, Any]) -> InfraError:
    with pytest.raises(InfraError) as info:
        KIND.config_from_block(data, source="ecs-task block 'prod'")
    return info.value


def env_of(run_task: dict[str, Any]) -> dict[str, str]:
    container = run_task["overrides"]["containerOverrides"][0]
    return {item["name"]: item["value"] for item in container["environment"]}


NETWORK_OPS = [
    {
        "op": "replace",
        "path": "/networkConfiguration/awsvpcConfiguration/subnets",
        "value": ["subnet-private-a"],
    },
    {"op": "add", "path": "/networkConfiguration/awsvpcConfiguration/securityGroups", "value": ["sg-0123"]},
    {
        "op": "replace",
        "path": "/networkConfiguration/awsvpcConfiguration/assignPublicIp",
        "value": "DISABLED",
    },
]


class TestKind:
    def test_identity(self) -> None:
        entry = REGISTRY.get(EcsKind.kind)  # the pool types and block slug are the registry's
        assert entry is not None
        assert (EcsKind.kind, entry.pool_types, entry.block_slug) == ("ecs", ("ecs",), "ecs-task")

    def test_template_has_prefects_variables(self) -> None:
        variables = default_base_job_template("ecs")["variables"]["properties"]
        expected = {"image", "cpu", "memory", "launch_type", "vpc_id", "network_configuration", "cluster"}
        assert expected <= variables.keys()


class TestFromPool:
    def test_stock_template(self) -> None:
        config = from_pool({"image": "registry/flows:1", "env": {"TEAM": "data"}})
        assert_golden("ecs", "pool-default", final(config))

    def test_every_variable(self) -> None:
        dep = {
            "image": "registry/flows:1",
            "cpu": 2048,
            "memory": 4096,
            "cluster": "prod",
            "family": "etl",
            "launch_type": "FARGATE_SPOT",
            "execution_role_arn": "arn:aws:iam::1:role/exec",
            "task_role_arn": "arn:aws:iam::1:role/task",
            "configure_cloudwatch_logs": True,
            "cloudwatch_logs_options": {"awslogs-group": "flows"},
            "vpc_id": "vpc-1",
            "network_configuration": {"subnets": ["subnet-a"], "assignPublicIp": "DISABLED"},
            "prefect_api_key_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:key",
            "labels": {"team": "data platform"},
            "command": "prefect flow-run execute --verbose",
            "aws_credentials": CREDS,
        }
        config = from_pool(dep, {"env": {"RUN": "1"}})
        payload = final(config)
        assert_golden("ecs", "pool-every-variable", payload)
        assert "PREFECT_API_KEY" not in env_of(payload["run_task"])  # comes from the secret ARN
        assert AWS_SECRET not in json.dumps(payload) and AWS_SECRET not in repr(config)

    def test_task_definition_arn_is_run_as_is(self) -> None:
        config = from_pool({"task_definition_arn": "arn:aws:ecs:eu-west-1:1:task-definition/etl:3"})
        payload = final(config)
        assert payload["task_definition"] is None
        assert payload["run_task"]["taskDefinition"] == "arn:aws:ecs:eu-west-1:1:task-definition/etl:3"
        assert_golden("ecs", "pool-task-definition-arn", payload)

    def test_ec2_without_awsvpc_has_no_network_configuration(self) -> None:
        run_task = final(from_pool({"image": "i", "launch_type": "EC2"}))["run_task"]
        assert "networkConfiguration" not in run_task and run_task["launchType"] == "EC2"

    def test_env_none_unsets_and_config_env_wins(self) -> None:
        env = env_of(
            final(from_pool({"image": "i", "env": {"PREFECT_API_KEY": None, "PREFECT_API_URL": "x"}}))[
                "run_task"
            ]
        )
        assert "PREFECT_API_KEY" not in env and env["PREFECT_API_URL"] == "x"
        assert env["PREFECT__FLOW_RUN_ID"] == RUN_ID

    def test_secret_only_in_env(self) -> None:
        payload = final(from_pool({"image": "i"}))
        assert env_of(payload["run_task"])["PREFECT_API_KEY"] == SECRET
        payload["run_task"]["overrides"]["containerOverrides"][0].pop("environment")
        assert SECRET not in json.dumps(payload)

    def test_customizations_variable(self) -> None:
        ops = [
            *NETWORK_OPS,
            {"op": "add", "path": "/task_definition/ephemeralStorage", "value": {"sizeInGiB": 50}},
        ]
        config = from_pool({"image": "i", "customizations": ops}, customizations="{{ customizations }}")
        payload = final(config)
        assert payload["task_definition"]["ephemeralStorage"] == {"sizeInGiB": 50}
        assert_golden("ecs", "pool-customized", payload)

    def test_unused_pool_fields_keep_defaults(self) -> None:
        config = from_pool({"image": "i"})
        assert (config.task_start_timeout_seconds, config.auto_deregister_task_definition) == (300, False)


class TestFromBlock:
    BLOCK = {
        "type": "ecs-task",
        "aws_credentials": CREDS,
        "image": "registry/flows:2",
        "cluster": "prod",
        "env": {"EXTRA": "1"},
        "labels": {"owner": "ml team"},
        "block_type_slug": "ecs-task",  # unknown extras are ignored
    }

    def test_defaults(self) -> None:
        config = KIND.config_from_block(self.BLOCK, source="ecs-task block 'prod'")
        assert (config.task_start_timeout_seconds, config.auto_deregister_task_definition) == (120, True)
        assert config.customizations_field == "task_customizations"
        payload = final(config)
        assert payload["task_definition"]["cpu"] == "1024" and payload["task_definition"]["memory"] == "2048"
        assert payload["task_definition"]["family"] == "prefect__etl-flow__daily"
        assert_golden("ecs", "block-default", payload)
        assert AWS_SECRET not in repr(config) and AWS_SECRET not in json.dumps(payload)
        assert AWS_SECRET not in json.dumps(config.model_dump())
        assert config.aws_credentials == CREDS  # kept for the backend

    def test_cloudwatch_logs_keep_the_task_definition_the_same_for_every_run(self) -> None:
        # a per-run value in the task definition would register a revision per run
        data = {**self.BLOCK, "configure_cloudwatch_logs": True, "execution_role_arn": "arn:role"}
        config = KIND.config_from_block(data, source="b")
        other_run = run_context(
            "9c5b6a4e-1111-4222-8333-444455556666",
            api_url="https://api.example/api",
            api_key=SECRET,
            flow_run_name="amber-owl",
            labels={**CTX.labels, "prefect.io/flow-run-name": "amber-owl"},
            flow_id=CTX.flow_id,
            deployment_id=CTX.deployment_id,
            deployment_name="daily",
            work_pool_name="prod pool",
        )
        first, second = final(config)["task_definition"], final(config, other_run)["task_definition"]
        assert first == second
        options = first["containerDefinitions"][0]["logConfiguration"]["options"]
        assert options["awslogs-stream-prefix"] == "daily"

    @pytest.mark.parametrize("as_string", [False, True])
    def test_announcement_network_customizations(self, as_string: bool) -> None:
        ops: Any = json.dumps(NETWORK_OPS) if as_string else NETWORK_OPS
        data = {**self.BLOCK, "vpc_id": "vpc-1", "task_customizations": ops}
        payload = final(KIND.config_from_block(data, source="ecs-task block 'prod'"))
        assert payload["run_task"]["networkConfiguration"] == {
            "awsvpcConfiguration": {
                "subnets": ["subnet-private-a"],
                "assignPublicIp": "DISABLED",
                "securityGroups": ["sg-0123"],
            }
        }
        assert_golden("ecs", "block-customized", payload)

    @pytest.mark.parametrize("op", NETWORK_OPS, ids=["subnets", "security-groups", "public-ip"])
    def test_each_network_case_alone_without_vpc(self, op: dict[str, Any]) -> None:
        data = {**self.BLOCK, "task_customizations": [op]}
        awsvpc = final(KIND.config_from_block(data, source="b"))["run_task"]["networkConfiguration"]
        assert awsvpc["awsvpcConfiguration"][op["path"].rsplit("/", 1)[1]] == op["value"]

    def test_ec2_with_memory_and_arn(self) -> None:
        data = {
            **self.BLOCK,
            "image": None,
            "task_definition_arn": "arn:aws:ecs:eu-west-1:1:task-definition/etl:3",
            "launch_type": "EC2",
            "cpu": 512,
            "memory": 1024,
        }
        payload = final(KIND.config_from_block(data, source="b"))
        assert payload["task_definition"] is None
        assert_golden("ecs", "block-ec2-arn", payload)

    def test_customization_failure_names_the_operation(self) -> None:
        data = {**self.BLOCK, "task_customizations": [{"op": "replace", "path": "/nope/x", "value": SECRET}]}
        with pytest.raises(InfraError, match=r"task_customizations\[0\].*replace") as info:
            final(KIND.config_from_block(data, source="b"))
        assert SECRET not in str(info.value)


class TestBadInput:
    def test_pool_needs_an_image(self) -> None:
        error = pool_error({})
        assert error.field == "image" and SOURCE in str(error) and "set image" in str(error)

    def test_block_needs_an_image(self) -> None:
        assert block_error({"cluster": "c"}).field == "image"

    def test_wrong_type_names_field_and_hides_env(self) -> None:
        error = pool_error({"image": "i", "env": {"TOKEN": ["pnu_secret"]}})
        assert "env.TOKEN" in str(error) and SOURCE in str(error) and SECRET not in str(error)

    def test_bad_launch_type(self) -> None:
        error = block_error({"image": "i", "launch_type": "LAMBDA"})
        assert error.field == "launch_type" and "FARGATE" in str(error)

    def test_bad_cpu(self) -> None:
        assert block_error({"image": "i", "cpu": "lots"}).field == "cpu"

    def test_credentials_never_echoed(self) -> None:
        error = block_error({"image": "i", "aws_credentials": AWS_SECRET})
        assert error.field == "aws_credentials" and AWS_SECRET not in str(error)

    def test_arn_with_image_is_refused(self) -> None:
        error = block_error({"image": "i", "task_definition_arn": "arn:aws:ecs:x"})
        assert error.field == "image" and "task_definition_arn" in str(error)

    def test_network_configuration_needs_vpc(self) -> None:
        assert pool_error({"image": "i", "network_configuration": {"subnets": ["s"]}}).field == "vpc_id"

    def test_logs_need_execution_role(self) -> None:
        assert pool_error({"image": "i", "configure_cloudwatch_logs": True}).field == "execution_role_arn"

    def test_unknown_container_name(self) -> None:
        custom = {"containerDefinitions": [{"name": "app", "image": "i"}]}
        error = pool_error({"container_name": "worker"}, task_definition=custom)
        assert error.field == "container_name" and "'worker'" in str(error)

    def test_customizations_must_be_operations(self) -> None:
        error = block_error({"image": "i", "task_customizations": "{not json"})
        assert error.field == "task_customizations"

    def test_not_a_mapping(self) -> None:
        with pytest.raises(InfraError):
            KIND.config_from_pool(["x"], pool_type="ecs", source=SOURCE)  # type: ignore[arg-type]
