"""Google Cloud Run v2 jobs: one job per flow run, one execution of it, watched to the end.

**A job per run, not per deployment.** The job body carries the run's own environment
(`PREFECT__FLOW_RUN_ID`, resolved secrets) and labels; a shared job would have to be
updated before each run (racing concurrent runs of the deployment) or rely on per-run
overrides that cannot change labels, and an execution of a shared job could not be told
from another run's. A per-run job makes launching idempotent instead: the job name comes
from the flow run id (a create retried after a lost response meets 409 and reuses the job
when its flow-run label is ours), and any execution of that job is this run's, so a retried
`run_job` first looks for the execution a lost response already started. The job is
deleted when the run ends (success, failure, cancel, start timeout) unless `keep_job`:
Cloud Run allows 1000 jobs per region and Prefect's worker left them behind (#16007).

`infrastructure_pid` is the execution's full name,
`projects/P/locations/R/jobs/J/executions/E`; any agent can cancel or inspect it.

**Watching** is one loop per backend for every execution it launched: each round reads
every execution (concurrently, one thread each) every `watch_interval`; a completed one
has its tasks read for the exit code and signal, its job deleted, and its waiter woken.
An execution that has not started within the start deadline (the job's `timeout` unless
the backend was given one) is cancelled and reported START_FAILED.

Kill cancels the execution (Cloud Run sends SIGTERM, then SIGKILL); the watch loop then
sees it cancelled and cleans up. `grace` is Cloud Run's to apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

import anyio
from anyio import to_thread

from agent.backends.base import BackendUnavailable, Handle, InfrastructureNotFound, Job, LaunchError
from agent.backends.cloud_run.client import ClientCache, Clients, call
from agent.backends.cloud_run.spec import JobSpec, job_spec
from agent.backends.cloud_run.status import condition_message, has_time, outcome_of, started
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import RetryPolicy

__all__ = ["CloudRunBackend"]

T = TypeVar("T")
_PID: Final = re.compile(r"^(?P<job>projects/[^/]+/locations/[^/]+/jobs/[^/]+)/executions/[^/]+$")
_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
_NAME: Final = re.compile(r"[\w.\[\]]+")
_CREATE_WAIT: Final = 120.0  # seconds for the create LRO (the job becoming Ready)
log = get_logger("agent.backends.cloud_run")


@dataclass
class _Watched:
    handle: Handle
    clients: Clients
    delete_job: bool
    timeout: int | None
    start_within: float | None  # seconds from launch; None: no deadline (not launched here)
    start_deadline: float | None = None  # monotonic; None once started
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome | None = None
    killed: bool = False

    def __post_init__(self) -> None:
        if self.start_within is not None:
            self.start_deadline = time.monotonic() + self.start_within

    @property
    def job(self) -> str:
        return self.handle.pid.rsplit("/executions/", 1)[0]


class CloudRunBackend:
    kind: ClassVar[str] = "cloud-run"
    remote: ClassVar[bool] = True

    def __init__(
        self,
        options: Any,
        *,
        credentials: Any = None,
        start_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`credentials` overrides every job's (tests: AnonymousCredentials);
        `start_timeout` overrides the start deadline taken from each job's `timeout`."""
        self._interval = float(getattr(options, "watch_interval", 5.0))
        self._cache = ClientCache(getattr(options, "gcp_endpoint", None), credentials)
        self._start_timeout = start_timeout
        self._retry = retry or RetryPolicy()
        self._watched: dict[str, _Watched] = {}
        self._loop: asyncio.Task[None] | None = None

    # -- launch -----------------------------------------------------------------------------

    async def launch(self, job: Job) -> Handle:
        spec = job_spec(job.payload)
        config = job.config
        clients = await self._thread(lambda: self._cache.get(getattr(config, "credentials", None)))
        keep = bool(getattr(config, "keep_job", False))
        created = await self._retried(lambda: _create_job(clients, spec))
        try:
            execution = await self._run_once(clients, spec.name, look_first=not created)
        except BaseException:
            if not keep:  # a job whose execution never started is left behind by nobody
                with anyio.CancelScope(shield=True):
                    await self._delete_job(clients, spec.name)
            raise
        handle = Handle(self.kind, execution, job.flow_run_id)
        timeout = getattr(config, "timeout", None)
        deadline = self._start_timeout if self._start_timeout is not None else timeout
        self._watch(_Watched(handle, clients, not keep, timeout, deadline))
        log.info("started Cloud Run execution", flow_run_id=job.flow_run_id, execution=execution)
        return handle

    async def _run_once(self, clients: Clients, job_name: str, *, look_first: bool) -> str:
        """`run_job` is not idempotent: before each retry, adopt the execution that appeared."""
        attempts = 0

        def run() -> str:
            nonlocal attempts
            attempts += 1
            if look_first or attempts > 1:
                existing = _executions(clients, job_name)
                if existing:  # the job is this run's alone: its execution is ours
                    return existing[0]
            operation = call(lambda: clients.jobs.run_job(name=job_name), "jobs.run", missing=LaunchError)
            with contextlib.suppress(Exception):  # metadata is the Execution; else list it
                if operation.metadata is not None and operation.metadata.name:
                    return str(operation.metadata.name)
            existing = _executions(clients, job_name)
            if not existing:
                raise BackendUnavailable(
                    "Cloud Run jobs.run answered but no execution is listed yet (will retry)"
                )
            return existing[0]

        return await self._retried(run)

    # -- wait, inspect -----------------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._watched.get(handle.pid)
        if watched is None:  # launched by another agent (or before a restart): watch, keep its job
            clients = await self._thread(lambda: self._cache.get(None))
            watched = _Watched(handle, clients, False, None, None)
            self._watch(watched)
        await watched.done.wait()
        assert watched.outcome is not None
        return watched.outcome

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._watched.get(handle.pid)
        if watched is not None:
            return watched.outcome
        clients = await self._thread(lambda: self._cache.get(None))
        try:
            return await self._thread(lambda: _read_outcome(clients, handle.pid, killed=False, timeout=None))
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"Cloud Run execution {handle.pid} no longer exists")

    # -- the watch loop ------------------------------------------------------------------------

    def _watch(self, watched: _Watched) -> None:
        self._watched[watched.handle.pid] = watched
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while self._watched:
            await anyio.sleep(self._interval)
            async with anyio.create_task_group() as group:
                for watched in list(self._watched.values()):
                    group.start_soon(self._check, watched)

    async def _check(self, watched: _Watched) -> None:
        try:
            outcome = await self._thread(lambda: _poll(watched))
        except BackendUnavailable as exc:
            log.info("Cloud Run status read failed; reading again next round", error=str(exc))
            return
        except InfrastructureNotFound:
            outcome = Outcome(Reason.LOST, detail=f"Cloud Run execution {watched.handle.pid} was deleted")
        except Exception as exc:  # never let one execution stop the loop for the others
            log.warning("Cloud Run status read failed", error=str(exc), execution=watched.handle.pid)
            return
        if outcome is not None:
            await self._finish(watched, outcome)

    async def _finish(self, watched: _Watched, outcome: Outcome) -> None:
        if watched.delete_job:
            await self._delete_job(watched.clients, watched.job)
        watched.outcome = outcome
        self._watched.pop(watched.handle.pid, None)
        watched.done.set()

    async def _delete_job(self, clients: Clients, job_name: str) -> None:
        def delete() -> None:
            with contextlib.suppress(InfrastructureNotFound):
                call(lambda: clients.jobs.delete_job(name=job_name).result(timeout=60), "jobs.delete")

        try:
            await self._retried(delete)
        except Exception as exc:  # the outcome still counts; say what is left behind
            log.warning("could not delete the Cloud Run job; delete it by hand", job=job_name, error=str(exc))

    # -- kill -----------------------------------------------------------------------------------

    async def kill(self, handle: Handle, grace: float) -> None:
        watched = self._watched.get(handle.pid)
        if watched is not None:
            watched.killed = True
            clients = watched.clients
        else:
            clients = await self._thread(lambda: self._cache.get(None))
        await self._retried(lambda: _cancel(clients, handle.pid))

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        if not _PID.match(pid):
            raise InfrastructureNotFound(f"not a Cloud Run execution name: {pid[:200]!r}")
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop

    @staticmethod
    async def _thread(fn: Callable[[], T]) -> T:
        return await to_thread.run_sync(fn)

    async def _retried(self, fn: Callable[[], T]) -> T:
        """A blocking SDK step in a thread, retried with the agent's one policy when transient."""

        async def attempt() -> T:
            return await to_thread.run_sync(fn)

        return await self._retry.call(attempt, retry_on=(BackendUnavailable,))


# -- blocking SDK steps (run in threads) -----------------------------------------------------------


def _create_job(clients: Clients, spec: JobSpec) -> bool:
    """Create the job and wait until it is ready; False when our own job already existed."""
    from google.api_core import exceptions as gexc
    from google.cloud import run_v2

    try:
        body = run_v2.Job.from_json(json.dumps(spec.body), ignore_unknown_fields=False)
    except Exception as exc:  # ParseError: keep the field names, drop any quoted value
        words = _QUOTED.sub(lambda m: m[0] if _NAME.fullmatch(m[0][1:-1]) else "'…'", str(exc))
        raise LaunchError(f"the Cloud Run job body is not a valid v2 Job: {words[:300]}") from None

    def create() -> Any:
        try:
            return clients.jobs.create_job(parent=spec.parent, job=body, job_id=spec.job_id)
        except gexc.Conflict:  # a create whose answer was lost, or a name in use
            return None

    operation = call(create, "jobs.create", missing=LaunchError)
    if operation is not None:
        call(lambda: operation.result(timeout=_CREATE_WAIT), "jobs.create", missing=LaunchError)
        return True
    existing = call(lambda: clients.jobs.get_job(name=spec.name), "jobs.get", missing=LaunchError)
    if (
        spec.flow_run_label is not None
        and existing.labels.get("prefect-io-flow-run-id") != spec.flow_run_label
    ):
        raise LaunchError(
            f"a Cloud Run job named {spec.job_id} already exists and belongs to another flow run; "
            "set the job variable 'name' to something else"
        )
    return False


def _executions(clients: Clients, job_name: str) -> list[str]:
    listed = call(
        lambda: list(clients.executions.list_executions(parent=job_name)),
        "executions.list",
        missing=LaunchError,
    )
    newest_first = sorted(
        listed, key=lambda e: e.create_time.timestamp() if has_time(e, "create_time") else 0.0
    )
    return [e.name for e in reversed(newest_first)]


def _poll(watched: _Watched) -> Outcome | None:
    """One status read: the outcome once the execution has ended, None while it runs."""
    clients, name = watched.clients, watched.handle.pid
    execution = call(lambda: clients.executions.get_execution(name=name), "executions.get")
    if has_time(execution, "completion_time"):
        tasks = call(lambda: list(clients.tasks.list_tasks(parent=name)), "tasks.list")
        return outcome_of(execution, tasks, killed=watched.killed, timeout=watched.timeout)
    if started(execution):
        watched.start_deadline = None
    elif watched.start_deadline is not None and time.monotonic() > watched.start_deadline:
        _cancel(clients, name)
        waiting = condition_message(execution) or "still waiting for resources"
        return Outcome(
            Reason.START_FAILED,
            detail=f"start timeout: the Cloud Run execution did not start within {watched.start_within:g} s "
            f"({waiting}); flow-agent cancelled it",
        )
    return None


def _read_outcome(clients: Clients, name: str, *, killed: bool, timeout: int | None) -> Outcome | None:
    execution = call(lambda: clients.executions.get_execution(name=name), "executions.get")
    if not has_time(execution, "completion_time"):
        return None
    tasks = call(lambda: list(clients.tasks.list_tasks(parent=name)), "tasks.list")
    return outcome_of(execution, tasks, killed=killed, timeout=timeout)


def _cancel(clients: Clients, name: str) -> None:
    """Cancel an execution; already ended or gone is fine (kill is idempotent)."""
    from google.api_core import exceptions as gexc

    def cancel() -> None:
        with contextlib.suppress(gexc.FailedPrecondition):  # it completed before the cancel arrived
            clients.executions.cancel_execution(name=name)

    with contextlib.suppress(InfrastructureNotFound):
        call(cancel, "executions.cancel")
