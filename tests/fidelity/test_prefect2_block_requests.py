"""Prefect 2 infrastructure blocks: the request each block becomes, against flow-agent's payload.

For each block type, one block with its defaults and one with every field set; the expected
request is written from the 2.x source at the versions pinned in test_prefect2_blocks.py
(prefect 2.20.25, prefect-aws 0.4.14, prefect-gcp 0.5.8, prefect-azure 0.3.7), each part cited
by line. Both sides get the same run: the env and labels Prefect 2's agent gave a run
(`prepare_for_flow_run`, prefect base.py:232-262). A difference is either filled at launch
(listed where it is taken out, with why) or a row of README's table "Where flow-agent
differs from Prefect's workers" (checked).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from azure.mgmt.containerinstance import models as aci_models
from support.golden import render_payload

from agent.infra.aci import AciKind
from agent.infra.cloud_run import CloudRunKind
from agent.infra.ecs import EcsKind
from agent.infra.kubernetes import KubernetesKind
from agent.infra.process import ProcessKind
from agent.infra.spec import RunContext
from fidelity.test_prefect2_blocks import PREFECT2, README

# -- the request: ECSTask (prefect-aws v0.4.14 prefect_aws/ecs.py) --------------------------------
#
# The task definition is `_prepare_task_definition` (:1373-1458), the RunTask request
# `_prepare_task_run` (:1548-1593) with `_prepare_task_run_overrides` (:1460-1500), for a block
# `prepare_for_flow_run` made ready (:602-634, prefect base.py:232-262): family
# `prefect__<flow>__<deployment>` slugified, `name` the block's or the run's, labels the run's
# then the block's, env `{**agent settings, PREFECT__FLOW_RUN_ID, **block env}`, None unsets.
#
# Filled at run time, on both sides from the same run: the run's env and labels (given here as
# Prefect 2's agent gave them, so the block's part of the request is what is compared).
RUN_ID = "0c5b6a4e-1111-4222-8333-444455556666"
RUN_ENV = {"PREFECT_API_URL": "https://api.example/api", "PREFECT_API_KEY": "pnu_fidelity"}
RUN_LABELS = {  # base.py:289-325, in prepare_for_flow_run's order
    "prefect.io/flow-run-id": RUN_ID,
    "prefect.io/flow-run-name": "crimson-fox",
    "prefect.io/version": "3.8.8",
    "prefect.io/deployment-name": "daily",
    "prefect.io/deployment-updated": "2026-12-01T10:00:00+00:00",
    "prefect.io/flow-name": "ETL Flow",
}
ECS_LAUNCH = {
    # 2.x: EC2 DescribeSubnets of `vpc_id` or the default VPC while it builds the request
    # (ecs.py:911-912); flow-agent: the same look-up at launch (backends/ecs)
    ("run_task", "networkConfiguration", "awsvpcConfiguration", "subnets"),
    # README "ECS `startedBy`": how a restarted agent finds the run's task
    ("run_task", "startedBy"),
}
ECS_DEFAULT_BLOCK = {"type": "ecs-task", "image": "registry/flows:2"}
ECS_FULL_BLOCK = {
    "type": "ecs-task",
    "aws_credentials": {"region_name": "eu-west-1"},
    "task_definition": {
        "family": "from-definition",
        "containerDefinitions": [{"name": "prefect", "essential": True}],
    },
    "family": "etl",
    "image": "registry/flows:2",
    "auto_deregister_task_definition": False,
    "cpu": 512,
    "memory": 1024,
    "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
    "configure_cloudwatch_logs": True,
    "cloudwatch_logs_options": {"awslogs-group": "flows"},
    "stream_output": True,
    "launch_type": "FARGATE_SPOT",
    "vpc_id": "vpc-0a1b",
    "cluster": "prod",
    "task_role_arn": "arn:aws:iam::123456789012:role/task",
    "env": {"EXTRA": "1", "PREFECT_API_KEY": None},
    "labels": {"owner": "ml team"},
    "name": "nightly",
    "command": ["python", "-m", "flows.etl"],
    "task_customizations": [{"op": "add", "path": "/propagateTags", "value": "TASK_DEFINITION"}],
    "task_start_timeout_seconds": 60,
    "task_watch_poll_interval": 2.0,
}


def _run_context() -> RunContext:
    # the env in Prefect 2's order: the agent's settings, then the run id (base.py:253)
    return RunContext(
        flow_run_id=RUN_ID,
        flow_run_name="crimson-fox",
        deployment_name="daily",
        env={**RUN_ENV, "PREFECT__FLOW_RUN_ID": RUN_ID},
        labels=RUN_LABELS,
    )


def _env(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _tags(extra: dict[str, str]) -> list[dict[str, str]]:
    # slugify(..., regex_pattern=_TAG_REGEX, lowercase=False): spaces become "-", case kept
    labels = {**RUN_LABELS, "prefect.io/flow-name": "ETL-Flow", **extra}
    return [{"key": key, "value": value} for key, value in labels.items()]


ECS_EXPECTED_DEFAULT = {
    "task_definition": {
        # :1380-1387 the `prefect` container, the image
        "containerDefinitions": [{"name": "prefect", "image": "registry/flows:2"}],
        # prepare_for_flow_run :620, slugified :1407-1412
        "family": "prefect__etl-flow__daily",
        # :1415-1431 ECS_DEFAULT_CPU / ECS_DEFAULT_MEMORY (:165-166) as strings for FARGATE
        "cpu": "1024",
        "memory": "2048",
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
    },
    "run_task": {
        "overrides": {
            "containerOverrides": [
                {
                    "name": "prefect",
                    "environment": _env(
                        ("PREFECT_API_URL", "https://api.example/api"),
                        ("PREFECT_API_KEY", "pnu_fidelity"),
                        ("PREFECT__FLOW_RUN_ID", RUN_ID),
                    ),
                    # `command or _base_flow_run_command()`: see ROW_ENGINE_COMMAND
                    "command": ["prefect", "flow-run", "execute"],
                }
            ]
        },
        "tags": _tags({}),
        "taskDefinition": "prefect__etl-flow__daily",
        "launchType": "FARGATE",
        "networkConfiguration": {"awsvpcConfiguration": {"assignPublicIp": "ENABLED", "securityGroups": []}},
    },
}
ECS_EXPECTED_FULL = {
    "task_definition": {
        "containerDefinitions": [
            {
                "name": "prefect",
                "essential": True,
                "image": "registry/flows:2",
                # :1395-1405, the options given last; the region is the ECS client's
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-create-group": "true",
                        "awslogs-group": "flows",
                        "awslogs-region": "eu-west-1",
                        "awslogs-stream-prefix": "nightly",
                    },
                },
            }
        ],
        "family": "etl",  # the block's family before the definition's (:1407)
        "cpu": "512",
        "memory": "1024",
        "requiresCompatibilities": ["FARGATE"],  # FARGATE_SPOT runs on Fargate (:1418)
        "networkMode": "awsvpc",
        "executionRoleArn": "arn:aws:iam::123456789012:role/exec",  # :1446-1447
    },
    "run_task": {
        "overrides": {
            "containerOverrides": [
                {
                    "name": "prefect",
                    # PREFECT_API_KEY: None unsets the agent's
                    "environment": _env(
                        ("PREFECT_API_URL", "https://api.example/api"),
                        ("PREFECT__FLOW_RUN_ID", RUN_ID),
                        ("EXTRA", "1"),
                    ),
                    "command": ["python", "-m", "flows.etl"],
                    "memory": 1024,
                    "cpu": 512,
                }
            ],
            "executionRoleArn": "arn:aws:iam::123456789012:role/exec",
            "taskRoleArn": "arn:aws:iam::123456789012:role/task",
            "memory": "1024",
            "cpu": "512",
        },
        "tags": _tags({"owner": "ml-team"}),
        "taskDefinition": "etl",
        "cluster": "prod",
        "capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
        "networkConfiguration": {"awsvpcConfiguration": {"assignPublicIp": "ENABLED", "securityGroups": []}},
        # task_customizations, applied last (:1592)
        "propagateTags": "TASK_DEFINITION",
    },
}
ROW_ENGINE_COMMAND = (
    "| Prefect 2 container blocks (`ECSTask`, `KubernetesJob`, `CloudRunJob`, ACI): `command` unset |"
)


def _without(payload: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    payload = copy.deepcopy(payload)
    for path in paths:
        node = payload
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return payload


@pytest.mark.parametrize(
    ("block", "expected"),
    [(ECS_DEFAULT_BLOCK, ECS_EXPECTED_DEFAULT), (ECS_FULL_BLOCK, ECS_EXPECTED_FULL)],
    ids=["defaults", "every-field"],
)
def test_ecs_task_request(block: dict[str, Any], expected: dict[str, Any]) -> None:
    kind = EcsKind()
    ctx = _run_context()
    config = kind.config_from_block(block, source="ecs-task block 'fidelity'")
    payload = render_payload(kind, config, ctx, field=config.customizations_field, source="fidelity")
    assert _without(payload, ECS_LAUNCH) == expected
    assert ROW_ENGINE_COMMAND in README.read_text(encoding="utf-8")


# -- the request: KubernetesJob (prefect 2.20.25 src/prefect/infrastructure/kubernetes.py) --------
#
# `build_job()` (:399-404): the block's `job` (default `base_job_manifest()`), then
# `_shortcut_customizations()` (:491-598), then `customizations`. The namespace defaults to
# "default" (`default_namespace`, :208-210). Label keys and values are slugified
# (:829-900, python-slugify lowercases), env is `_get_environment_variables()` (:902-920),
# the name `_slugify_name(name) + "-"` (:799-827) with `name` the block's or the run's.
BASE_JOB = PREFECT2["kubernetes-job"]["job"][1]  # base_job_manifest(), :226-248
K8S_FULL_BLOCK = {
    "type": "kubernetes-job",
    "image": "registry/flows:2",
    "namespace": "prefect",
    "service_account_name": "flow-runner",
    "image_pull_policy": "Always",
    "cluster_config": None,
    "job": copy.deepcopy(BASE_JOB),
    "customizations": [{"op": "add", "path": "/spec/backoffLimit", "value": 0}],
    "job_watch_timeout_seconds": 600,
    "pod_watch_timeout_seconds": 30,
    "stream_output": False,
    "finished_job_ttl": 60,
    "labels": {"team": "Data"},
    "env": {"EXTRA": "1", "PREFECT_API_KEY": None},
    "name": "Nightly ETL",
    "command": ["python", "-m", "flows.etl"],
}
K8S_DEFAULT_BLOCK = {"type": "kubernetes-job", "image": "registry/flows:2"}
# the run's labels as Prefect 2 slugified them: lowercased, ":" and "+" become "-"
K8S_RUN_LABELS = {
    "prefect.io/flow-run-id": RUN_ID,
    "prefect.io/flow-run-name": "crimson-fox",
    "prefect.io/version": "3.8.8",
    "prefect.io/deployment-name": "daily",
    "prefect.io/deployment-updated": "2026-12-01t10-00-00-00-00",
    "prefect.io/flow-name": "etl-flow",
}


def _k8s_job(*, namespace: str, labels: dict[str, str], container: dict[str, Any], generate: str) -> dict:
    job = copy.deepcopy(BASE_JOB)
    labels = {**K8S_RUN_LABELS, **labels}
    job["metadata"] = {"labels": labels, "namespace": namespace, "generateName": generate}
    job["spec"]["template"]["spec"]["containers"][0].update(container)
    return job


K8S_EXPECTED_DEFAULT = _k8s_job(
    namespace="default",
    labels={},
    container={
        "image": "registry/flows:2",
        "env": _env(
            ("PREFECT_API_URL", "https://api.example/api"),
            ("PREFECT_API_KEY", "pnu_fidelity"),
            ("PREFECT__FLOW_RUN_ID", RUN_ID),
        ),
        # `command or _base_flow_run_command()`: see ROW_ENGINE_COMMAND
        "args": ["prefect", "flow-run", "execute"],
    },
    generate="crimson-fox-",
)
K8S_EXPECTED_FULL = _k8s_job(
    namespace="prefect",
    labels={"team": "data"},
    container={
        "image": "registry/flows:2",
        "env": _env(
            ("PREFECT_API_URL", "https://api.example/api"),
            ("PREFECT__FLOW_RUN_ID", RUN_ID),
            ("EXTRA", "1"),
        ),
        "imagePullPolicy": "Always",
        "args": ["python", "-m", "flows.etl"],
    },
    generate="nightly-etl-",
)
K8S_EXPECTED_FULL["spec"]["template"]["spec"]["serviceAccountName"] = "flow-runner"
K8S_EXPECTED_FULL["spec"]["ttlSecondsAfterFinished"] = 60
K8S_EXPECTED_FULL["spec"]["backoffLimit"] = 0  # the customization, applied last
ROW_K8S_LABELS = "| Prefect 2 `KubernetesJob` block: labels |"
ROW_K8S_RUN_METADATA = "| Prefect 2 `KubernetesJob` block: what every Job carries |"


def _as_prefect2_sees_it(job: dict[str, Any]) -> dict[str, Any]:
    """flow-agent's Job with the listed differences taken back out, each checked on the way."""
    job = copy.deepcopy(job)
    metadata, template = job["metadata"], job["spec"]["template"]
    # ROW_K8S_LABELS: the run's and the block's labels on the pod template too, case kept
    assert template.pop("metadata")["labels"] == metadata["labels"]
    # ROW_K8S_RUN_METADATA: prefect-kubernetes's `app.kubernetes.io/*` labels, empty
    # annotations and the engine's SIGTERM behaviour, as on a pool's Job
    assert metadata.pop("annotations") == {}
    labels = {k: v for k, v in metadata["labels"].items() if not k.startswith("app.kubernetes.io/")}
    assert len(labels) == len(metadata["labels"]) - 4
    metadata["labels"] = {k: v.lower() for k, v in labels.items()}
    container = template["spec"]["containers"][0]
    sigterm = [e for e in container["env"] if e["name"] == "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]
    assert len(sigterm) == 1
    container["env"].remove(sigterm[0])
    return job


@pytest.mark.parametrize(
    ("block", "expected"),
    [(K8S_DEFAULT_BLOCK, K8S_EXPECTED_DEFAULT), (K8S_FULL_BLOCK, K8S_EXPECTED_FULL)],
    ids=["defaults", "every-field"],
)
def test_kubernetes_job_manifest(block: dict[str, Any], expected: dict[str, Any]) -> None:
    kind = KubernetesKind()
    config = kind.config_from_block(block, source="kubernetes-job block 'fidelity'")
    payload = render_payload(kind, config, _run_context(), field="customizations", source="fidelity")
    # the namespace the Job is created in (2.x: `create_namespaced_job(self.namespace, ...)`, :796)
    assert payload["namespace"] == expected["metadata"]["namespace"]
    assert _as_prefect2_sees_it(payload["job"]) == expected
    text = README.read_text(encoding="utf-8")
    assert ROW_K8S_LABELS in text and ROW_K8S_RUN_METADATA in text and ROW_ENGINE_COMMAND in text


# -- the request: CloudRunJob (prefect-gcp v0.5.8 prefect_gcp/cloud_run.py) -----------------------
#
# `_jobs_body()` (:672-713) with `_add_container_settings` (:798-811: env, resources, command,
# args), `_add_resources` (:825-840, `_cpu_as_k8s_quantity` :487-492, `memory_string`
# :349-353), `_add_env` (:842-852: `{**agent settings, **env}`), `_add_command` (:819-823:
# `command`, which prepare_for_flow_run filled); created with `Job.create(namespace=
# credentials.project)` (:560-562) at `https://<region>-run.googleapis.com` (:789).
CR_IMAGE = "us-docker.pkg.dev/my-proj/flows/etl:2"
CR_DEFAULT_BLOCK = {
    "type": "cloud-run-job",
    "image": CR_IMAGE,
    "region": "us-central1",
    "credentials": {"project": "my-proj"},
}
CR_FULL_BLOCK = {
    **CR_DEFAULT_BLOCK,
    "cpu": 2,
    "memory": 4,
    "memory_unit": "Gi",
    "vpc_connector_name": "conn",
    "args": ["--verbose"],
    "keep_job": True,
    "timeout": 1200,
    "max_retries": 0,
    "env": {"EXTRA": "1"},
    "labels": {"team": "Data"},
    "name": "nightly",
    "command": ["python", "-m", "flows.etl"],
}


def _cloud_run_body(container: dict[str, Any], *, annotations: dict[str, str], task: dict[str, Any]) -> dict:
    return {
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {},  # `name` below
        "spec": {
            "template": {
                "metadata": {"annotations": {"run.googleapis.com/launch-stage": "BETA", **annotations}},
                "spec": {"template": {"spec": {"containers": [{"image": CR_IMAGE, **container}], **task}}},
            }
        },
    }


CR_EXPECTED_DEFAULT = _cloud_run_body(
    {
        "env": _env(
            ("PREFECT_API_URL", "https://api.example/api"),
            ("PREFECT_API_KEY", "pnu_fidelity"),
            ("PREFECT__FLOW_RUN_ID", RUN_ID),
        ),
        "command": ["prefect", "flow-run", "execute"],  # see ROW_ENGINE_COMMAND
    },
    annotations={},
    task={"timeoutSeconds": "600", "maxRetries": 3},
)
CR_EXPECTED_FULL = _cloud_run_body(
    {
        "env": _env(
            ("PREFECT_API_URL", "https://api.example/api"),
            ("PREFECT_API_KEY", "pnu_fidelity"),
            ("PREFECT__FLOW_RUN_ID", RUN_ID),
            ("EXTRA", "1"),
        ),
        "resources": {
            "limits": {"cpu": "2000m", "memory": "4Gi"},
            "requests": {"cpu": "2000m", "memory": "4Gi"},
        },
        "command": ["python", "-m", "flows.etl"],
        "args": ["--verbose"],
    },
    annotations={"run.googleapis.com/vpc-access-connector": "conn"},
    task={"timeoutSeconds": "1200", "maxRetries": 0},
)
ROW_CLOUD_RUN_NAME = "| Cloud Run job name (v2 `job_id`, v1 `metadata.name`) |"
ROW_CLOUD_RUN_LABELS = "| Prefect 2 `CloudRunJob` block: labels |"


@pytest.mark.parametrize(
    ("block", "expected"),
    [(CR_DEFAULT_BLOCK, CR_EXPECTED_DEFAULT), (CR_FULL_BLOCK, CR_EXPECTED_FULL)],
    ids=["defaults", "every-field"],
)
def test_cloud_run_job_body(block: dict[str, Any], expected: dict[str, Any]) -> None:
    kind = CloudRunKind()
    config = kind.config_from_block(block, source="cloud-run-job block 'fidelity'")
    payload = render_payload(kind, config, _run_context(), field="customizations", source="fidelity")
    assert (payload["parent"], payload["endpoint"]) == (
        "namespaces/my-proj",
        "https://us-central1-run.googleapis.com",
    )
    body = copy.deepcopy(payload["job"])
    # ROW_CLOUD_RUN_NAME: 2.x `job_name` (:331-346) is the image's third part (cut at 17) and
    # a random uuid4 hex; flow-agent's hex is derived from the run id
    assert re.fullmatch(r"flows-[0-9a-f]{32}", body["metadata"].pop("name"))
    # ROW_CLOUD_RUN_LABELS: 2.x sets no labels on the job; flow-agent the run's and the
    # block's, GCP-sanitized, on the job and its execution template
    labels = body["metadata"].pop("labels")
    assert body["spec"]["template"]["metadata"].pop("labels") == labels
    assert labels == {
        "prefect-io-flow-run-id": RUN_ID,
        "prefect-io-flow-run-name": "crimson-fox",
        "prefect-io-version": "3-8-8",
        "prefect-io-deployment-name": "daily",
        "prefect-io-deployment-updated": "2026-12-01t10-00-00-00-00",
        "prefect-io-flow-name": "etl-flow",
        **({"team": "data"} if block.get("labels") else {}),
    }
    # the container's keys in any order; the env in order
    assert body == expected
    text = README.read_text(encoding="utf-8")
    assert ROW_CLOUD_RUN_NAME in text and ROW_CLOUD_RUN_LABELS in text and ROW_ENGINE_COMMAND in text


# -- the request: Process (prefect 2.20.25 src/prefect/infrastructure/process.py) -----------------
#
# `run()` (:101-139): `run_process(command, stream_output, env=_get_environment_variables(),
# cwd=working_dir or a TemporaryDirectory)`; the env is `{**os.environ, **agent settings,
# **env}` without nulls (:238-245), the command `[sys.executable, "-m", "prefect.engine"]`
# (:247-248). Filled at launch on both sides: the temporary directory (flow-agent's process
# backend makes it when `cwd` is None); `os.environ` and `sys.executable` are the agent's.
AGENT_PYTHON = "/opt/venv/bin/python"
AGENT_ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/home/agent"}
PROCESS_DEFAULT_BLOCK = {"type": "process"}
PROCESS_FULL_BLOCK = {
    "type": "process",
    "env": {"EXTRA": "1", "HOME": None},
    "labels": {"team": "data"},  # 2.x uses them for nothing a process sees
    "name": "nightly",
    "command": ["python", "-m", "flows.etl"],
    "stream_output": False,
    "working_dir": "/srv/flows",
}
PROCESS_EXPECTED_DEFAULT = {
    # the same engine; README "Process start path" for when flow-agent picks the supervisor
    "command": [AGENT_PYTHON, "-m", "prefect.engine"],
    "env": {**AGENT_ENVIRON, **RUN_ENV, "PREFECT__FLOW_RUN_ID": RUN_ID},
    "cwd": None,  # a temporary directory, made at launch
    "stream_output": True,
}
PROCESS_EXPECTED_FULL = {
    "command": ["python", "-m", "flows.etl"],
    "env": {"PATH": "/usr/bin:/bin", **RUN_ENV, "PREFECT__FLOW_RUN_ID": RUN_ID, "EXTRA": "1"},
    "cwd": "/srv/flows",
    "stream_output": False,
}


@pytest.mark.parametrize(
    ("block", "expected"),
    [(PROCESS_DEFAULT_BLOCK, PROCESS_EXPECTED_DEFAULT), (PROCESS_FULL_BLOCK, PROCESS_EXPECTED_FULL)],
    ids=["defaults", "every-field"],
)
def test_process_launch(block: dict[str, Any], expected: dict[str, Any]) -> None:
    kind = ProcessKind(python=AGENT_PYTHON, base_env=AGENT_ENVIRON)
    config = kind.config_from_block(block, source="process block 'fidelity'")
    payload = render_payload(kind, config, _run_context(), field="customizations", source="fidelity")
    assert payload == expected
    assert list(payload["env"]) == list(expected["env"])  # later wins, in 2.x's order


# -- the request: AzureContainerInstanceJob (prefect-azure v0.3.7 container_instance.py) ----------
#
# `run()` (:344-364): `_configure_container()` (:544-587: env with PREFECT_API_KEY in
# `secure_value` (ENV_SECRETS, :123), the entrypoint before the command, resources
# :589-607) and `_configure_container_group()` (:609-671: identities, subnets, DNS, the
# registry's credentials :673-711, Linux, restart Never), sent with
# `container_groups.begin_create_or_update(resource_group_name, container.name, group)`.
# The expected body is built here with the same Azure SDK models, the way that code builds
# them, and serialised by the SDK as its client would send it. Filled at launch on both
# sides: `location` (2.x reads the resource group's; flow-agent's backend the same, once).
ACI_DEFAULT_BLOCK = {
    "type": "container-instance-job",
    "resource_group_name": "rg",
    "subscription_id": "sub-123",
    "image": "registry/flows:2",
}
ACI_IDENTITY = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
)
ACI_FULL_BLOCK = {
    **ACI_DEFAULT_BLOCK,
    "aci_credentials": None,
    "identities": [ACI_IDENTITY],
    "entrypoint": "/opt/entry.sh",
    "image_registry": {"username": "u", "password": "registry-pw", "registry_url": "reg.io", "reauth": True},
    "cpu": 2.0,
    "gpu_count": 1,
    "gpu_sku": "V100",
    "memory": 4.0,
    "subnet_ids": ["/subscriptions/s/subnets/a"],
    "dns_servers": ["10.0.0.1"],
    "stream_output": True,
    "env": {"EXTRA": "1"},
    "labels": {"team": "Data"},
    "name": "Nightly ETL",
    "command": ["python", "-m", "flows.etl"],
    "task_start_timeout_seconds": 100,
    "task_watch_poll_interval": 1.0,
}
ROW_ACI_TAGS = "| ACI tags |"
ROW_ACI_NAME = "| Prefect 2 `AzureContainerInstanceJob` block: container group name |"


def _aci_expected(block: dict[str, Any]) -> dict[str, Any]:
    """The 2.x code path, line for line, with the SDK's models (cited above)."""
    m = aci_models
    env = {**RUN_ENV, "PREFECT__FLOW_RUN_ID": RUN_ID, **block.get("env", {})}
    environment = [
        m.EnvironmentVariable(name=k, secure_value=v)
        if k == "PREFECT_API_KEY"
        else m.EnvironmentVariable(name=k, value=v)
        for k, v in env.items()
    ]
    gpu = m.GpuResource(count=block["gpu_count"], sku=block["gpu_sku"]) if block.get("gpu_count") else None
    requests = m.ResourceRequests(memory_in_gb=block.get("memory", 1.0), cpu=block.get("cpu", 1.0), gpu=gpu)
    # `command or _base_flow_run_command()` (see ROW_ENGINE_COMMAND), after the entrypoint
    command = [
        block.get("entrypoint", "/opt/prefect/entrypoint.sh"),
        *(block.get("command") or DEFAULT_ENGINE),
    ]
    container = m.Container(
        name="<name>",
        image=block["image"],
        command=command,
        resources=m.ResourceRequirements(requests=requests),
        environment_variables=environment,
    )
    registry = block.get("image_registry")
    group = m.ContainerGroup(
        location=None,
        identity=m.ContainerGroupIdentity(
            type="UserAssigned",
            user_assigned_identities={i: m.UserAssignedIdentities() for i in block["identities"]},
        )
        if block.get("identities")
        else None,
        containers=[container],
        os_type=m.OperatingSystemTypes.linux,
        restart_policy=m.ContainerGroupRestartPolicy.never,
        image_registry_credentials=[
            m.ImageRegistryCredential(
                server=registry["registry_url"], username=registry["username"], password=registry["password"]
            )
        ]
        if registry
        else None,
        subnet_ids=[m.ContainerGroupSubnetId(id=s) for s in block["subnet_ids"]]
        if block.get("subnet_ids")
        else None,
        dns_config=m.DnsConfiguration(name_servers=block["dns_servers"])
        if block.get("dns_servers")
        else None,
    )
    body: dict[str, Any] = group.serialize()
    return body


DEFAULT_ENGINE = ["prefect", "flow-run", "execute"]


@pytest.mark.parametrize("block", [ACI_DEFAULT_BLOCK, ACI_FULL_BLOCK], ids=["defaults", "every-field"])
def test_aci_container_group(block: dict[str, Any]) -> None:
    kind = AciKind()
    config = kind.config_from_block(block, source="container-instance-job block 'fidelity'")
    payload = render_payload(kind, config, _run_context(), field="customizations", source="fidelity")
    assert (payload["subscription_id"], payload["resource_group"]) == ("sub-123", "rg")
    body = copy.deepcopy(payload["container_group"])
    # ROW_ACI_NAME: 2.x `<slug of name or the run's name>-<10 random characters>` (:558-572)
    # for both; flow-agent Prefect 3's `<slug of the flow's name>-<flow run id>`
    name = f"etl-flow-{RUN_ID}"
    assert payload["container_group_name"] == name
    container = body["properties"]["containers"][0]
    assert container["name"] == name
    container["name"] = "<name>"
    # ROW_ACI_TAGS: the run's labels (and the block's) as tags; 2.x sets none
    tags = body.pop("tags")
    run_tags = {key.replace("/", "_"): value for key, value in RUN_LABELS.items()}
    assert tags == {**run_tags, **block.get("labels", {})}
    assert body == _aci_expected(block)
    text = README.read_text(encoding="utf-8")
    assert ROW_ACI_NAME in text and ROW_ACI_TAGS in text and ROW_ENGINE_COMMAND in text


# -- fields that shape the run, not the request ------------------------------------------------
# 2.x reads them while it runs the block (watch timeouts, polling, output, clean-up); the
# "every field" blocks above must hand them to flow-agent's typed config unchanged.
RUN_BEHAVIOUR = [
    (
        EcsKind(),
        ECS_FULL_BLOCK,
        {
            "stream_output": True,
            "task_start_timeout_seconds": 60,
            "task_watch_poll_interval": 2.0,
            "auto_deregister_task_definition": False,
        },
    ),
    (
        KubernetesKind(),
        K8S_FULL_BLOCK,
        {"stream_output": False, "job_watch_timeout_seconds": 600, "pod_watch_timeout_seconds": 30},
    ),
    (CloudRunKind(), CR_FULL_BLOCK, {"keep_job": True, "timeout": 1200}),
    (
        AciKind(),
        ACI_FULL_BLOCK,
        {"stream_output": True, "task_start_timeout_seconds": 100, "task_watch_poll_interval": 1.0},
    ),
]


@pytest.mark.parametrize(
    ("kind", "block", "expected"), RUN_BEHAVIOUR, ids=["ecs", "kubernetes", "cloud-run", "aci"]
)
def test_run_behaviour_fields_reach_the_config(
    kind: Any, block: dict[str, Any], expected: dict[str, Any]
) -> None:
    config = kind.config_from_block(block, source="block 'fidelity'")
    assert {name: getattr(config, name) for name in expected} == expected
    # the "every field" block sets every 2.x field of its type, but the one ECSTask forbids
    # beside `task_definition` (ecs.py:318-327; the ARN path is tests/golden/ecs/block-ec2-arn.json)
    slug = {"container-instance-job": "azure-container-instance-job"}.get(block["type"], block["type"])
    assert set(PREFECT2[slug]) - set(block) == ({"task_definition_arn"} if slug == "ecs-task" else set())
