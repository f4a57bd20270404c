"""Flow run endpoints for orchestration: create from a deployment, read, filter, count,
delete, and the bulk routes (50 runs per transaction).

The agent loop's own flow run calls (claim, set_state, infrastructure pid) are methods of
`PrefectClient`; these return the fuller `RunInfo` and are what `run_deployment`, batch
operations and the demo compose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from agent.api.client import PrefectClient
from agent.api.errors import ApiError, NotFound
from agent.api.models import BULK_LIMIT, FILTER_PAGE, RunInfo, RunStateResult, StateType

__all__ = [
    "bulk_delete_flow_runs",
    "bulk_set_flow_run_state",
    "count_flow_runs",
    "create_flow_run_from_deployment",
    "delete_flow_run",
    "filter_flow_runs",
    "read_flow_run",
]


async def create_flow_run_from_deployment(
    client: PrefectClient,
    deployment_id: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    scheduled_time: datetime | None = None,
    idempotency_key: str | None = None,
    parent_task_run_id: str | None = None,
    name: str | None = None,
    tags: Iterable[str] | None = None,
    job_variables: Mapping[str, Any] | None = None,
    work_queue_name: str | None = None,
) -> RunInfo:
    """`POST /deployments/{id}/create_flow_run`: 201 a new run, 200 the run that already has
    this idempotency key, so a retry after a lost answer finds the first run instead of
    creating a second. Parameters are merged over the deployment's by the server; what is
    None is left to the server's defaults (SCHEDULED now, the deployment's tags...)."""
    body: dict[str, Any] = {"parameters": dict(parameters or {})}
    if scheduled_time is not None:
        body["state"] = {
            "type": StateType.SCHEDULED.value,
            "name": "Scheduled",
            "state_details": {"scheduled_time": scheduled_time.isoformat()},
        }
    optional = {
        "idempotency_key": idempotency_key,
        "parent_task_run_id": parent_task_run_id,
        "name": name,
        "tags": list(tags) if tags is not None else None,
        "job_variables": dict(job_variables) if job_variables is not None else None,
        "work_queue_name": work_queue_name,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    data = await client.request("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)
    return RunInfo.model_validate(data)


async def read_flow_run(client: PrefectClient, run_id: str) -> RunInfo:
    return RunInfo.model_validate(await client.request("GET", f"/flow_runs/{run_id}"))


async def filter_flow_runs(
    client: PrefectClient,
    criteria: dict[str, Any],
    *,
    limit: int = FILTER_PAGE,
    offset: int = 0,
    sort: str = "ID_DESC",
) -> list[RunInfo]:
    """One page of `POST /flow_runs/filter` (at most 200)."""
    body = {**criteria, "limit": min(limit, FILTER_PAGE), "offset": offset, "sort": sort}
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
) -> list[RunStateResult] | None:
    """Propose one state to up to `limit` runs matching a filter; each run's orchestration
    result, or None when the endpoint does not exist."""
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
    return [RunStateResult.model_validate(item) for item in (data or {}).get("results", [])]
