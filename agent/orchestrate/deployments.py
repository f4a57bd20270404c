"""`run_deployment`: trigger a deployment's flow run, link it to the caller, wait or not.

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
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import anyio
import structlog

from agent.api.client import PrefectClient
from agent.api.errors import ApiError, TransientError
from agent.api.models import StateType
from agent.orchestrate.api import (
    DeploymentInfo,
    RunInfo,
    create_flow_run_from_deployment,
    create_task_run,
    read_deployment,
    read_flow,
    read_flow_run,
    set_task_run_state,
)
from agent.settings import Settings

__all__ = [
    "EXIT_CODES",
    "OnUpdate",
    "ParentLink",
    "arun_deployment",
    "client_from_environment",
    "client_from_settings",
    "exit_code_for",
    "parse_assignments",
    "parse_duration",
    "parse_start",
    "run_deployment",
    "wait_for_flow_run",
]

log = structlog.get_logger("agent.orchestrate")

OnUpdate = Callable[[RunInfo], None]

# -- exit codes: one table for the CLI and for scripts -------------------------------------------

EXIT_CODES: Mapping[str, int] = {
    "COMPLETED": 0,
    "FAILED": 1,
    "CRASHED": 1,
    "CANCELLED": 2,
    "CANCELLING": 2,
}
EXIT_NOT_FINISHED = 3  # --timeout ran out and the run is still scheduled/pending/running/paused
EXIT_ERROR = 4  # the run could not be triggered or watched (deployment not found, server error)


def exit_code_for(run: RunInfo) -> int:
    kind = run.current_type
    return EXIT_CODES.get(kind.value if kind else "", EXIT_NOT_FINISHED)


# -- pure parsing (shared by the CLI and library callers) -----------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """`5h`, `90s`, `1h30m`, `7d`, `2w`, or plain seconds (`300`) -> timedelta."""
    value = str(text).strip().lower().replace(" ", "")
    if not value:
        raise ValueError("empty duration: give e.g. 30s, 5m, 5h, 7d or 1h30m")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(
                f"duration {text!r}: use a number with a unit (s, m, h, d, w), e.g. 30s, 5h, 7d, 1h30m"
            ) from None
    if seconds < 0:
        raise ValueError(f"duration {text!r} is negative")
    return timedelta(seconds=seconds)


def parse_start(
    at: str | None = None, in_: str | None = None, *, now: datetime | None = None
) -> datetime | None:
    """When a run should start: `--at TIME` or `--in DURATION` (not both); None means now.

    `at` is ISO 8601 (`2030-01-02T03:04:05+00:00`, `2030-01-02 03:04`; without an offset it is
    local time) or a clock time `HH:MM[:SS]` (the next such time, today or tomorrow).
    The result is timezone-aware (UTC).
    """
    if at and in_:
        raise ValueError("give either --at or --in, not both")
    current = (now or datetime.now(UTC)).astimezone(UTC)
    if in_:
        return current + parse_duration(in_)
    if not at:
        return None
    text = at.strip()
    try:
        clock = time.fromisoformat(text) if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text) else None
    except ValueError:
        clock = None
    if clock is not None:
        local_now = current.astimezone()
        candidate = local_now.replace(
            hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
        )
        if candidate <= local_now:
            candidate += timedelta(days=1)
        return candidate.astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"time {at!r}: use ISO 8601 (2030-01-02T03:04:05Z, '2030-01-02 03:04') or HH:MM"
        ) from None
    return _aware(moment)


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are local time (like `datetime.now()`); the result is UTC."""
    return moment.astimezone(UTC)


def parse_assignments(items: Iterable[str], *, what: str = "--param") -> dict[str, Any]:
    """`["n=5", "name=ada", "xs=[1,2]", "s=\"5\""]` -> {"n": 5, "name": "ada", "xs": [1, 2], "s": "5"}.

    A value that parses as JSON is taken as JSON; anything else is a string (as
    `prefect deployment run --param` does). Keys may contain dots (`env.FOO=bar` for job
    variables, which the agent expands).
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: write it as KEY=VALUE, e.g. {what} name=ada")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        result[key] = value
    return result


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
    api_url = settings.api_url or f"http://127.0.0.1:{settings.server_port}/api"
    return PrefectClient(
        api_url,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        auth_string=settings.api_auth_string.get_secret_value() if settings.api_auth_string else None,
        retry=settings.retry_policy,
        timeout=settings.request_timeout,
    )


def client_from_environment() -> PrefectClient:
    """`client_from_settings` for PREFECT_API_URL / PREFECT_API_KEY / PREFECT_API_AUTH_STRING
    (or their FLOW_AGENT_* twins), read by the agent's settings."""
    return client_from_settings(Settings())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


async def _link_to_parent(
    client: PrefectClient,
    parent: ParentLink,
    deployment: DeploymentInfo,
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
    body = {
        "name": deployment_name,
        "flow_run_id": parent.flow_run_id,
        "task_key": f"prefect.deployments.flow_runs.run_deployment.{_slug(deployment_name)}",
        "dynamic_key": dynamic_key,
        "task_version": deployment.version,
        "task_inputs": task_inputs,
        "state": {"type": "PENDING", "name": "Pending"},
    }
    task_run = await create_task_run(client, body)
    return str(task_run["id"])


# -- waiting -----------------------------------------------------------------------------------------


async def wait_for_flow_run(
    client: PrefectClient,
    run_id: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - Prefect's run_deployment API
    poll_interval: float = 5.0,
    on_update: OnUpdate | None = None,
    last: RunInfo | None = None,
    after_poll: Callable[[RunInfo], Awaitable[None]] | None = None,
) -> RunInfo:
    """Poll the run until it is final, or until `timeout` seconds passed (None: no limit);
    return it as last seen. Transient errors only skip a poll."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout cannot be negative")
    interval = max(float(poll_interval), 0.05)
    with anyio.move_on_after(timeout):
        while True:
            try:
                run = await read_flow_run(client, run_id)
            except TransientError as exc:
                log.info("could not read the flow run, polling again", flow_run_id=run_id, error=str(exc))
            else:
                last = run
                if on_update is not None:
                    on_update(run)
                if after_poll is not None:
                    await after_poll(run)
                if run.is_final:
                    return run
            await anyio.sleep(interval)
    if last is None:  # timed out before the first answer
        last = await read_flow_run(client, run_id)
    return last


_MIRROR = {
    StateType.RUNNING: StateType.RUNNING,
    StateType.COMPLETED: StateType.COMPLETED,
    StateType.FAILED: StateType.FAILED,
    StateType.CRASHED: StateType.FAILED,
    StateType.CANCELLED: StateType.CANCELLED,
}


class _PlaceholderSync:
    """Keeps the parent's placeholder task run in step with the child (best effort)."""

    def __init__(self, client: PrefectClient, task_run_id: str) -> None:
        self.client = client
        self.task_run_id = task_run_id
        self.sent: StateType | None = None

    async def flush(self, run: RunInfo) -> None:
        wanted = _MIRROR.get(run.current_type) if run.current_type else None
        if wanted is None or wanted == self.sent:
            return
        message = f"flow run {run.name!r} ({run.id}) is {run.state_label}"
        try:
            await set_task_run_state(self.client, self.task_run_id, wanted, message=message)
            self.sent = wanted
        except ApiError as exc:
            log.info("could not update the parent's task run", task_run_id=self.task_run_id, error=str(exc))


# -- run_deployment ------------------------------------------------------------------------------------


async def _arun(
    name: str | uuid.UUID,
    *,
    parameters: Mapping[str, Any] | None,
    scheduled_time: datetime | None,
    timeout: float | None,  # noqa: ASYNC109 - Prefect's run_deployment API
    poll_interval: float,
    idempotency_key: str | None,
    tags: Iterable[str] | None,
    job_variables: Mapping[str, Any] | None,
    flow_run_name: str | None,
    work_queue_name: str | None,
    parent: ParentLink | None,
    client: PrefectClient | None,
    on_update: OnUpdate | None,
) -> RunInfo:
    if timeout is not None and timeout < 0:
        raise ValueError("timeout cannot be negative")
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(client_from_environment())
        return await _trigger(
            client,
            str(name),
            parameters=dict(parameters or {}),
            scheduled_time=scheduled_time,
            timeout=timeout,
            poll_interval=poll_interval,
            idempotency_key=idempotency_key,
            tags=tags,
            job_variables=job_variables,
            flow_run_name=flow_run_name,
            work_queue_name=work_queue_name,
            parent=parent,
            on_update=on_update,
        )


async def _trigger(
    client: PrefectClient,
    ref: str,
    *,
    parameters: dict[str, Any],
    scheduled_time: datetime | None,
    timeout: float | None,  # noqa: ASYNC109 - Prefect's run_deployment API
    poll_interval: float,
    idempotency_key: str | None,
    tags: Iterable[str] | None,
    job_variables: Mapping[str, Any] | None,
    flow_run_name: str | None,
    work_queue_name: str | None,
    parent: ParentLink | None,
    on_update: OnUpdate | None,
) -> RunInfo:
    deployment = await read_deployment(client, ref)
    params = parameters

    placeholder: _PlaceholderSync | None = None
    parent_task_run_id = None
    if parent is not None:
        if "/" in ref:
            deployment_name = ref
        else:
            flow = await read_flow(client, deployment.flow_id)
            deployment_name = f"{flow['name']}/{deployment.name}"
        parent_task_run_id = await _link_to_parent(
            client, parent, deployment, deployment_name, params, idempotency_key
        )
        placeholder = _PlaceholderSync(client, parent_task_run_id)

    start = _aware(scheduled_time) if scheduled_time is not None else datetime.now(UTC)
    body: dict[str, Any] = {
        "state": {
            "type": "SCHEDULED",
            "name": "Scheduled",
            "state_details": {"scheduled_time": start.isoformat()},
        },
        "parameters": params,
        "idempotency_key": idempotency_key or f"flow-agent:{uuid.uuid4()}",
        "parent_task_run_id": parent_task_run_id,
    }
    if flow_run_name:
        body["name"] = flow_run_name
    if tags is not None:
        body["tags"] = list(tags)
    if job_variables is not None:
        body["job_variables"] = dict(job_variables)
    if work_queue_name:
        body["work_queue_name"] = work_queue_name

    run = await create_flow_run_from_deployment(client, deployment.id, body)
    log.info(
        "flow run created",
        flow_run_id=run.id,
        flow_run_name=run.name,
        deployment=ref,
        parent_task_run_id=parent_task_run_id,
    )
    if on_update is not None:
        on_update(run)
    if timeout == 0:
        return run

    result = await wait_for_flow_run(
        client,
        run.id,
        timeout=timeout,
        poll_interval=poll_interval,
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
    return await _arun(
        name,
        parameters=parameters,
        scheduled_time=scheduled_time,
        timeout=timeout,
        poll_interval=poll_interval,
        idempotency_key=idempotency_key,
        tags=tags,
        job_variables=job_variables,
        flow_run_name=flow_run_name,
        work_queue_name=work_queue_name,
        parent=_detect_parent() if as_subflow else None,
        client=client,
        on_update=on_update,
    )


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
    call = functools.partial(
        _arun,
        name,
        parameters=parameters,
        scheduled_time=scheduled_time,
        timeout=timeout,
        poll_interval=poll_interval,
        idempotency_key=idempotency_key,
        tags=tags,
        job_variables=job_variables,
        flow_run_name=flow_run_name,
        work_queue_name=work_queue_name,
        # read here: context variables do not follow us into a worker thread
        parent=_detect_parent() if as_subflow else None,
        client=None,
        on_update=on_update,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(call)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-deployment") as pool:
        return pool.submit(anyio.run, call).result()
