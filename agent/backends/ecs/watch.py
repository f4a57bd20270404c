"""One loop watches every ECS task of the agent: batched DescribeTasks, start deadlines.

Every `watch_interval` the loop groups the tasks in flight by credentials and cluster and
asks `DescribeTasks` about up to 100 of them per call (a few hundred runs cost a few
calls, not a few hundred: #18584). A task that has not reached RUNNING within its start
deadline is stopped with a reason that marks it, so whoever reads it later (this agent,
another one, a person in the console) sees why. When AWS throttles, the loop backs off
with the agent's backoff and carries on; a task AWS no longer knows is reported LOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound
from agent.backends.ecs.aws import Aws, call
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import backoff_delay

__all__ = ["KILL_REASON", "START_REASON", "Watched", "Watcher", "task_outcome"]

BATCH: Final = 100  # DescribeTasks takes at most 100 tasks
KILL_REASON: Final = "flow-agent: stopped by flow-agent (flow run cancelled or agent stopped)"
START_REASON: Final = "flow-agent: the task did not reach RUNNING within"
_MISSES_FOR_LOST: Final = 3  # a task missing from this many answers in a row is gone
_KEEP_ENDED: Final = 1000
_STARTED: Final = frozenset({"RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"})

log = get_logger("agent.backends.ecs")


@dataclass(eq=False)
class Watched:
    pid: str
    aws: Aws
    cluster: str
    task_arn: str
    container: str | None = None  # the flow's container; None: "prefect", else the first
    start_timeout: float = 0.0  # seconds; 0: no deadline
    flow_run_id: str = ""
    added: float = field(default_factory=time.monotonic)
    started: bool = False
    stop_sent: bool = False
    status: str = ""
    hint: str = ""  # the last container reason seen while the task was not running
    misses: int = 0
    outcome: Outcome | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


def _container(task: dict[str, Any], name: str | None) -> dict[str, Any]:
    containers = [c for c in task.get("containers") or [] if isinstance(c, dict)]
    for wanted in (name, "prefect"):
        for container in containers:
            if wanted and container.get("name") == wanted:
                return container
    return containers[0] if containers else {}


def task_outcome(task: dict[str, Any], watched: Watched) -> Outcome:
    """How a STOPPED task ended, from the flow container's exit code and AWS's words."""
    container = _container(task, watched.container)
    code = container.get("exitCode")
    reason = str(container.get("reason") or "")
    stopped = str(task.get("stoppedReason") or "")
    stop_code = str(task.get("stopCode") or "")
    parts = [f"stopCode {stop_code}" if stop_code else "", f"stoppedReason: {stopped}" if stopped else ""]
    if reason:
        parts.append(f"container {container.get('name')!r}: {reason}")
    elif watched.hint:
        parts.append(watched.hint)
    detail = "; ".join(p for p in parts if p)
    never_ran = not watched.started and not task.get("startedAt")
    if stopped.startswith(START_REASON) or stop_code == "TaskFailedToStart" or (never_ran and code is None):
        return Outcome(Reason.START_FAILED, detail=detail)
    if stopped.startswith(KILL_REASON):
        # ECS ends a stopped container with 143 or 137: a kill must not read as an OOM
        return Outcome(Reason.KILLED, detail=detail)
    if reason.startswith("OutOfMemoryError"):  # set by ECS even when the exit code is 0 or 1
        if code == 0:
            return Outcome(Reason.OOM, detail=f"{detail}; the container's exit code was 0")
        return Outcome(Reason.OOM, exit_code=code, detail=detail)
    if code is None:
        name = container.get("name") or watched.container or "prefect"
        return Outcome(Reason.LOST, detail=f"container {name!r} stopped without an exit code; {detail}")
    return Outcome(Reason.EXITED, exit_code=int(code), detail=detail)


class Watcher:
    """The loop; it runs while there is something to watch and stops when there is not."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._active: dict[str, Watched] = {}
        # ended tasks stay known a while: a late kill or a second wait still finds them
        self._known: dict[str, Watched] = {}
        self._ended: deque[str] = deque()
        self._loop: asyncio.Task[None] | None = None

    def get(self, pid: str) -> Watched | None:
        return self._known.get(pid)

    def add(self, watched: Watched) -> Watched:
        existing = self._known.get(watched.pid)
        if existing is not None:
            return existing
        self._known[watched.pid] = self._active[watched.pid] = watched
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="ecs-watch")
        return watched

    def _retire(self, pid: str) -> None:
        del self._active[pid]
        self._ended.append(pid)
        while len(self._ended) > _KEEP_ENDED:
            self._known.pop(self._ended.popleft(), None)

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop

    async def _run(self) -> None:
        failures = 0
        while self._active:
            delay = self._interval
            if failures:
                delay = backoff_delay(failures, initial=self._interval, maximum=60.0, jitter=0.2)
            await anyio.sleep(delay)
            try:
                await self._poll()
                failures = 0
            except BackendUnavailable as exc:
                failures += 1
                log.warning("could not read ECS task states; backing off", error=str(exc), attempt=failures)
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad answer
                failures += 1
                log.exception("unexpected error while watching ECS tasks")

    async def _poll(self) -> None:
        groups: dict[tuple[str, str], list[Watched]] = defaultdict(list)
        for watched in list(self._active.values()):
            groups[(watched.aws.key, watched.cluster)].append(watched)
        unavailable: BackendUnavailable | None = None
        for members in groups.values():
            for start in range(0, len(members), BATCH):
                try:
                    await self._describe(members[start : start + BATCH])
                except BackendUnavailable as exc:
                    unavailable = exc  # the other groups still get their turn
        await self._enforce_deadlines()
        for pid in [pid for pid, w in self._active.items() if w.outcome is not None]:
            self._retire(pid)
        if unavailable is not None:
            raise unavailable

    async def _describe(self, batch: list[Watched]) -> None:
        aws, cluster = batch[0].aws, batch[0].cluster
        try:
            answer = await call(
                "describing ECS tasks",
                aws.ecs.describe_tasks,
                cluster=cluster,
                tasks=[w.task_arn for w in batch],
            )
        except InfrastructureNotFound:  # the cluster is gone, and its tasks with it
            answer = {"tasks": []}
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            log.error("cannot read ECS task states", cluster=cluster, error=str(exc))
            return
        tasks = {t.get("taskArn"): t for t in answer.get("tasks") or []}
        for watched in batch:
            task = tasks.get(watched.task_arn)
            if task is None:
                watched.misses += 1
                if watched.misses >= _MISSES_FOR_LOST:
                    detail = (
                        f"ECS no longer knows task {watched.task_arn} (stopped tasks are kept about an hour)"
                    )
                    watched.finish(Outcome(Reason.LOST, detail=detail))
                continue
            watched.misses = 0
            self._observe(watched, task)

    def _observe(self, watched: Watched, task: dict[str, Any]) -> None:
        status = str(task.get("lastStatus") or "")
        if status != watched.status:
            log.info("ECS task status", status=status, flow_run_id=watched.flow_run_id, task=watched.task_arn)
            watched.status = status
        if status in _STARTED or task.get("startedAt"):
            watched.started = True
        reason = _container(task, watched.container).get("reason")
        if reason and not watched.started:
            watched.hint = f"container reason: {reason}"
        if status == "STOPPED":
            watched.finish(task_outcome(task, watched))

    async def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for watched in list(self._active.values()):
            late = watched.start_timeout and now - watched.added > watched.start_timeout
            if not late or watched.started or watched.stop_sent or watched.outcome is not None:
                continue
            seconds = int(watched.start_timeout)
            stop_reason = f"{START_REASON} {seconds} s (last status {watched.status or 'unknown'})"
            try:
                await call(
                    "stopping an ECS task that did not start",
                    watched.aws.ecs.stop_task,
                    cluster=watched.cluster,
                    task=watched.task_arn,
                    reason=stop_reason[:255],
                )
            except InfrastructureNotFound:
                watched.finish(
                    Outcome(Reason.START_FAILED, detail=f"{stop_reason}; {watched.hint}".strip("; "))
                )
                continue
            except BackendError as exc:
                log.warning("could not stop an ECS task past its start deadline", error=str(exc))
                continue
            watched.stop_sent = True
            log.warning(stop_reason, flow_run_id=watched.flow_run_id, task=watched.task_arn)
