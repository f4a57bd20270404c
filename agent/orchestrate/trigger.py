"""`run_deployment`: trigger a deployment's flow run, link it to the caller, wait or not
(the waiting itself is `agent.orchestrate.wait`).

Semantics follow Prefect 3.8.8's `prefect.deployments.run_deployment` (read
`prefect/deployments/flow_runs.py`), without importing Prefect:

1. Resolve the deployment: an id, or `flow-name/deployment-name`.
2. Called inside a running flow run (Prefect's context when Prefect is already loaded in the
   process, else `PREFECT__FLOW_RUN_ID`, which the agent sets for every run it launches), create a
   placeholder task run in the parent flow run (task key
   `prefect.deployments.flow_runs.run_deployment.<slug>`, state PENDING) and give its id to the
   child as `parent_task_run_id`: the Prefect UI shows the child as a subflow of the parent.
3. `POST /deployments/{id}/create_flow_run` with state SCHEDULED at `scheduled_time` (now by
   default), parameters (merged with the deployment's by the server), tags, job variables
   (this run's infrastructure overrides), name, idempotency key.
4. `timeout=0`: return the created run at once. `None`: poll every `poll_interval` seconds
   until the run is COMPLETED/FAILED/CRASHED/CANCELLED. A number: wait at most that long and
   return the run as it stands (never raises on timeout).

Differences from Prefect, all on the safe side:

- Without an `idempotency_key` a fresh one (`flow-agent:<uuid>`) is sent, so the create
  request can be retried on a 503 or a lost answer without ever creating two runs.
- While waiting, the parent's placeholder task run follows the child (RUNNING, then
  COMPLETED / FAILED / CANCELLED), instead of staying PENDING forever.
- A transient error while waiting does not end the wait: the next poll tries again.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from agent.api.client import PrefectClient
from agent.api.deployments import find_deployment
from agent.api.flow_runs import create_flow_run_from_deployment
from agent.api.flows import read_flow
from agent.api.models import Deployment, RunInfo
from agent.api.task_runs import create_task_run
from agent.orchestrate.parse import as_utc
from agent.orchestrate.wait import OnUpdate, PlaceholderSync, wait_for_flow_run
from agent.settings import Settings

__all__ = [
    "ParentLink",
    "arun_deployment",
    "client_from_environment",
    "client_from_settings",
    "run_deployment",
]

log = structlog.get_logger("agent.orchestrate")


# -- the caller's flow run -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentLink:
    """Where a child run is attached: the parent flow run, and the task run calling us if any."""

    flow_run_id: str
    task_run_id: str | None = None


def _parent_from_prefect() -> ParentLink | None:
    """Prefect's own run context, when Prefect is *already* loaded in this process (we are
    inside a flow run's engine). Never imports Prefect."""
    context = sys.modules.get("prefect.context")
    if context is None:
        return None
    try:
        flow_ctx = context.FlowRunContext.get()
        task_ctx = context.TaskRunContext.get()
    except Exception:  # noqa: BLE001 - a changed Prefect internals must not break the trigger
        return None
    flow_run = getattr(flow_ctx, "flow_run", None) if flow_ctx else None
    task_run = getattr(task_ctx, "task_run", None) if task_ctx else None
    if flow_run is not None:
        parent_task = None
        if task_run is not None and str(task_run.flow_run_id) == str(flow_run.id):
            parent_task = str(task_run.id)
        return ParentLink(str(flow_run.id), parent_task)
    if task_run is not None and task_run.flow_run_id:
        return ParentLink(str(task_run.flow_run_id), str(task_run.id))
    return None


def _detect_parent() -> ParentLink | None:
    """The running flow run we are called from, if any.

    This is a public entry point, like the CLI, so it may look at the process environment:
    the agent (and Prefect's workers) start every flow run with `PREFECT__FLOW_RUN_ID`.
    """
    found = _parent_from_prefect()
    if found is not None:
        return found
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID", "").strip()
    return ParentLink(run_id) if run_id else None


def client_from_settings(settings: Settings) -> PrefectClient:
    """A client for the settings' server, credentials and retry policy; without a server
    URL, the local embedded server's address (what `flow-agent start` serves)."""
    local = f"http://127.0.0.1:{settings.server_port}/api"
    return PrefectClient.from_settings(settings, api_url=settings.api_url or local)


def client_from_environment() -> PrefectClient:
    """`client_from_settings` for PREFECT_API_URL / PREFECT_API_KEY / PREFECT_API_AUTH_STRING
    (or their FLOW_AGENT_* twins), read by the agent's settings."""
    return client_from_settings(Settings())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


async def _link_to_parent(
    client: PrefectClient,
    parent: ParentLink,
    deployment: Deployment,
    deployment_name: str,
    parameters: Mapping[str, Any],
    idempotency_key: str | None,
) -> str:
    """Create the placeholder task run in the parent flow run; its id."""
    task_inputs: dict[str, list[dict[str, str]]] = {name: [] for name in parameters}
    if parent.task_run_id:
        task_inputs["__parents__"] = [{"input_type": "task_run", "id": parent.task_run_id}]
    # The server returns the existing task run for the same (flow run, task key, dynamic
    # key): the caller's idempotency key maps to one placeholder, otherwise every call is new.
    dynamic_key = f"idempotency:{idempotency_key}" if idempotency_key else uuid.uuid4().hex
    task_run = await create_task_run(
        client,
        flow_run_id=parent.flow_run_id,
        name=deployment_name,
        task_key=f"prefect.deployments.flow_runs.run_deployment.{_slug(deployment_name)}",
        dynamic_key=dynamic_key,
        task_version=deployment.version,
        task_inputs=task_inputs,
    )
    return task_run.id


# -- run_deployment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One `run_deployment` call's arguments about the run itself (not how it is made)."""

    name: str | uuid.UUID
    parameters: Mapping[str, Any] | None
    scheduled_time: datetime | None
    timeout: float | None
    poll_interval: float
    idempotency_key: str | None
    tags: Iterable[str] | None
    job_variables: Mapping[str, Any] | None
    flow_run_name: str | None
    work_queue_name: str | None


async def _arun(
    request: _Request,
    *,
    parent: ParentLink | None,
    client: PrefectClient | None,
    on_update: OnUpdate | None,
) -> RunInfo:
    if request.timeout is not None and request.timeout < 0:
        raise ValueError("timeout cannot be negative")
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(client_from_environment())
        return await _trigger(client, request, parent=parent, on_update=on_update)


async def _parent_link(
    client: PrefectClient, parent: ParentLink, ref: str, deployment: Deployment, request: _Request
) -> tuple[str, PlaceholderSync]:
    """The calling flow run's placeholder task run for this child, as Prefect makes it."""
    if "/" in ref:
        deployment_name = ref
    else:
        flow = await read_flow(client, deployment.flow_id)
        deployment_name = f"{flow.name}/{deployment.name}"
    params = dict(request.parameters or {})
    task_run_id = await _link_to_parent(
        client, parent, deployment, deployment_name, params, request.idempotency_key
    )
    return task_run_id, PlaceholderSync(client, task_run_id)


async def _trigger(
    client: PrefectClient,
    request: _Request,
    *,
    parent: ParentLink | None,
    on_update: OnUpdate | None,
) -> RunInfo:
    ref = str(request.name)
    deployment = await find_deployment(client, ref)
    placeholder: PlaceholderSync | None = None
    parent_task_run_id = None
    if parent is not None:
        parent_task_run_id, placeholder = await _parent_link(client, parent, ref, deployment, request)

    scheduled_time = request.scheduled_time
    run = await create_flow_run_from_deployment(
        client,
        deployment.id,
        parameters=dict(request.parameters or {}),
        scheduled_time=as_utc(scheduled_time) if scheduled_time is not None else datetime.now(UTC),
        idempotency_key=request.idempotency_key or f"flow-agent:{uuid.uuid4()}",
        parent_task_run_id=parent_task_run_id,
        name=request.flow_run_name or None,
        tags=request.tags,
        job_variables=request.job_variables,
        work_queue_name=request.work_queue_name or None,
    )
    log.info(
        "flow run created",
        flow_run_id=run.id,
        flow_run_name=run.name,
        deployment=ref,
        parent_task_run_id=parent_task_run_id,
    )
    if on_update is not None:
        on_update(run)
    if request.timeout == 0:
        return run
    result = await wait_for_flow_run(
        client,
        run.id,
        timeout=request.timeout,
        poll_interval=request.poll_interval,
        on_update=on_update,
        last=run,
        after_poll=placeholder.flush if placeholder else None,
    )
    if placeholder is not None:
        await placeholder.flush(result)
    return result


async def arun_deployment(
    name: str | uuid.UUID,
    parameters: Mapping[str, Any] | None = None,
    scheduled_time: datetime | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - Prefect's run_deployment API
    poll_interval: float = 5,
    idempotency_key: str | None = None,
    tags: Iterable[str] | None = None,
    job_variables: Mapping[str, Any] | None = None,
    flow_run_name: str | None = None,
    *,
    work_queue_name: str | None = None,
    as_subflow: bool = True,
    client: PrefectClient | None = None,
    on_update: OnUpdate | None = None,
) -> RunInfo:
    """Create a flow run of a deployment; return it at once, when it ends, or at `timeout`.

    Args:
        name: the deployment's id or `"flow-name/deployment-name"`.
        parameters: this run's parameters, merged over the deployment's by the server.
        scheduled_time: when it should start (timezone-aware; naive is local time). Now by
            default. The run's `expected_start_time` is this time.
        timeout: 0 returns the created run at once; None waits until the run is final; a
            number waits at most that many seconds and returns the run as it stands.
        poll_interval: seconds between reads of the run while waiting.
        idempotency_key: calls with the same key (for this deployment) return the same run.
        tags: the run's tags (the deployment's tags when None).
        job_variables: infrastructure overrides for this run only (`{"env": {...}}`,
            `{"image": ...}`, dotted keys such as `"env.FOO"` work too).
        flow_run_name: the run's name (a generated one when None).
        work_queue_name: another queue of the deployment's pool.
        as_subflow: link the run to the calling flow run (when called inside one).
        client: a `PrefectClient` to use; by default one is made from PREFECT_API_URL,
            PREFECT_API_KEY / PREFECT_API_AUTH_STRING (the agent's settings).
        on_update: called with the run after its creation and after every poll.

    Raises:
        DeploymentNotFound: no such deployment. ValueError: a negative timeout or a badly
        formed name. `agent.api.errors.ApiError`: the server refused the request (e.g. 409
        when parameters fail the deployment's schema).
    """
    request = _Request(
        name,
        parameters,
        scheduled_time,
        timeout,
        poll_interval,
        idempotency_key,
        tags,
        job_variables,
        flow_run_name,
        work_queue_name,
    )
    parent = _detect_parent() if as_subflow else None
    return await _arun(request, parent=parent, client=client, on_update=on_update)


def run_deployment(
    name: str | uuid.UUID,
    parameters: Mapping[str, Any] | None = None,
    scheduled_time: datetime | None = None,
    timeout: float | None = None,
    poll_interval: float = 5,
    idempotency_key: str | None = None,
    tags: Iterable[str] | None = None,
    job_variables: Mapping[str, Any] | None = None,
    flow_run_name: str | None = None,
    *,
    work_queue_name: str | None = None,
    as_subflow: bool = True,
    on_update: OnUpdate | None = None,
) -> RunInfo:
    """The blocking twin of `arun_deployment` (same arguments, except `client`: it makes its
    own). Called while an event loop runs in this thread, it runs on a fresh loop in a worker
    thread and blocks until done; in async code prefer `await arun_deployment(...)`."""
    request = _Request(
        name,
        parameters,
        scheduled_time,
        timeout,
        poll_interval,
        idempotency_key,
        tags,
        job_variables,
        flow_run_name,
        work_queue_name,
    )
    # read here: context variables do not follow us into a worker thread
    parent = _detect_parent() if as_subflow else None
    call = functools.partial(_arun, request, parent=parent, client=None, on_update=on_update)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(call)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-deployment") as pool:
        return pool.submit(anyio.run, call).result()
