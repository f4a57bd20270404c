"""What is ECS's own in watching tasks: batched DescribeTasks, start deadlines, outcomes.

The watch engine (agent/backends/engine.py) runs the one loop; `EcsPlatform` tells it how
to read ECS. Every tick the tasks in flight are grouped by credentials and cluster and
`DescribeTasks` is asked about up to 100 of them per call (a few hundred runs cost a few
calls, not a few hundred: #18584). A task that has not reached RUNNING within its start
deadline is stopped with a reason that marks it (START_REASON), so whoever reads it later
(this agent, another one, a person in the console) sees why, and is START_FAILED once
STOPPED. A task missing from three answers in a row is LOST: ECS forgets stopped tasks
after about an hour.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound
from agent.backends.ecs.aws import Aws
from agent.backends.ecs.output import TaskOutput
from agent.backends.engine import Watched
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = ["BATCH", "KILL_REASON", "START_REASON", "EcsPlatform", "TaskState", "task_outcome"]

BATCH: Final = 100  # DescribeTasks takes at most 100 tasks
KILL_REASON: Final = "flow-agent: stopped by flow-agent (flow run cancelled or agent stopped)"
START_REASON: Final = "flow-agent: the task did not reach RUNNING within"
_MISSES_FOR_LOST: Final = 3  # a task missing from this many answers in a row is gone
_STARTED: Final = frozenset({"RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"})
_RUN_ID_ENV: Final = "PREFECT__FLOW_RUN_ID"
_UNREAD: Final = object()  # a status ECS refused to give: neither found nor missing

log = get_logger("agent.backends.ecs")


@dataclass(eq=False)
class TaskState:
    """The ECS side of one watched task (the engine's `Watched.state`)."""

    aws: Aws
    cluster: str
    task_arn: str
    container: str | None = None  # the flow's container; None: "prefect", else the first
    status: str = ""  # the last lastStatus seen
    hint: str = ""  # the last container reason seen while the task was not running
    output: TaskOutput | None = None  # the container's output follower, when output is wanted


def _container(task: Mapping[str, Any], name: str | None) -> Mapping[str, Any]:
    """The flow's container among a task's (sidecars: log routers, agents, proxies): the
    configured name, else the container whose overrides carry the run's PREFECT__FLOW_RUN_ID
    (the launch puts the run's environment on the flow container only), else "prefect",
    else the first. A sidecar's exit is never the run's."""
    containers = [c for c in task.get("containers") or [] if isinstance(c, dict)]
    overrides = (task.get("overrides") or {}).get("containerOverrides") or []
    with_run_id = [
        o.get("name")
        for o in overrides
        if any(v.get("name") == _RUN_ID_ENV for v in o.get("environment") or [])
    ]
    for wanted in (name, *with_run_id, "prefect"):
        for container in containers:
            if wanted and container.get("name") == wanted:
                return container
    return containers[0] if containers else {}


def task_outcome(task: Mapping[str, Any], state: TaskState, *, started: bool) -> Outcome:
    """How a STOPPED task ended, from the flow container's exit code and AWS's words."""
    container = _container(task, state.container)
    code = container.get("exitCode")
    reason = str(container.get("reason") or "")
    stopped = str(task.get("stoppedReason") or "")
    stop_code = str(task.get("stopCode") or "")
    parts = [f"stopCode {stop_code}" if stop_code else "", f"stoppedReason: {stopped}" if stopped else ""]
    if reason:
        parts.append(f"container {container.get('name')!r}: {reason}")
    elif state.hint:
        parts.append(state.hint)
    detail = "; ".join(p for p in parts if p)
    never_ran = not started and not task.get("startedAt")
    if stopped.startswith(START_REASON):
        return Outcome(Reason.START_FAILED, detail=detail)
    if stopped.startswith(KILL_REASON) and stop_code != "EssentialContainerExited":
        # before the start checks: a task killed before it started was killed, not a failed
        # start; and ECS ends a stopped container with 143 or 137: a kill is not an OOM.
        # EssentialContainerExited: the flow ended on its own before the kill took effect.
        return Outcome(Reason.KILLED, detail=detail)
    if stop_code == "TaskFailedToStart" or (never_ran and code is None):
        return Outcome(Reason.START_FAILED, detail=detail)
    if reason.startswith("OutOfMemoryError"):  # set by ECS even when the exit code is 0 or 1
        if code == 0:
            return Outcome(Reason.OOM, detail=f"{detail}; the container's exit code was 0")
        return Outcome(Reason.OOM, exit_code=code, detail=detail)
    if code is None:
        name = container.get("name") or state.container or "prefect"
        return Outcome(Reason.LOST, detail=f"container {name!r} stopped without an exit code; {detail}")
    return Outcome(Reason.EXITED, exit_code=int(code), detail=detail)


class EcsPlatform:
    """The engine's `Platform` for ECS tasks."""

    batch_size: int = BATCH

    def __init__(self, sdk: SdkCalls) -> None:
        self._sdk = sdk

    def batch_key(self, watched: Watched[TaskState]) -> Hashable:
        return (watched.state.aws.key, watched.state.cluster)

    async def read(self, batch: Sequence[Watched[TaskState]]) -> Mapping[str, Any]:
        first = batch[0].state
        arns = [w.state.task_arn for w in batch]
        try:
            # once: the next tick is the retry
            answer = await self._sdk.once(
                lambda: first.aws.ecs.describe_tasks(cluster=first.cluster, tasks=arns),
                "describing ECS tasks",
            )
        except InfrastructureNotFound:  # the cluster is gone, and its tasks with it
            return {}
        except BackendUnavailable:
            raise
        except BackendError as exc:  # denied, say: the tasks are not missing, just unread
            log.error("cannot read ECS task states", cluster=first.cluster, error=str(exc))
            return {w.pid: _UNREAD for w in batch}
        tasks = {t.get("taskArn"): t for t in answer.get("tasks") or []}
        return {w.pid: tasks[w.state.task_arn] for w in batch if w.state.task_arn in tasks}

    def conclude(self, watched: Watched[TaskState], status: Any) -> Outcome | None:
        state = watched.state
        if status is _UNREAD:
            return None
        if status is None:
            if watched.misses < _MISSES_FOR_LOST:
                return None
            detail = f"ECS no longer knows task {state.task_arn} (stopped tasks are kept about an hour)"
            return Outcome(Reason.LOST, detail=detail)
        last = str(status.get("lastStatus") or "")
        if last != state.status:
            log.info("ECS task status", status=last, flow_run_id=watched.flow_run_id, task=state.task_arn)
            state.status = last
        if last in _STARTED or status.get("startedAt"):
            watched.started = True
        if state.output is not None and not state.output.task_definition_arn:
            state.output.task_definition_arn = str(status.get("taskDefinitionArn") or "")
        reason = _container(status, state.container).get("reason")
        if reason and not watched.started:
            state.hint = f"container reason: {reason}"
        if last == "STOPPED":
            return task_outcome(status, state, started=watched.started)
        return None

    async def overdue(self, watched: Watched[TaskState], which: str) -> Outcome | None:
        """Past the start deadline: stop the task with a reason that says so; ECS then
        reports it STOPPED, read as START_FAILED. (ECS tasks get no end deadline.)"""
        state = watched.state
        if which != "start":
            return None
        stop_reason = (
            f"{START_REASON} {int(watched.start_within or 0)} s (last status {state.status or 'unknown'})"
        )
        try:
            await self._sdk.once(
                lambda: state.aws.ecs.stop_task(
                    cluster=state.cluster, task=state.task_arn, reason=stop_reason[:255]
                ),
                "stopping an ECS task that did not start",
            )
        except InfrastructureNotFound:
            return Outcome(Reason.START_FAILED, detail=f"{stop_reason}; {state.hint}".strip("; "))
        log.warning(stop_reason, flow_run_id=watched.flow_run_id, task=state.task_arn)
        return None

    async def clean_up(self, watched: Watched[TaskState], outcome: Outcome) -> None:
        """The output's last lines, before the waiter wakes. Nothing to delete: ECS forgets
        a stopped task by itself; task definitions are reused."""
        state = watched.state
        if state.output is not None:
            await state.output.drain(state.aws, state.container, state.task_arn)
