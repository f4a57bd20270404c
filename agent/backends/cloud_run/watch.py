"""What the watch engine needs to know about Cloud Run executions (`engine.Platform`).

A watch round reads the executions of one location (and credentials) together: from
`LIST_FROM` of them on, with one paged `executions.list` across the location's jobs
(parent `jobs/-`, as the API reference documents), so 1,000 runs cost a few calls a
round, not 1,000. Fewer of them, one the list does not show (yet), or all of them when
this role may not list, are read with one `executions.get` each. A completed one is read
with its tasks listed, for the exit code and signal of their last attempts. A missed
start deadline cancels the execution and reports START_FAILED with the platform's reason for waiting;
the end deletes the per-run job unless `keep_job`. A run that ships its output has its
new Cloud Logging entries read after each status, and drained after the end (output.py).
A task the system ended with SIGKILL has the execution's system log read, `settle`
seconds after that end was first seen (Cloud Logging shows entries late), before the end
is concluded: its memory entry, or its absence, says whether it was an OOM (system_log.py).
A transient failure of that read is tried again next round, `SYSTEM_TRIES` rounds at most.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound
from agent.backends.cloud_run.client import Clients
from agent.backends.cloud_run.output import Output
from agent.backends.cloud_run.status import SystemLog, ended, outcome_of, sigkilled, started, waiting_message
from agent.backends.cloud_run.steps import CloudRunSteps, Status
from agent.backends.cloud_run.system_log import read_system_log
from agent.backends.engine import Watched
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = ["SYSTEM_TRIES", "ExecutionState", "Executions"]

SYSTEM_TRIES: Final = 3  # rounds a transiently failing system-log read is tried
LIST_FROM: Final = 10  # executions of one location read with a list rather than a get each
_AT_ONCE: Final = 16  # executions of a batch read (get, tasks, output) at once
_UNREAD: Final = object()  # one execution of a batch could not be read now: neither found nor gone

log = get_logger("agent.backends.cloud_run")


@dataclass(eq=False)
class ExecutionState:
    """The backend's own part of one watched execution."""

    clients: Clients
    delete_job: bool  # launched here without keep_job; an adopted run's job is left alone
    timeout: int | None  # the job's task timeout, named when a task is stopped at it
    killed: bool = False  # cancelled by this agent: the end is KILLED by flow-agent
    last: Any = None  # the execution as last read: its conditions say why it has not started
    output: Output | None = None  # set when the run ships its output
    killed_seen: float | None = None  # when a SIGKILL end was first read (monotonic)
    system_read: bool = False  # the system log was read (or could not be) after that end
    system_tries: int = 0
    system: SystemLog | None = None  # what it said; None: unread


def job_of(execution: str) -> str:
    return execution.rsplit("/executions/", 1)[0]


def location_of(execution: str) -> str:
    """projects/p/locations/l of an execution's name."""
    return execution.split("/jobs/", 1)[0]


class Executions:
    batch_size = 1000  # the executions of one location and credentials: one list, paged

    def __init__(self, steps: CloudRunSteps, *, settle: float = 5.0) -> None:
        self._steps = steps
        self._settle = settle  # how long after the end the drain waits for late entries
        self._list_refused = False  # this role may get but not list: a get each from now on

    def batch_key(self, watched: Watched[ExecutionState]) -> Hashable:
        return (id(watched.state.clients), location_of(watched.pid))

    async def read(self, batch: Sequence[Watched[ExecutionState]]) -> Mapping[str, Status]:
        listed = await self._listed(batch)
        answer: dict[str, Status] = {}
        errors: list[BackendError] = []
        limiter = anyio.CapacityLimiter(_AT_ONCE)

        async def one(watched: Watched[ExecutionState]) -> None:
            async with limiter:
                try:
                    answer[watched.pid] = await self._read_one(watched, listed.get(watched.pid))
                except InfrastructureNotFound:
                    return  # absent from the answer: the execution is gone
                except BackendError as exc:  # transient, or e.g. permission denied: next round
                    errors.append(exc)
                    answer[watched.pid] = _UNREAD

        async with anyio.create_task_group() as tg:
            for watched in batch:
                tg.start_soon(one, watched)
        if errors and len(errors) == len(batch):  # nothing read: the engine backs off
            first = errors[0]
            raise first if isinstance(first, BackendUnavailable) else BackendUnavailable(str(first))
        return answer

    async def _listed(self, batch: Sequence[Watched[ExecutionState]]) -> Mapping[str, Any]:
        """The batch's executions by name, from one list of the location's (paged); empty
        when a get each is cheaper or listing is refused."""
        if len(batch) < LIST_FROM or self._list_refused:
            return {}
        clients, parent = batch[0].state.clients, f"{location_of(batch[0].pid)}/jobs/-"
        try:
            executions = await self._steps.calls.once(
                lambda: list(clients.executions.list_executions(parent=parent)), "executions.list"
            )
        except BackendUnavailable:
            raise
        except BackendError as exc:
            self._list_refused = True
            log.warning("cannot list Cloud Run executions; reading them one by one", error=str(exc))
            return {}
        wanted = {w.pid for w in batch}
        return {e.name: e for e in executions if e.name in wanted}

    async def _read_one(self, watched: Watched[ExecutionState], execution: Any) -> Status:
        """Its status (listed, else read), then its new output and a SIGKILL's explanation."""
        if execution is not None and not ended(execution):
            status: Status = (execution, None)
        else:  # not listed, or ended: read with its tasks
            status = await self._steps.read(watched.state.clients, watched.pid, retry=False)
        output = watched.state.output
        if output is not None and started(status[0]):  # after the status
            await output.follow(
                self._steps.logs, watched.state.clients, watched.pid, watched.flow_run_id, final=False
            )
        await self._explain_kill(watched, status)
        return status

    async def _explain_kill(self, watched: Watched[ExecutionState], status: Status) -> None:
        """After a SIGKILL end has settled, read the execution's system log once."""
        execution, tasks = status
        state = watched.state
        task = None if tasks is None or state.system_read else sigkilled(execution, tasks)
        if task is None:
            return
        now = time.monotonic()
        state.killed_seen = state.killed_seen or now
        if now - state.killed_seen < self._settle:
            return  # conclude waits for the next round
        state.system_tries += 1
        try:
            state.system = await read_system_log(
                self._steps.logs,
                state.clients,
                watched.pid,
                task,
                watched.flow_run_id,
                state.output,
                last=state.system_tries >= SYSTEM_TRIES,
            )
        except BackendUnavailable:
            return  # transient: the next round tries again
        state.system_read = True

    def conclude(self, watched: Watched[ExecutionState], status: Status | None) -> Outcome | None:
        if status is _UNREAD:
            return None
        if status is None:
            return Outcome(Reason.LOST, detail=f"Cloud Run execution {watched.pid} was deleted")
        execution, tasks = status
        watched.state.last = execution
        if started(execution):
            watched.started = True
        if tasks is None:
            return None
        state = watched.state
        if not state.system_read and sigkilled(execution, tasks) is not None:
            return None  # its system log is read first (read(), once settled)
        return outcome_of(execution, tasks, killed=state.killed, timeout=state.timeout, system=state.system)

    async def overdue(self, watched: Watched[ExecutionState], which: str) -> Outcome | None:
        # only a start deadline is set: Cloud Run enforces the job's own timeout itself
        await self._steps.cancel(watched.state.clients, watched.pid, retry=False)
        last = watched.state.last
        waiting = (waiting_message(last) if last is not None else "") or "still waiting for resources"
        return Outcome(
            Reason.START_FAILED,
            detail=f"start timeout: the Cloud Run execution did not start within {watched.start_within:g} s "
            f"({waiting}); flow-agent cancelled it",
        )

    async def clean_up(self, watched: Watched[ExecutionState], outcome: Outcome) -> None:
        output = watched.state.output
        if output is not None and watched.started:  # the last lines, before the waiter wakes
            await output.drain(
                self._steps.logs, watched.state.clients, watched.pid, watched.flow_run_id, settle=self._settle
            )
        if watched.state.delete_job:
            await delete_job(self._steps, watched.state.clients, job_of(watched.pid))


async def delete_job(steps: CloudRunSteps, clients: Clients, job_name: str) -> None:
    """Delete a run's job; a failure is logged, not raised: the outcome still counts."""
    try:
        await steps.delete_job(clients, job_name)
    except BackendError as exc:
        log.warning("could not delete the Cloud Run job; delete it by hand", job=job_name, error=str(exc))
