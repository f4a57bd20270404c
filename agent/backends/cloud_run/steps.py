"""The backend's steps on Cloud Run: every blocking SDK call goes through `SdkCalls`.

Two `SdkCalls` share the agent's one retry policy and `client.classify`; they differ only
in what a missing resource means: `calls` says InfrastructureNotFound (an execution we
watch, a job we look up), `launching` says LaunchError (the project, region or job a
launch needs does not exist).

`run_job` is not idempotent, and a create whose answer was lost meets 409 when retried:
`create_job` and `run_once` therefore retry a whole step (create, then read back on a
conflict; look for an execution, then run), not a single call.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

from google.api_core import exceptions as gexc
from google.cloud import run_v2

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError
from agent.backends.cloud_run.client import ClientCache, Clients, classify
from agent.backends.cloud_run.output import logs_calls
from agent.backends.cloud_run.spec import JobSpec
from agent.backends.cloud_run.status import ended, has_time
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger
from agent.retry import RetryPolicy

__all__ = ["CloudRunSteps", "Status"]

_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
_NAME: Final = re.compile(r"[\w.\[\]]+")
_CREATE_WAIT: Final = 120.0  # seconds for the create LRO (the job becoming Ready)
_DELETE_WAIT: Final = 60.0
log = get_logger("agent.backends.cloud_run")

# One read of an execution: the execution, and its tasks once it has ended (else None).
Status = tuple[Any, Sequence[Any] | None]


class CloudRunSteps:
    def __init__(self, cache: ClientCache, retry: RetryPolicy) -> None:
        self._cache = cache
        self.calls = SdkCalls(retry, classify)
        self.launching = SdkCalls(retry, partial(classify, missing=LaunchError))
        self.logs = logs_calls(retry)  # Cloud Logging: the same policy, its own words

    async def clients(self, credentials: Any) -> Clients:
        """The clients for a GcpCredentials block's data (None: Application Default Credentials)."""
        return await self.launching.once(lambda: self._cache.get(credentials), "credentials")

    # -- launch -----------------------------------------------------------------------------

    async def create_job(self, clients: Clients, spec: JobSpec) -> bool:
        """Create the job and wait until it is ready; False when our own job already existed."""
        body = _job(spec)

        def create() -> Any:
            try:
                return clients.jobs.create_job(parent=spec.parent, job=body, job_id=spec.job_id)
            except gexc.Conflict:  # a create whose answer was lost, or a name in use
                return None

        async def attempt() -> bool:
            operation = await self.launching.once(create, "jobs.create")
            if operation is not None:
                await self.launching.once(lambda: operation.result(timeout=_CREATE_WAIT), "jobs.create")
                return True
            existing = await self.launching.once(lambda: clients.jobs.get_job(name=spec.name), "jobs.get")
            if not spec.owns(existing.labels):
                raise LaunchError(
                    f"a Cloud Run job named {spec.job_id} already exists and belongs to another flow run; "
                    "set the job variable 'name' to something else"
                )
            return False

        return await self.launching.retry.call(attempt, retry_on=(BackendUnavailable,))

    async def run_once(self, clients: Clients, job_name: str, *, look_first: bool) -> str:
        """Start the job's one execution; before each retry, adopt the execution that appeared."""
        attempts = 0

        async def attempt() -> str:
            nonlocal attempts
            attempts += 1
            if look_first or attempts > 1:
                existing = await self.executions(self.launching, clients, job_name)
                if existing:  # the job is this run's alone: its execution is ours
                    return existing[0]
            operation = await self.launching.once(lambda: clients.jobs.run_job(name=job_name), "jobs.run")
            with contextlib.suppress(Exception):  # metadata is the Execution; else list it
                if operation.metadata is not None and operation.metadata.name:
                    return str(operation.metadata.name)
            existing = await self.executions(self.launching, clients, job_name)
            if not existing:
                raise BackendUnavailable(
                    "Cloud Run jobs.run answered but no execution is listed yet (will retry)"
                )
            return existing[0]

        return await self.launching.retry.call(attempt, retry_on=(BackendUnavailable,))

    @staticmethod
    async def executions(calls: SdkCalls, clients: Clients, job_name: str) -> list[str]:
        """The job's executions, newest first (the API sorts so; sorted here all the same)."""
        listed = await calls.once(
            lambda: list(clients.executions.list_executions(parent=job_name)), "executions.list"
        )
        oldest_first = sorted(
            listed, key=lambda e: e.create_time.timestamp() if has_time(e, "create_time") else 0.0
        )
        return [e.name for e in reversed(oldest_first)]

    # -- find ---------------------------------------------------------------------------------

    async def find(self, clients: Clients, spec: JobSpec) -> str | None:
        """The newest execution of the job `spec` names, when that job is this run's; None when
        there is no such job, it is another run's, or it has no execution."""

        async def attempt() -> str | None:
            try:
                job = await self.calls.once(lambda: clients.jobs.get_job(name=spec.name), "jobs.get")
                if not spec.owns(job.labels):
                    return None
                names = await self.executions(self.calls, clients, spec.name)
            except InfrastructureNotFound:
                return None
            return names[0] if names else None

        return await self.calls.retry.call(attempt, retry_on=(BackendUnavailable,))

    # -- watch, kill, clean up ------------------------------------------------------------------

    async def read(self, clients: Clients, name: str, *, retry: bool) -> Status:
        """The execution, and its tasks (exit codes, signals) once it has ended (its Completed
        condition is terminal: `completion_time` is not ordered with the rest)."""

        async def attempt() -> Status:
            execution = await self.calls.once(
                lambda: clients.executions.get_execution(name=name), "executions.get"
            )
            if not ended(execution):
                return execution, None
            tasks = await self.calls.once(lambda: list(clients.tasks.list_tasks(parent=name)), "tasks.list")
            return execution, tasks

        if not retry:
            return await attempt()
        return await self.calls.retry.call(attempt, retry_on=(BackendUnavailable,))

    async def cancel(self, clients: Clients, name: str, *, retry: bool = True) -> None:
        """Cancel an execution; already ended or gone is fine (kill is idempotent). Whether it
        was cancelled is read from the execution afterwards, never assumed from the call."""

        def cancel() -> None:
            # it ended before the cancel arrived: FAILED_PRECONDITION, which the REST transport
            # raises by its HTTP status (400) as BadRequest, the gRPC one as FailedPrecondition
            try:
                clients.executions.cancel_execution(name=name)
            except (gexc.FailedPrecondition, gexc.BadRequest) as exc:
                if not _already_ended(exc):
                    raise

        with contextlib.suppress(InfrastructureNotFound):
            if retry:
                await self.calls(cancel, "executions.cancel")
            else:
                await self.calls.once(cancel, "executions.cancel")

    async def delete_own_job(self, clients: Clients, spec: JobSpec) -> None:
        """After a failed launch: delete the run's job if it exists and is this run's (its
        flow-run label); a failure is logged by the caller's cleanup, never raised over the
        launch's own error."""
        try:
            job = await self.calls(lambda: clients.jobs.get_job(name=spec.name), "jobs.get")
            if spec.owns(job.labels):
                await self.delete_job(clients, spec.name)
        except InfrastructureNotFound:
            return
        except BackendError as exc:
            log.warning(
                "could not delete the Cloud Run job of a failed launch", job=spec.name, error=str(exc)
            )

    async def delete_job(self, clients: Clients, job_name: str) -> None:
        """Delete the job and, with it, its executions; already gone is fine."""
        with contextlib.suppress(InfrastructureNotFound):
            await self.calls(
                lambda: clients.jobs.delete_job(name=job_name).result(timeout=_DELETE_WAIT), "jobs.delete"
            )


def _already_ended(exc: gexc.GoogleAPICallError) -> bool:
    """A refused cancel because the execution already ended: FAILED_PRECONDITION, by its
    gRPC class or (REST) by the `status` of the 400's error body."""
    if isinstance(exc, gexc.FailedPrecondition):
        return True
    try:
        status = exc.response.json()["error"]["status"]  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - no readable body: not evidence of an ended execution
        return False
    return status == "FAILED_PRECONDITION"


def _job(spec: JobSpec) -> run_v2.Job:
    try:
        return run_v2.Job.from_json(json.dumps(spec.body), ignore_unknown_fields=False)
    except Exception as exc:  # noqa: BLE001 - ParseError: keep the field names, drop any quoted value
        words = _QUOTED.sub(lambda m: m[0] if _NAME.fullmatch(m[0][1:-1]) else "'…'", str(exc))
        raise LaunchError(f"the Cloud Run job body is not a valid v2 Job: {words[:300]}") from None
