"""The REST endpoints orchestration needs, on top of the agent's `PrefectClient`.

One function per endpoint, each going through `PrefectClient.request` (so through the one
retry policy and the one error classification). Nothing here decides *what* to do with
the answers: `deployments.py` and `batch.py` do.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from agent.api.client import PrefectClient
from agent.api.errors import ApiError, Conflict, NotFound
from agent.api.models import FlowRun, OrchestrationResult, StateType

__all__ = [
    "BULK_LIMIT",
    "DeploymentInfo",
    "DeploymentNotFound",
    "RunInfo",
    "bulk_delete_flow_runs",
    "bulk_set_flow_run_state",
    "count_flow_runs",
    "create_flow_run_from_deployment",
    "create_task_run",
    "delete_flow_run",
    "filter_flow_runs",
    "read_deployment",
    "read_deployments",
    "read_flow",
    "read_flow_run",
    "read_flows",
    "register_local_deployment",
    "set_flow_run_state",
    "set_task_run_state",
]

BULK_LIMIT = 50  # the server's BULK_OPERATION_LIMIT: 51 is answered 422
_PAGE = 200  # the server's default (and maximum) page size for filters


class RunInfo(FlowRun):
    """A flow run as orchestration sees it: the agent's `FlowRun` plus lineage and timing."""

    parent_task_run_id: str | None = None
    idempotency_key: str | None = None
    created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: float | None = None

    @property
    def state_label(self) -> str:
        """`Completed`, `Late`, `AwaitingRetry`...: the state's name, else its type."""
        if self.state is not None and self.state.name:
            return self.state.name
        return self.state_name or (self.current_type.value.title() if self.current_type else "Unknown")

    @property
    def is_final(self) -> bool:
        kind = self.current_type
        return kind is not None and kind.is_terminal


class DeploymentInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    flow_id: str
    version: str | None = None
    work_pool_name: str | None = None
    work_queue_name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)


class DeploymentNotFound(LookupError):
    """The deployment named (or its id) does not exist on the server."""


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


# -- deployments, flows ----------------------------------------------------------------------


async def read_deployment(client: PrefectClient, ref: str) -> DeploymentInfo:
    """A deployment by id or by `flow-name/deployment-name`."""
    ref = str(ref).strip()
    if _is_uuid(ref):
        path = f"/deployments/{ref}"
    else:
        flow, sep, name = ref.partition("/")
        if not sep or not flow or not name or "/" in name:
            raise ValueError(
                f"deployment {ref!r}: give its id or 'flow-name/deployment-name' "
                "(e.g. 'etl/nightly'; `prefect deployment ls` lists them)"
            )
        path = f"/deployments/name/{quote(flow, safe='')}/{quote(name, safe='')}"
    try:
        data = await client.request("GET", path)
    except NotFound:
        raise DeploymentNotFound(
            f"deployment {ref!r} not found on {client.api_url} "
            "(names are 'flow-name/deployment-name'; `prefect deployment ls` lists them)"
        ) from None
    return DeploymentInfo.model_validate(data)


async def read_deployments(client: PrefectClient, ids: Iterable[str]) -> list[DeploymentInfo]:
    wanted = sorted(set(ids))
    found: list[DeploymentInfo] = []
    for start in range(0, len(wanted), _PAGE):
        body = {"deployments": {"id": {"any_": wanted[start : start + _PAGE]}}, "limit": _PAGE}
        data = await client.request("POST", "/deployments/filter", json=body)
        found.extend(DeploymentInfo.model_validate(item) for item in data or [])
    return found


async def read_flow(client: PrefectClient, flow_id: str) -> dict[str, Any]:
    return await client.request("GET", f"/flows/{flow_id}")


async def read_flows(
    client: PrefectClient, *, ids: Iterable[str] = (), names: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Flows by id or by name (one filter request per 200)."""
    found: list[dict[str, Any]] = []
    for field, values in (("id", sorted(set(ids))), ("name", sorted(set(names)))):
        for start in range(0, len(values), _PAGE):
            body = {"flows": {field: {"any_": values[start : start + _PAGE]}}, "limit": _PAGE}
            found.extend(await client.request("POST", "/flows/filter", json=body) or [])
    return found


# -- flow runs ---------------------------------------------------------------------------------


async def create_flow_run_from_deployment(
    client: PrefectClient, deployment_id: str, body: dict[str, Any]
) -> RunInfo:
    """`POST /deployments/{id}/create_flow_run`: 201 a new run, 200 the run that already has
    this idempotency key. Retried on transient errors: callers send an idempotency key, so a
    retry after a lost answer finds the first run instead of creating a second."""
    data = await client.request("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)
    return RunInfo.model_validate(data)


async def read_flow_run(client: PrefectClient, run_id: str) -> RunInfo:
    return RunInfo.model_validate(await client.request("GET", f"/flow_runs/{run_id}"))


async def filter_flow_runs(
    client: PrefectClient,
    criteria: dict[str, Any],
    *,
    limit: int = _PAGE,
    offset: int = 0,
    sort: str = "ID_DESC",
) -> list[RunInfo]:
    body = {**criteria, "limit": min(limit, _PAGE), "offset": offset, "sort": sort}
    data = await client.request("POST", "/flow_runs/filter", json=body)
    return [RunInfo.model_validate(item) for item in data or []]


async def count_flow_runs(client: PrefectClient, criteria: dict[str, Any]) -> int:
    return int(await client.request("POST", "/flow_runs/count", json=criteria) or 0)


async def delete_flow_run(client: PrefectClient, run_id: str) -> bool:
    """`DELETE /flow_runs/{id}`; False if it was already gone."""
    try:
        await client.request("DELETE", f"/flow_runs/{run_id}")
    except NotFound:
        return False
    return True


def _refused(exc: ApiError) -> bool:
    """The server has no such endpoint (older than the bulk routes) or will not take it."""
    return exc.status in (404, 405, 501)


async def bulk_delete_flow_runs(
    client: PrefectClient, flow_runs: dict[str, Any], *, limit: int = BULK_LIMIT
) -> list[str] | None:
    """Delete up to `limit` runs matching a FlowRunFilter in one transaction; the ids deleted,
    or None when the server has no bulk endpoint."""
    body = {"flow_runs": flow_runs, "limit": min(limit, BULK_LIMIT)}
    try:
        data = await client.request("POST", "/flow_runs/bulk_delete", json=body)
    except ApiError as exc:
        if _refused(exc):
            return None
        raise
    return [str(i) for i in (data or {}).get("deleted", [])]


async def bulk_set_flow_run_state(
    client: PrefectClient,
    flow_runs: dict[str, Any],
    state: StateType,
    *,
    message: str | None = None,
    force: bool = False,
    limit: int = BULK_LIMIT,
) -> list[dict[str, Any]] | None:
    """Propose one state to up to `limit` runs matching a filter; the per-run orchestration
    results (`flow_run_id`, `status`, `state`), or None when the endpoint does not exist."""
    body = {
        "flow_runs": flow_runs,
        "state": {"type": state.value, "name": state.value.title(), "message": message},
        "force": force,
        "limit": min(limit, BULK_LIMIT),
    }
    try:
        data = await client.request("POST", "/flow_runs/bulk_set_state", json=body)
    except ApiError as exc:
        if _refused(exc):
            return None
        raise
    return list((data or {}).get("results", []))


async def set_flow_run_state(
    client: PrefectClient, run_id: str, state: StateType, *, message: str | None = None, force: bool = False
) -> OrchestrationResult:
    return await client.set_state(run_id, state, message=message, force=force)


# -- task runs (the parent's placeholder for a child run) ---------------------------------------


async def create_task_run(client: PrefectClient, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /task_runs/`: the server returns the existing task run for the same
    (flow_run_id, task_key, dynamic_key), so a retry never creates two."""
    return await client.request("POST", "/task_runs/", json=body)


async def set_task_run_state(
    client: PrefectClient, task_run_id: str, state: StateType, *, message: str | None = None
) -> None:
    body = {
        "state": {"type": state.value, "name": state.value.title(), "message": message},
        "force": True,
    }
    await client.request("POST", f"/task_runs/{task_run_id}/set_state", json=body)


# -- registering a local flow file as a deployment (examples, scripts) -----------------------------


async def register_local_deployment(
    client: PrefectClient,
    *,
    flow_name: str,
    name: str,
    pool: str,
    entrypoint: str,
    directory: str,
    job_variables: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    tags: list[str] | None = None,
) -> DeploymentInfo:
    """Create or update a deployment of a flow in a local directory, served by a process pool
    (created with the default base job template if missing). The engine's pull step moves
    into `directory` and loads `entrypoint` (`file.py:function`). Idempotent: the server
    upserts deployments on (flow, name)."""
    from agent.infra.defaults import default_base_job_template

    if await client.read_work_pool(pool) is None:
        with contextlib.suppress(Conflict):  # created meanwhile, by an agent or another script
            await client.create_work_pool(pool, "process", default_base_job_template("process"))
    flow = await client.request("POST", "/flows/", json={"name": flow_name})
    body = {
        "name": name,
        "flow_id": flow["id"],
        "entrypoint": entrypoint,
        "path": directory,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": directory}}],
        "work_pool_name": pool,
        "job_variables": job_variables or {},
        "parameters": parameters or {},
        "tags": tags or [],
        "enforce_parameter_schema": False,
    }
    return DeploymentInfo.model_validate(await client.request("POST", "/deployments/", json=body))
