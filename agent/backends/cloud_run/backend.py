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

**Watching** is the agent's one watch engine (agent/backends/engine.py) with
`watch.Executions` as its platform: each round reads every execution (one call each,
concurrently) every `watch_interval`; a completed one has its tasks read for the exit code
and signal, its job deleted, and its waiter woken. An execution that has not started
within the start deadline (the job's `timeout` unless the backend was given one) is
cancelled and reported START_FAILED.

**Finding** a run's workload (`find`, for an agent that did not launch it) needs no state:
the job's name comes from the rebuilt payload, its `prefect-io-flow-run-id` label must be
the run's, and its newest execution is the run's one.

Kill cancels the execution (Cloud Run sends SIGTERM, then SIGKILL); the watch loop then
sees it cancelled and cleans up. `grace` is Cloud Run's to apply.

**Output** (`stream_output`, or a job's own sink: a direct run) is the execution's Cloud
Logging entries, read after each status and drained after the end before the waiter wakes
(output.py); an adopted run with `stream_output` ships to its flow run's logs the same way.
Whatever `stream_output` says, a task the system ended with SIGKILL has the execution's
system log read once for its memory-limit entry (system_log.py): launched, adopted and
inspected runs alike.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

import anyio

from agent.backends.base import BackendOptions, Handle, InfrastructureNotFound, Job, output_sink
from agent.backends.cloud_run.client import ClientCache, Clients
from agent.backends.cloud_run.output import Output
from agent.backends.cloud_run.spec import job_spec
from agent.backends.cloud_run.status import outcome_of, sigkilled
from agent.backends.cloud_run.steps import CloudRunSteps
from agent.backends.cloud_run.system_log import read_system_log
from agent.backends.cloud_run.watch import Executions, ExecutionState
from agent.backends.engine import Watched, WatchEngine
from agent.infra.cloud_run import CloudRunRuntime
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = ["CloudRunBackend"]

_SETTLE: Final = 5.0  # seconds: Cloud Logging shows most entries within a few
_PID: Final = re.compile(r"^(?P<job>projects/[^/]+/locations/[^/]+/jobs/[^/]+)/executions/[^/]+$")
log = get_logger("agent.backends.cloud_run")


class CloudRunBackend:
    kind: ClassVar[str] = "cloud-run"
    remote: ClassVar[bool] = True
    runtime_type: ClassVar[type] = CloudRunRuntime

    def __init__(
        self, options: BackendOptions, *, credentials: object = None, start_timeout: float | None = None
    ) -> None:
        """`credentials` overrides every job's (tests: AnonymousCredentials);
        `start_timeout` overrides the start deadline taken from each job's `timeout`."""
        cache = ClientCache(options.gcp_endpoint, credentials, logging=options.gcp_logging_endpoint)
        self._steps = CloudRunSteps(cache, options.retry)
        self._start_timeout = start_timeout
        # the drain waits for late log entries twice a round, at most _SETTLE
        platform = Executions(self._steps, settle=min(_SETTLE, 2 * options.watch_interval))
        self._engine: WatchEngine[ExecutionState] = WatchEngine(
            "cloud-run", platform, interval=options.watch_interval, retry=options.retry
        )

    async def launch(self, job: Job[CloudRunRuntime]) -> Handle[CloudRunRuntime]:
        spec = job_spec(job.payload)
        runtime = job.runtime
        clients = await self._steps.clients(runtime.credentials)
        try:
            created = await self._steps.create_job(clients, spec)
            execution = await self._steps.run_once(clients, spec.name, look_first=not created)
        except BaseException:
            # a job created for an execution that never started (or whose creation failed half
            # way: the create LRO failed or timed out) is left behind by nobody; another run's
            # job of the same name is never touched
            if not runtime.keep_job:
                with anyio.CancelScope(shield=True):
                    await self._steps.delete_own_job(clients, spec)
            raise
        handle = Handle(self.kind, execution, job.flow_run_id, runtime)
        deadline = self._start_timeout if self._start_timeout is not None else runtime.timeout
        state = ExecutionState(clients, delete_job=not runtime.keep_job, timeout=runtime.timeout)
        if job.output is not None or runtime.stream_output:
            state.output = Output(output_sink(self.kind, job.flow_run_id, job.output))
        self._engine.track(Watched(handle, state, start_within=deadline))
        log.info("started Cloud Run execution", flow_run_id=job.flow_run_id, execution=execution)
        return handle

    async def find(self, job: Job[CloudRunRuntime]) -> Handle[CloudRunRuntime] | None:
        """The newest execution of the run's job: the job's name comes from the payload (derived
        from the flow run id) and its flow-run label must be this run's."""
        spec = job_spec(job.payload)
        clients = await self._steps.clients(job.runtime.credentials)
        execution = await self._steps.find(clients, spec)
        return None if execution is None else Handle(self.kind, execution, job.flow_run_id, job.runtime)

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._engine.get(handle.pid)
        if watched is None:  # launched by another agent (or before a restart)
            # its job is cleaned up as its launcher would have, when the run's options are known
            runtime = handle.runtime if isinstance(handle.runtime, CloudRunRuntime) else None
            delete = runtime is not None and not runtime.keep_job
            state = ExecutionState(await self._clients(handle), delete_job=delete, timeout=_timeout(handle))
            if runtime is not None and runtime.stream_output:
                state.output = Output(output_sink(self.kind, handle.flow_run_id))
            watched = self._engine.track(Watched(handle, state))
        return await self._engine.wait(watched)

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._engine.get(handle.pid)
        if watched is not None:
            return watched.outcome
        clients = await self._clients(handle)
        try:
            execution, tasks = await self._steps.read(clients, handle.pid, retry=True)
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"Cloud Run execution {handle.pid} no longer exists")
        if tasks is None:
            return None
        task = sigkilled(execution, tasks)
        system = None
        if task is not None:
            system = await read_system_log(self._steps.logs, clients, handle.pid, task, handle.flow_run_id)
        return outcome_of(execution, tasks, killed=False, timeout=_timeout(handle), system=system)

    async def kill(self, handle: Handle, grace: float) -> None:
        watched = self._engine.get(handle.pid)
        if watched is not None:
            watched.state.killed = True
            clients = watched.state.clients
        else:
            clients = await self._clients(handle)
        await self._steps.cancel(clients, handle.pid)

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        if not _PID.match(pid):
            raise InfrastructureNotFound(f"not a Cloud Run execution name: {pid[:200]!r}")
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        await self._engine.aclose()

    async def _clients(self, handle: Handle) -> Clients:
        """The clients for a handle this agent did not launch: its runtime's credentials when
        it was rebuilt with them, else Application Default Credentials."""
        runtime = handle.runtime
        return await self._steps.clients(
            runtime.credentials if isinstance(runtime, CloudRunRuntime) else None
        )


def _timeout(handle: Handle) -> int | None:
    return handle.runtime.timeout if isinstance(handle.runtime, CloudRunRuntime) else None
