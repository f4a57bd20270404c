"""The ECS backend: a flow run is one ECS task; `infrastructure_pid` is `cluster::taskArn`.

Launch: the task definition in the payload is reused or registered (taskdefs.py; a user's
task definition ARN is used as is), empty awsvpc subnets are filled from `vpc_id` or the
default VPC (only when the request, customizations applied, still has none), and
`RunTask` is sent with a client token, so a retry after a lost answer cannot start a
second task. `failures` in the answer fail the run with AWS's reason.

Wait: one loop for all tasks (watch.py). Outcome: the flow container's exit code; OOM
when its `reason` says OutOfMemoryError (even with exit code 0) or the code is 137;
`stopCode` and `stoppedReason` in the detail. Kill: `StopTask` with a reason; ECS sends
SIGTERM and SIGKILL after the container's `stopTimeout`, so `grace` is not ours to set.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

from agent.backends.base import Handle, InfrastructureNotFound, Job, LaunchError
from agent.backends.ecs.aws import Aws, AwsClients, retried
from agent.backends.ecs.taskdefs import TaskDefinitions
from agent.backends.ecs.watch import KILL_REASON, Watched, Watcher, task_outcome
from agent.infra.ecs_payload import container_name
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

if TYPE_CHECKING:
    from agent.backends import BackendOptions

__all__ = ["EcsBackend"]

_SUBNETS_TTL: Final = 600.0  # seconds a VPC's subnet list is reused


class EcsBackend:
    kind: ClassVar[str] = "ecs"
    remote: ClassVar[bool] = True

    def __init__(self, options: BackendOptions | None = None) -> None:
        interval = options.watch_interval if options is not None else 5.0
        self._clients = AwsClients()
        self._taskdefs = TaskDefinitions()
        self._watcher = Watcher(interval)
        self._subnets: dict[tuple[str, str], tuple[float, list[str]]] = {}

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, job: Job) -> Handle:
        try:
            return await self._launch(job)
        except InfrastructureNotFound as exc:  # a missing cluster or definition: the job's fault
            raise LaunchError(str(exc)) from None

    async def _launch(self, job: Job) -> Handle:
        config = job.config
        log = get_logger("agent.backends.ecs", flow_run_id=job.flow_run_id, ship=True)
        aws = await self._clients.get(getattr(config, "aws_credentials", None))
        td = job.payload.get("task_definition")
        td = _with_log_region(td, aws.region) if isinstance(td, Mapping) else None
        request = copy.deepcopy(dict(job.payload.get("run_task") or {}))
        deregister = bool(getattr(config, "auto_deregister_task_definition", False))
        if td is not None:
            request["taskDefinition"] = await self._taskdefs.resolve(
                aws, td, deregister_superseded=deregister
            )
        if not request.get("taskDefinition"):
            raise LaunchError(
                "no task definition: set task_definition_arn or an image for the task definition"
            )
        await self._fill_subnets(aws, request, getattr(config, "vpc_id", None))
        # one token for every retry of this launch: ECS starts at most one task for it
        request.setdefault("clientToken", uuid.uuid4().hex)
        task = await self._run_task(aws, request, td, deregister)
        cluster, arn = (
            str(task.get("clusterArn") or request.get("cluster") or "default"),
            str(task["taskArn"]),
        )
        handle = Handle(self.kind, f"{cluster}::{arn}", job.flow_run_id)
        log.info("created ECS task", task=arn, task_definition=task.get("taskDefinitionArn"))
        self._watcher.add(
            Watched(
                handle.pid,
                aws,
                cluster,
                arn,
                container=container_name(config, td) if config is not None else None,
                start_timeout=float(getattr(config, "task_start_timeout_seconds", 0) or 0),
                flow_run_id=job.flow_run_id,
            )
        )
        return handle

    async def _run_task(
        self, aws: Aws, request: dict[str, Any], td: Mapping[str, Any] | None, deregister: bool
    ) -> dict[str, Any]:
        try:
            answer = await retried("starting the ECS task", aws.ecs.run_task, **request)
        except LaunchError as exc:
            # a cached revision deregistered meanwhile (by a person, or another agent's cleanup)
            if td is None or "inactive" not in str(exc).lower():
                raise
            self._taskdefs.forget(request["taskDefinition"])
            request["taskDefinition"] = await self._taskdefs.resolve(
                aws, td, deregister_superseded=deregister
            )
            answer = await retried("starting the ECS task", aws.ecs.run_task, **request)
        failures = answer.get("failures") or []
        if failures:
            first = failures[0]
            detail = f" ({first['detail']})" if first.get("detail") else ""
            raise LaunchError(f"ECS could not run the task: {first.get('reason')}{detail}")
        tasks = answer.get("tasks") or []
        if not tasks:
            raise LaunchError("ECS answered RunTask without a task or a failure")
        return dict(tasks[0])

    async def _fill_subnets(self, aws: Aws, request: dict[str, Any], vpc_id: str | None) -> None:
        network = request.get("networkConfiguration")
        awsvpc = network.get("awsvpcConfiguration") if isinstance(network, dict) else None
        if not isinstance(awsvpc, dict) or awsvpc.get("subnets"):
            return
        key = (aws.key, vpc_id or "")
        cached = self._subnets.get(key)
        if cached is None or cached[0] < time.monotonic():
            cached = (time.monotonic() + _SUBNETS_TTL, await _discover_subnets(aws, vpc_id))
            self._subnets[key] = cached
        awsvpc["subnets"] = list(cached[1])

    # -- wait, inspect -------------------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._watcher.get(handle.pid) or await self._watch_foreign(handle)
        await watched.done.wait()
        assert watched.outcome is not None
        return watched.outcome

    async def _watch_foreign(self, handle: Handle) -> Watched:
        """A task this agent did not launch (before a restart): no deadline, no container name."""
        cluster, arn = _split(handle.pid)
        aws = await self._clients.for_region(_region(arn))
        return self._watcher.add(Watched(handle.pid, aws, cluster, arn, flow_run_id=handle.flow_run_id))

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._watcher.get(handle.pid)
        if watched is not None and watched.outcome is not None:
            return watched.outcome
        cluster, arn = _split(handle.pid)
        aws = watched.aws if watched else await self._clients.for_region(_region(arn))
        try:
            answer = await retried(
                "describing the ECS task", aws.ecs.describe_tasks, cluster=cluster, tasks=[arn]
            )
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"ECS does not know task {arn}")
        tasks = answer.get("tasks") or []
        if not tasks:
            return Outcome(Reason.LOST, detail=f"ECS does not know task {arn}")
        task = tasks[0]
        if task.get("lastStatus") != "STOPPED":
            return None
        return task_outcome(task, watched or Watched(handle.pid, aws, cluster, arn, started=True))

    # -- kill ------------------------------------------------------------------------------------

    async def kill(self, handle: Handle, grace: float) -> None:
        watched = self._watcher.get(handle.pid)
        if watched is not None and watched.outcome is not None:
            return  # already stopped
        cluster, arn = _split(handle.pid)
        aws = watched.aws if watched else await self._clients.for_region(_region(arn))
        try:
            await retried(
                "stopping the ECS task", aws.ecs.stop_task, cluster=cluster, task=arn, reason=KILL_REASON
            )
        except InfrastructureNotFound:
            return  # gone already: nothing left to stop
        get_logger("agent.backends.ecs", flow_run_id=handle.flow_run_id, ship=True).info(
            "asked ECS to stop the task", task=arn
        )

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        _split(pid)
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        await self._watcher.aclose()


def _split(pid: str) -> tuple[str, str]:
    # "::" because ARNs contain single colons (Prefect's format, so its pids parse here too)
    cluster, sep, arn = pid.partition("::")
    if not sep or not arn:
        raise InfrastructureNotFound(f"not an ECS infrastructure_pid (cluster::taskArn): {pid!r}")
    return cluster, arn


def _region(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[0] == "arn" else ""


def _with_log_region(td: Mapping[str, Any], region: str) -> dict[str, Any]:
    """The kind leaves `awslogs-region` to the backend when the credentials name no region."""
    td = copy.deepcopy(dict(td))
    for container in td.get("containerDefinitions") or []:
        logging = container.get("logConfiguration") if isinstance(container, dict) else None
        if isinstance(logging, dict) and logging.get("logDriver") == "awslogs":
            logging.setdefault("options", {}).setdefault("awslogs-region", region)
    return td


async def _discover_subnets(aws: Aws, vpc_id: str | None) -> list[str]:
    """Every subnet of `vpc_id`, or of the default VPC: Prefect's discovery."""
    if not vpc_id:
        answer = await retried(
            "finding the default VPC",
            aws.ec2.describe_vpcs,
            Filters=[{"Name": "isDefault", "Values": ["true"]}],
        )
        vpcs = answer.get("Vpcs") or []
        if not vpcs:
            raise LaunchError(
                f"the task uses awsvpc networking but region {aws.region} has no default VPC; "
                "set vpc_id, or subnets in network_configuration"
            )
        vpc_id = str(vpcs[0]["VpcId"])
    pages = aws.ec2.get_paginator("describe_subnets").paginate(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
    )
    answer = await retried("listing the VPC's subnets", pages.build_full_result)
    subnets = sorted(str(s["SubnetId"]) for s in answer.get("Subnets") or [])
    if not subnets:
        raise LaunchError(
            f"VPC {vpc_id} has no subnets; set subnets in network_configuration or another vpc_id"
        )
    return subnets
