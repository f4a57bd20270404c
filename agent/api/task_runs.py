"""Task run endpoints: the placeholder a parent flow run shows for a child run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.api.client import PrefectClient
from agent.api.models import StateType, TaskRun

__all__ = ["create_task_run", "set_task_run_state"]


async def create_task_run(
    client: PrefectClient,
    *,
    flow_run_id: str,
    name: str,
    task_key: str,
    dynamic_key: str,
    task_version: str | None = None,
    task_inputs: Mapping[str, Any] | None = None,
    state: StateType = StateType.PENDING,
) -> TaskRun:
    """`POST /task_runs/`: the server returns the existing task run for the same
    (flow_run_id, task_key, dynamic_key), so a retry never creates two."""
    body = {
        "name": name,
        "flow_run_id": flow_run_id,
        "task_key": task_key,
        "dynamic_key": dynamic_key,
        "task_version": task_version,
        "task_inputs": dict(task_inputs or {}),
        "state": {"type": state.value, "name": state.value.title()},
    }
    return TaskRun.model_validate(await client.request("POST", "/task_runs/", json=body))


async def set_task_run_state(
    client: PrefectClient, task_run_id: str, state: StateType, *, message: str | None = None
) -> None:
    """Force a state on the task run (a placeholder follows its child, whatever it was)."""
    body = {
        "state": {"type": state.value, "name": state.value.title(), "message": message},
        "force": True,
    }
    await client.request("POST", f"/task_runs/{task_run_id}/set_state", json=body)
