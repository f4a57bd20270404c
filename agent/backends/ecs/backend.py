"""The ECS backend: a flow run is one ECS task; `infrastructure_pid` is `cluster::taskArn`.

Launch: the task definition in the payload is reused or registered (taskdefs.py; a user's
task definition ARN is used as is), empty awsvpc subnets are filled from `vpc_id` or the
default VPC (only when the request, customizations applied, still has none), and
`RunTask` is sent with a client token, so a retry after a lost answer cannot start a
second task, and with the run as `startedBy`, so that any agent can find the task from the
run alone (`find`, lookup.py). `failures` in the answer fail the run with AWS's reason.

Wait: the one watch engine with ECS's platform (watch.py). Outcome: the flow container's
exit code; OOM when its `reason` says OutOfMemoryError (even with exit code 0) or the code
is 137; `stopCode` and `stoppedReason` in the detail. Kill: `StopTask` with a reason; ECS
sends SIGTERM and SIGKILL after the container's `stopTimeout`, so `grace` is not ours.

Output (`stream_output`, or a job with its own `output` sink): the flow container's
CloudWatch Logs stream, followed while the task runs and drained before the outcome is
reported (output.py); an adopted run's lines go to its flow run's log like a launched one's.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from agent.backends.base import (
    BackendOptions,
    BackendUnavailable,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
    OutputSink,
    output_sink,
)
from agent.backends.ecs.aws import Aws, AwsClients, translate
from agent.backends.ecs.lookup import find_task, run_marker
from agent.backends.ecs.output import TaskOutput
from agent.backends.ecs.taskdefs import TaskDefinitions
from agent.backends.ecs.watch import KILL_REASON, EcsPlatform, TaskState, task_outcome
from agent.backends.engine import Watched, WatchEngine
from agent.backends.sdk import SdkCalls
from agent.infra.ecs import EcsRuntime
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = ["EcsBackend"]

_SUBNETS_TTL: Final = 600.0  # seconds a VPC's subnet list is reused


class EcsBackend:
    kind: ClassVar[str] = "ecs"
    remote: ClassVar[bool] = True
    runtime_type: ClassVar[type] = EcsRuntime

    def __init__(self, options: BackendOptions) -> None:
        self._sdk = SdkCalls(options.retry, translate)
        self._clients = AwsClients(self._sdk)
        self._taskdefs = TaskDefinitions(self._sdk)
        self._engine: WatchEngine[TaskState] = WatchEngine(
            "ecs", EcsPlatform(self._sdk), interval=options.watch_interval, retry=options.retry
        )
        self._subnets: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._interval = options.watch_interval
        self._definitions: dict[str, Mapping[str, Any]] = {}  # by ARN, for the output's log streams

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, job: Job[EcsRuntime]) -> Handle[EcsRuntime]:
        try:
            return await self._launch(job)
        except InfrastructureNotFound as exc:  # a missing cluster or definition: the job's fault
            raise LaunchError(str(exc)) from None

    async def _launch(self, job: Job[EcsRuntime]) -> Handle[EcsRuntime]:
        runtime = job.runtime
        aws = await self._clients.get(runtime.aws_credentials)
        td = job.payload.get("task_definition")
        td = _with_log_region(td, aws.region) if isinstance(td, Mapping) else None
        request = copy.deepcopy(dict(job.payload.get("run_task") or {}))
        deregister = runtime.auto_deregister_task_definition
        if td is not None:
            request["taskDefinition"] = await self._taskdefs.resolve(
                aws, td, deregister_superseded=deregister
            )
        if not request.get("taskDefinition"):
            raise LaunchError(
                "no task definition: set task_definition_arn or an image for the task definition"
            )
        await self._fill_subnets(aws, request, runtime.vpc_id)
        if not request.get("startedBy"):  # a customization removed it: `find` needs it
            request["startedBy"] = run_marker(job.flow_run_id)
        # one token for every retry of this launch: ECS starts at most one task for it
        request.setdefault("clientToken", uuid.uuid4().hex)
        task = await self._run_task(aws, request, td, deregister)
        cluster = str(task.get("clusterArn") or request.get("cluster") or "default")
        arn = str(task["taskArn"])
        handle = Handle(self.kind, f"{cluster}::{arn}", job.flow_run_id, runtime)
        log = get_logger("agent.backends.ecs", flow_run_id=job.flow_run_id, ship=True)
        log.info("created ECS task", task=arn, task_definition=task.get("taskDefinitionArn"))
        state = TaskState(aws, cluster, arn, container=runtime.container_name)
        start_within = runtime.task_start_timeout_seconds or None
        watched = self._engine.track(Watched(handle, state, start_within=start_within))
        if job.output is not None or runtime.stream_output:  # a direct run always wants output
            emit = output_sink(self.kind, job.flow_run_id, job.output)
            self._follow_output(watched, emit, str(task.get("taskDefinitionArn") or ""))
        return handle

    def _follow_output(self, watched: Watched[TaskState], emit: OutputSink, definition: str = "") -> None:
        """Follow the task's CloudWatch stream in the engine's task group until its end
        is concluded; the platform's `clean_up` drains the rest (output.py)."""
        state = watched.state
        if state.output is not None:
            return
        output = TaskOutput(self._sdk, self._definitions, emit, watched.flow_run_id, interval=self._interval)
        output.task_definition_arn = definition  # else the first DescribeTasks names it
        state.output = output

        def alive() -> bool:
            return not watched.ending and self._engine.get(watched.pid) is watched

        def started() -> bool:
            return watched.started

        self._engine.spawn(lambda: output.follow(state.aws, state.container, state.task_arn, alive, started))

    async def _run_task(
        self, aws: Aws, request: dict[str, Any], td: Mapping[str, Any] | None, deregister: bool
    ) -> dict[str, Any]:
        try:
            answer = await self._run_until_placed(aws, request)
        except LaunchError as exc:
            # a cached revision deregistered meanwhile (by a person, or another agent's cleanup)
            if td is None or "inactive" not in str(exc).lower():
                raise
            self._taskdefs.forget(request["taskDefinition"])
            request["taskDefinition"] = await self._taskdefs.resolve(
                aws, td, deregister_superseded=deregister
            )
            # another request (no task was started for the first): its own token
            request["clientToken"] = uuid.uuid4().hex
            answer = await self._run_until_placed(aws, request)
        failures = answer.get("failures") or []
        if failures:
            raise LaunchError(f"ECS could not run the task: {_failure(failures[0])}")
        tasks = answer.get("tasks") or []
        if not tasks:
            raise LaunchError("ECS answered RunTask without a task or a failure")
        return dict(tasks[0])

    async def _run_until_placed(self, aws: Aws, request: dict[str, Any]) -> dict[str, Any]:
        """RunTask; a `failures` answer that says capacity is short for now (Fargate's
        "Capacity is unavailable at this time") is retried with the agent's policy, each try a
        new request with its own client token (no task was started: replaying the same token
        could only replay the same failure). Other failures are the answer's to report."""

        async def attempt() -> dict[str, Any]:
            answer = await self._sdk(lambda: aws.ecs.run_task(**request), "starting the ECS task")
            failures = answer.get("failures") or []
            if failures and not answer.get("tasks") and _short_of_capacity(failures[0]):
                request["clientToken"] = uuid.uuid4().hex
                raise _NoCapacity(f"ECS could not place the task yet: {_failure(failures[0])} (will retry)")
            return dict(answer)

        try:
            return await self._sdk.retry.call(attempt, retry_on=(_NoCapacity,))
        except _NoCapacity as exc:
            raise LaunchError(
                f"{exc}".replace("(will retry)", "(retried until the retry budget ran out)")
            ) from None

    async def _fill_subnets(self, aws: Aws, request: dict[str, Any], vpc_id: str | None) -> None:
        network = request.get("networkConfiguration")
        awsvpc = network.get("awsvpcConfiguration") if isinstance(network, dict) else None
        if not isinstance(awsvpc, dict) or awsvpc.get("subnets"):
            return
        key = (aws.key, vpc_id or "")
        cached = self._subnets.get(key)
        if cached is None or cached[0] < time.monotonic():
            cached = (time.monotonic() + _SUBNETS_TTL, await _discover_subnets(self._sdk, aws, vpc_id))
            self._subnets[key] = cached
        awsvpc["subnets"] = list(cached[1])

    # -- find, wait, inspect ---------------------------------------------------------------------

    async def find(self, job: Job[EcsRuntime]) -> Handle[EcsRuntime] | None:
        """The run's task by its `startedBy` (lookup.py); never starts or registers anything."""
        aws = await self._clients.get(job.runtime.aws_credentials)
        request = job.payload.get("run_task") or {}
        task = await find_task(self._sdk, aws, request, job.flow_run_id)
        if task is None:
            return None
        cluster = str(task.get("clusterArn") or request.get("cluster") or "default")
        return Handle(self.kind, f"{cluster}::{task['taskArn']}", job.flow_run_id, job.runtime)

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._engine.get(handle.pid) or await self._watch_foreign(handle)
        return await self._engine.wait(watched)

    async def _watch_foreign(self, handle: Handle) -> Watched[TaskState]:
        """A task this agent did not launch (before a restart, found by `find`): no start
        deadline, as its age is unknown."""
        watched = self._engine.track(Watched(handle, await self._state_of(handle)))
        runtime = handle.runtime if isinstance(handle.runtime, EcsRuntime) else None
        if runtime is not None and runtime.stream_output:  # shipped to its run's log, as if launched here
            self._follow_output(watched, output_sink(self.kind, handle.flow_run_id))
        return watched

    async def _state_of(self, handle: Handle) -> TaskState:
        """A task's state from its pid, with the run's credentials when the handle has them
        (default chain otherwise) in the region its ARN names."""
        cluster, arn = _split(handle.pid)
        runtime = handle.runtime if isinstance(handle.runtime, EcsRuntime) else None
        credentials = dict(runtime.aws_credentials or {}) if runtime is not None else {}
        if _region(arn) and not credentials.get("region_name"):
            credentials["region_name"] = _region(arn)
        aws = await self._clients.get(credentials or None)
        return TaskState(aws, cluster, arn, container=runtime.container_name if runtime else None)

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._engine.get(handle.pid)
        if watched is not None and watched.outcome is not None:
            return watched.outcome
        state = watched.state if watched is not None else await self._state_of(handle)
        try:
            answer = await self._sdk(
                lambda: state.aws.ecs.describe_tasks(cluster=state.cluster, tasks=[state.task_arn]),
                "describing the ECS task",
            )
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"ECS does not know task {state.task_arn}")
        tasks = answer.get("tasks") or []
        if not tasks:
            return Outcome(Reason.LOST, detail=f"ECS does not know task {state.task_arn}")
        task = tasks[0]
        if task.get("lastStatus") != "STOPPED":
            return None
        return task_outcome(task, state, started=watched.started if watched is not None else True)

    # -- kill ------------------------------------------------------------------------------------

    async def kill(self, handle: Handle, grace: float) -> None:
        watched = self._engine.get(handle.pid)
        if watched is not None and watched.ending:
            return  # already stopped
        state = watched.state if watched is not None else await self._state_of(handle)
        try:
            await self._sdk(
                lambda: state.aws.ecs.stop_task(
                    cluster=state.cluster, task=state.task_arn, reason=KILL_REASON
                ),
                "stopping the ECS task",
            )
        except InfrastructureNotFound:
            return  # gone already: nothing left to stop
        get_logger("agent.backends.ecs", flow_run_id=handle.flow_run_id, ship=True).info(
            "asked ECS to stop the task", task=state.task_arn
        )

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        _split(pid)
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        await self._engine.aclose()


class _NoCapacity(BackendUnavailable):
    """RunTask answered a capacity failure: retried, then a LaunchError."""


# RunTask `failures` that say capacity is short for now, per the ECS developer guide's
# "API failure reasons" (a Fargate or Fargate Spot shortage in the AZ; placement retried later)
_CAPACITY_REASONS: Final = ("capacity is unavailable at this time",)


def _short_of_capacity(failure: Mapping[str, Any]) -> bool:
    reason = str(failure.get("reason") or "").lower()
    return any(words in reason for words in _CAPACITY_REASONS)


def _failure(failure: Mapping[str, Any]) -> str:
    detail = f" ({failure['detail']})" if failure.get("detail") else ""
    return f"{failure.get('reason')}{detail}"


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


async def _discover_subnets(sdk: SdkCalls, aws: Aws, vpc_id: str | None) -> list[str]:
    """Every subnet of `vpc_id`, or of the default VPC: Prefect's discovery."""
    if not vpc_id:
        answer = await sdk(
            lambda: aws.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}]),
            "finding the default VPC",
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
    answer = await sdk(pages.build_full_result, "listing the VPC's subnets")
    subnets = sorted(str(s["SubnetId"]) for s in answer.get("Subnets") or [])
    if not subnets:
        raise LaunchError(
            f"VPC {vpc_id} has no subnets; set subnets in network_configuration or another vpc_id"
        )
    return subnets
