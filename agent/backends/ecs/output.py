"""A task's output: the flow container's CloudWatch Logs stream, line by line, to the run's sink.

ECS's `awslogs` driver writes each line of the container's output as one event of the
stream `<awslogs-stream-prefix>/<container>/<task id>` in the group `awslogs-group`
(https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using_awslogs.html). Where
they are is read from the task's own task definition (DescribeTaskDefinition, once per
ARN: a revision never changes), so a definition given by ARN, one registered from the
payload and the task of an adopted run are read alike.

Reading follows `GetLogEvents` with the `nextForwardToken` of the previous page
(startFromHead first): every event comes once, in the stream's order, with nothing kept
but the token, where Prefect's worker re-asked from the last timestamp + 1 ms and lost the
lines that shared it. A page may be empty while more follow; the stream is read up to
date when the token comes back unchanged
(https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_GetLogEvents.html).

While the task runs the follower reads every `interval` in the watch engine's task group;
when the engine has concluded the end, `drain` reads what is left before the waiter wakes
(the driver has flushed by the time ECS reports the task STOPPED). A failed read never
touches the run: a missing stream is "nothing written yet", throttling is retried with the
agent's policy, and anything else (a denied `logs:GetLogEvents`) is said once, with its
fix, and output stops for that run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, OutputSink, sent
from agent.backends.ecs.aws import Aws
from agent.backends.sdk import SdkCalls
from agent.observe.logging import REDACTOR, get_logger

__all__ = ["LogSource", "TaskOutput", "log_source"]

_PAGES_PER_READ: Final = 50  # pages of up to 10,000 events (1 MB) one read takes before yielding
_DRAIN_SECONDS: Final = 60.0  # longest the end of a run waits for its last lines
_DEFAULT_CONTAINER: Final = "prefect"


class LogSource:
    """Where one task's container writes: group, stream and region."""

    def __init__(self, group: str, stream: str, region: str) -> None:
        self.group, self.stream, self.region = group, stream, region


def log_source(
    task_definition: Mapping[str, Any], container: str | None, task_arn: str, region: str
) -> LogSource | str:
    """The flow container's awslogs stream, or why it has none (a sentence with the fix)."""
    containers = [c for c in task_definition.get("containerDefinitions") or [] if isinstance(c, Mapping)]
    chosen = next((c for c in containers if c.get("name") == (container or _DEFAULT_CONTAINER)), None)
    chosen = chosen or (containers[0] if containers else None)
    if chosen is None:
        return "the task definition has no containers"
    name = str(chosen.get("name"))
    config = chosen.get("logConfiguration") or {}
    options = config.get("options") or {}
    fix = (
        "set configure_cloudwatch_logs (it needs an execution role) or give the container an "
        "awslogs logConfiguration"
    )
    if config.get("logDriver") != "awslogs":
        driver = config.get("logDriver") or "none"
        return f"container {name!r} does not log to CloudWatch (log driver: {driver}); {fix}"
    if not options.get("awslogs-group") or not options.get("awslogs-stream-prefix"):
        return f"container {name!r} has no awslogs-group or awslogs-stream-prefix option; {fix}"
    stream = f"{options['awslogs-stream-prefix']}/{name}/{task_arn.rsplit('/', 1)[-1]}"
    return LogSource(str(options["awslogs-group"]), stream, str(options.get("awslogs-region") or region))


class TaskOutput:
    """One task's output follower (`TaskState.output`)."""

    def __init__(
        self,
        sdk: SdkCalls,
        definitions: dict[str, Mapping[str, Any]],
        emit: OutputSink,
        flow_run_id: str,
        *,
        interval: float,
    ) -> None:
        self._sdk = sdk
        self._definitions = definitions  # task definitions by ARN, shared by the backend's followers
        self._emit = emit
        self._flow_run_id = flow_run_id
        self._interval = interval
        self._lock = anyio.Lock()  # one read at a time: the follower's or the drain's
        self._source: LogSource | None = None
        self._token: str | None = None
        self.closed = False  # drained, or given up: no more reads
        self.task_definition_arn = ""  # known from RunTask, or from the first DescribeTasks

    async def follow(
        self,
        aws: Aws,
        container: str | None,
        task_arn: str,
        alive: Callable[[], bool],
        started: Callable[[], bool] = lambda: True,
    ) -> None:
        """Read every `interval` while `alive()` (the task is watched), once `started()`:
        nothing is written before, and GetLogEvents has a per-account rate quota."""
        while not self.closed and alive():
            await anyio.sleep(self._interval)
            async with self._lock:
                if not self.closed and alive() and started():
                    await self._read(aws, container, task_arn)

    async def drain(self, aws: Aws, container: str | None, task_arn: str) -> None:
        """After the end: read what is left, then stop (bounded: the outcome must not wait long)."""
        async with self._lock:
            if self.closed:
                return
            with anyio.move_on_after(_DRAIN_SECONDS) as scope:
                await self._read(aws, container, task_arn)
            if scope.cancelled_caught:
                self._say(f"output may be incomplete: reading it took over {_DRAIN_SECONDS:.0f}s")
            self.closed = True

    async def _read(self, aws: Aws, container: str | None, task_arn: str) -> None:
        try:
            if self._source is None and not await self._locate(aws, container, task_arn):
                return
            await self._read_pages(aws)
        except InfrastructureNotFound:
            return  # the stream is made when the container starts: nothing written yet
        except BackendUnavailable:
            return  # the policy's retries are spent: the next read tries again
        except BackendError as exc:
            self._give_up(f"{exc}; {_permission_fix(self._source)}")

    async def _locate(self, aws: Aws, container: str | None, task_arn: str) -> bool:
        arn = self.task_definition_arn
        if not arn:
            return False  # an adopted task: known after its first DescribeTasks
        if arn not in self._definitions:
            answer = await self._sdk(
                lambda: aws.ecs.describe_task_definition(taskDefinition=arn),
                "reading the task definition's log configuration",
            )
            self._definitions[arn] = answer.get("taskDefinition") or {}
        found = log_source(self._definitions[arn], container, task_arn, aws.region)
        if isinstance(found, str):
            self._give_up(found)
            return False
        self._source = found
        return True

    async def _read_pages(self, aws: Aws) -> None:
        source = self._source
        assert source is not None
        for _ in range(_PAGES_PER_READ):
            request: dict[str, Any] = {"logGroupName": source.group, "logStreamName": source.stream}
            if self._token is None:
                request["startFromHead"] = True
            else:
                request["nextToken"] = self._token
            page = await self._sdk(
                lambda request=request: aws.logs(source.region).get_log_events(**request),
                "reading the task's CloudWatch Logs",
            )
            for event in page.get("events") or []:
                self._emit_message(str(event.get("message") or ""))
            token = page.get("nextForwardToken")
            if not token or token == self._token:
                return  # up to date: AWS gives the same token back at the end of the stream
            self._token = token

    def _emit_message(self, message: str) -> None:
        # masked first, then split and stripped: a secret must match before any cut
        if self.closed:
            return
        for line in REDACTOR.mask_text(message).splitlines():
            line = line.rstrip()
            if line and not sent(self._emit, line, "ecs", self._flow_run_id):
                self.closed = True  # the sink failed: no more output, the watch goes on
                return

    def _give_up(self, why: str) -> None:
        self.closed = True
        self._say(f"the task's output is unavailable: {why}")

    def _say(self, text: str) -> None:
        log = get_logger("agent.backends.ecs", flow_run_id=self._flow_run_id, ship=True)
        log.warning(REDACTOR.mask_text(text))


def _permission_fix(source: LogSource | None) -> str:
    where = f"log group {source.group!r} in {source.region}" if source else "the task's log group"
    return (
        f"allow the agent's IAM identity logs:GetLogEvents on {where} "
        "(and ecs:DescribeTaskDefinition to find it)"
    )
