"""moto as an ECS/EC2 double, in the test process so tests can decide how tasks end.

moto has no HTTP hook for ECS task results, so the server runs as a `ThreadedMotoServer`
here and tests mutate its backend models directly (moto internals, pinned to moto 5.2.x;
/work/shared/reference/test-doubles.md §1). Quirks handled here: container memory is
required even on Fargate (the caller adds it), awsvpc needs DNS hostnames on the VPC, and
the task state manager is frozen so tasks stay RUNNING until a test ends them.

Where moto departs from what the ECS API reference says, the calls the backend relies on
are made to behave as documented (`_as_documented`, installed with the server):
* RunTask is idempotent by `clientToken` within a cluster: the same token with the same
  parameters returns the original tasks, with other parameters a ConflictException (moto
  ignores the token and starts another task); `startedBy` takes up to 36 letters, digits,
  `-`, `/` and `_`; a task has its `createdAt`;
* a task has one container per container definition (moto: only the first), with no
  `exitCode` until it stops (moto: 0 from the start), so sidecars and "no exit code" are real;
* StopTask gives the task `stopCode` UserInitiated and its running containers exit 143
  (SIGTERM, `docker stop`); on a task already STOPPED it changes nothing (moto overwrote the
  reason), so a stop that races the task's own end leaves that end readable;
* `lose_next_run_task_answer()`: the next RunTask starts its task, then answers 500 (a
  lost answer), so a retry with the same `clientToken` must get the same task back;
* ListTasks lists desiredStatus RUNNING when no status is given (moto: every task),
  refuses `startedBy` with another filter, and pages at `maxResults` (default 100) with a
  `nextToken` (moto: one page).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import httpx

from agent.backends.base import Job
from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.ecs import EcsKind
from agent.infra.spec import RunContext

__all__ = [
    "ACCOUNT",
    "OOM_REASON",
    "REGION",
    "MotoEcs",
    "ecs_job",
    "ecs_template",
    "lose_next_run_task_answer",
    "moto_ecs",
]

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"

ACCOUNT = "123456789012"
REGION = "us-east-1"
_lock = threading.Lock()
_server: Any = None
_tokens: dict[tuple[str, str], tuple[str, list[Any]]] = {}  # (cluster, clientToken) -> (request, tasks)
_tokens_lock = threading.Lock()
_STARTED_BY = re.compile(r"[a-zA-Z0-9_/-]{1,36}")
_lose_next_answer = threading.Event()


def lose_next_run_task_answer() -> None:
    """The next RunTask commits its task, then fails with a 500 (its answer is lost)."""
    _lose_next_answer.set()


def ecs_template(start_timeout: int | None = None) -> dict[str, Any]:
    """The stock `ecs` base job template with the container memory moto needs (quirk 1)."""
    template = default_base_job_template("ecs")
    config = template["job_configuration"]
    config["task_definition"]["containerDefinitions"][0]["memory"] = 512
    if start_timeout is not None:
        config["task_start_timeout_seconds"] = start_timeout
    return template


def ecs_job(
    moto: MotoEcs,
    run_id: str,
    image: str,
    *,
    credentials: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Job:
    """The Job of `run_id` as an agent builds it (template, config, payload, runtime): any
    agent that rebuilds it from the run's pool and deployment gets the same one."""
    kind = EcsKind()
    variables = {"image": image, "aws_credentials": credentials or moto.credentials, "launch_type": "FARGATE"}
    resolved = resolve_job_configuration(ecs_template(), variables, None, source="reuse")
    config = kind.config_from_pool(resolved, pool_type="ecs", source="reuse")
    env = {"RUN": run_id} if env is None else env
    ctx = RunContext(run_id, run_id, deployment_id="dep-reuse", work_pool_name="reuse", env=env)
    return Job(run_id, run_id, "ecs", kind.build_payload(config, ctx), kind.runtime(config))


@dataclass
class MotoEcs:
    url: str
    region: str = REGION

    @property
    def env(self) -> dict[str, str]:
        """What an agent process needs to talk to this double through the default chain."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
        }

    @property
    def credentials(self) -> dict[str, Any]:
        """The same, as an AwsCredentials block's data."""
        return {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "region_name": self.region,
            "aws_client_parameters": {"endpoint_url": self.url},
        }

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def reset(self, cluster: str = "default") -> None:
        """Empty state, tasks frozen in RUNNING, `cluster` created, default VPC usable."""
        httpx.post(f"{self.url}/moto-api/reset").raise_for_status()
        with _tokens_lock:
            _tokens.clear()
        from moto.moto_api import state_manager

        state_manager.set_transition(
            model_name="ecs::task", transition={"progression": "manual", "times": 10**9}
        )
        self.client("ecs").create_cluster(clusterName=cluster)
        ec2 = self.client("ec2")
        for vpc in ec2.describe_vpcs()["Vpcs"]:
            ec2.modify_vpc_attribute(VpcId=vpc["VpcId"], EnableDnsHostnames={"Value": True})

    def vpc(self, cidr: str = "10.9.0.0/16") -> tuple[str, list[str], str]:
        """A non-default VPC with two subnets and a security group: (vpc, subnets, sg)."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        base = cidr.rsplit(".", 2)[0]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"{base}.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)
        ]
        sg = ec2.create_security_group(GroupName=f"sg-{vpc}", Description="t", VpcId=vpc)["GroupId"]
        return vpc, subnets, sg

    # -- moto's models, in process -----------------------------------------------------------

    @staticmethod
    def _backend() -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][REGION]

    def tasks(self) -> list[Any]:
        return [t for tasks in self._backend().tasks.values() for t in tasks.values()]

    def task(self, arn: str) -> Any:
        for task in self.tasks():
            if task.task_arn == arn:
                return task
        raise KeyError(arn)

    def task_definitions(self, family: str | None = None) -> list[Any]:
        found = [td for revisions in self._backend().task_definitions.values() for td in revisions.values()]
        return [td for td in found if family is None or td.family == family]

    def finish(
        self,
        arn: str,
        *,
        exit_code: int | None,
        reason: str | None = None,
        container: str | None = None,
        others_exit: int | None = 143,
    ) -> None:
        """The flow container exits with `exit_code` (and a container `reason`, e.g. OOM).

        `container`: the flow's container by name (default: every container exits so); the
        others (sidecars) are then stopped by ECS after the essential one: `others_exit`."""
        task = self.task(arn)
        task.last_status = task.desired_status = "STOPPED"
        task.stop_code, task.stopped_reason = "EssentialContainerExited", "Essential container in task exited"
        task.stopping_at = task.execution_stopped_at = task.stopped_at = dt.datetime.now(dt.UTC)
        for one in task.containers:
            ours = container is None or one.name == container
            one.last_status, one.exitCode = "STOPPED", exit_code if ours else others_exit
            if reason and ours:
                one.reason = reason

    def hold_pending(self, arn: str, *, reason: str) -> None:
        """The task stays PENDING (an image that cannot be pulled, no capacity, ...)."""
        task = self.task(arn)
        task.last_status = "PENDING"
        for container in task.containers:
            container.reason, container.last_status = reason, "PENDING"

    @contextlib.contextmanager
    def tasks_start_pending(self, reason: str) -> Iterator[None]:
        """Tasks started meanwhile never leave PENDING (moto starts them RUNNING)."""
        from moto.ecs.models import EC2ContainerServiceBackend

        original = EC2ContainerServiceBackend.run_task

        def run_task(backend: Any, *args: Any, **kwargs: Any) -> Any:
            tasks = original(backend, *args, **kwargs)
            for task in tasks:
                task.last_status = "PENDING"
                for container in task.containers:
                    container.reason = reason
            return tasks

        EC2ContainerServiceBackend.run_task = run_task  # type: ignore[method-assign]
        try:
            yield
        finally:
            EC2ContainerServiceBackend.run_task = original  # type: ignore[method-assign]


def _as_documented() -> None:
    """RunTask and ListTasks as the ECS API reference describes them (see the module doc)."""
    from moto.core.responses import ActionResult
    from moto.ecs.exceptions import ECSException, InvalidParameterException
    from moto.ecs.responses import EC2ContainerServiceResponse

    original = EC2ContainerServiceResponse.run_task

    def run_task(self: Any) -> Any:
        result = original(self)
        for task in result.result["tasks"]:
            task.created_at = dt.datetime.now(dt.UTC)
            _every_container(self.ecs_backend, task)
        return result

    def idempotent_run_task(self: Any) -> Any:
        started_by = self._get_param("startedBy")
        if started_by is not None and not _STARTED_BY.fullmatch(started_by):
            raise InvalidParameterException("startedBy: up to 36 letters, numbers, -, / and _")
        token = self._get_param("clientToken")
        if not token:
            return run_task(self)
        key = (str(self._get_param("cluster", "default")).rsplit("/", 1)[-1], token)
        request = json.dumps(
            {k: v for k, v in json.loads(self.body).items() if k != "clientToken"}, sort_keys=True
        )
        with _tokens_lock:
            if key in _tokens:
                if _tokens[key][0] != request:
                    raise ECSException("ConflictException", "the client token was used with other parameters")
                return ActionResult({"tasks": _tokens[key][1], "failures": []})
            result = run_task(self)
            _tokens[key] = (request, list(result.result["tasks"]))
        if _lose_next_answer.is_set():
            _lose_next_answer.clear()
            raise ECSException("ServerException", "injected: the task was started, the answer is lost")
        return result

    def documented_list_tasks(self: Any) -> Any:
        filters = [self._get_param(name) for name in ("containerInstance", "family", "serviceName")]
        started_by = self._get_param("startedBy")
        if started_by and (any(filters) or self._get_param("launchType")):
            raise InvalidParameterException("startedBy must be the only filter")
        desired = self._get_param("desiredStatus") or "RUNNING"
        cluster = self._get_param("cluster", "default")
        arns = [
            t.task_arn
            for t in self.ecs_backend.list_tasks(cluster, *filters[:2], started_by, filters[2], desired)
        ]
        size = min(int(self._get_param("maxResults") or 100), 100)
        start = int(self._get_param("nextToken") or 0)
        page: dict[str, Any] = {"taskArns": arns[start : start + size]}
        if start + size < len(arns):
            page["nextToken"] = str(start + size)
        return ActionResult(page)

    original_stop = EC2ContainerServiceResponse.stop_task

    def documented_stop_task(self: Any) -> Any:
        cluster = str(self._get_param("cluster", "default")).rsplit("/", 1)[-1]
        wanted = str(self._get_param("task")).rsplit("/", 1)[-1]
        for arn, task in self.ecs_backend.tasks.get(cluster, {}).items():
            if arn.endswith(wanted) and task.last_status == "STOPPED":
                return ActionResult({"task": task})  # already ended: nothing changes
        result = original_stop(self)
        task = result.result["task"]
        task.stop_code = "UserInitiated"
        task.stopping_at = task.execution_stopped_at = task.stopped_at = dt.datetime.now(dt.UTC)
        for container in task.containers:
            if container.last_status == "RUNNING":
                container.exitCode = 143
            container.last_status = "STOPPED"
        return result

    EC2ContainerServiceResponse.run_task = idempotent_run_task  # type: ignore[method-assign]
    EC2ContainerServiceResponse.stop_task = documented_stop_task  # type: ignore[method-assign]
    EC2ContainerServiceResponse.list_tasks = documented_list_tasks  # type: ignore[method-assign]


def _every_container(backend: Any, task: Any) -> None:
    """One container per definition, none with an exit code yet (moto: the first, exit 0)."""
    from moto.ecs.models import Container

    definition = backend.describe_task_definition(task.task_definition_arn)
    reason = getattr(task.containers[0], "reason", None) if task.containers else None
    containers = []
    for spec in definition.container_definitions:
        container = Container(definition)
        container.name, container.image = spec.get("name"), spec.get("image")
        container.memory, container.cpu = spec.get("memory"), spec.get("cpu", 0)
        container.environment, container.command = spec.get("environment"), spec.get("command")
        container.exitCode = None
        container.last_status = "RUNNING" if task.last_status == "RUNNING" else "PENDING"
        if reason:
            container.reason = reason
        containers.append(container)
    task.containers = containers


def moto_ecs() -> MotoEcs:
    """The session's moto server (started on first use; it dies with the test process)."""
    global _server
    with _lock:
        if _server is None:
            from moto.server import ThreadedMotoServer

            _as_documented()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            _server = server
        host, port = _server.get_host_and_port()
    return MotoEcs(f"http://{host}:{port}")
