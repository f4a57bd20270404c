"""The task a flow run's launch made, found from the run alone (`EcsBackend.find`).

A launch marks its task with the run through `startedBy`: the payload's value, which is
the flow run id unless the configuration says otherwise (a flow run id is a 36-character
UUID, and 36 characters is what ECS allows), or the run's id added by the backend when a
customization removed it. `ListTasks` filters a cluster's tasks by `startedBy`, which must
then be its only filter besides the desired status, so it is asked twice: tasks ECS keeps
RUNNING, then STOPPED ones (in that order, so a task stopping meanwhile is still seen).
`DescribeTasks` reads them; a task is the run's when its `startedBy` is the run's own id,
or, where a configured `startedBy` is shared by many runs, when its container overrides
carry the run's PREFECT__FLOW_RUN_ID.

Limits, both ECS's: a task stopped more than about an hour ago has been forgotten, so it
cannot be found; and ListTasks is eventually consistent, so a task created a moment ago
may not be listed yet (a run is looked up only once its agent is known to be dead).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Final

from agent.backends.base import InfrastructureNotFound
from agent.backends.ecs.aws import Aws
from agent.backends.ecs.watch import BATCH
from agent.backends.sdk import SdkCalls

__all__ = ["find_task", "run_marker"]

_STARTED_BY_DISALLOWED: Final = re.compile(r"[^a-zA-Z0-9_/-]+")
_STARTED_BY_LIMIT: Final = 36
_RUN_ID_ENV: Final = "PREFECT__FLOW_RUN_ID"


def run_marker(flow_run_id: str) -> str:
    """The run's `startedBy`: its id in the characters ECS allows (a UUID is unchanged)."""
    return _STARTED_BY_DISALLOWED.sub("-", flow_run_id)[:_STARTED_BY_LIMIT]


async def find_task(
    sdk: SdkCalls, aws: Aws, request: Mapping[str, Any], flow_run_id: str
) -> dict[str, Any] | None:
    """The run's task as DescribeTasks gives it (a live one before an ended one, the newest
    first: a re-run of the run launches again), or None when ECS knows of none."""
    cluster = str(request.get("cluster") or "default")
    started_by = str(request.get("startedBy") or run_marker(flow_run_id))
    try:
        arns: list[str] = []
        for desired in ("RUNNING", "STOPPED"):
            arns += [a for a in await _list(sdk, aws, cluster, started_by, desired) if a not in arns]
        tasks = await _describe(sdk, aws, cluster, arns)
    except InfrastructureNotFound:  # no such cluster: nothing was ever started there
        return None
    ours = [task for task in tasks if _is_run(task, flow_run_id)]
    if not ours:
        return None
    return max(ours, key=lambda t: (t.get("desiredStatus") == "RUNNING", _created(t)))


async def _list(sdk: SdkCalls, aws: Aws, cluster: str, started_by: str, desired: str) -> list[str]:
    pages = aws.ecs.get_paginator("list_tasks").paginate(
        cluster=cluster, startedBy=started_by, desiredStatus=desired
    )
    answer = await sdk(pages.build_full_result, f"listing the {desired} ECS tasks of the flow run")
    return [str(arn) for arn in answer.get("taskArns") or []]


async def _describe(sdk: SdkCalls, aws: Aws, cluster: str, arns: list[str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for start in range(0, len(arns), BATCH):
        batch = arns[start : start + BATCH]
        answer = await sdk(
            lambda batch=batch: aws.ecs.describe_tasks(cluster=cluster, tasks=batch), "describing ECS tasks"
        )
        tasks += [dict(t) for t in answer.get("tasks") or []]
    return tasks


def _is_run(task: Mapping[str, Any], flow_run_id: str) -> bool:
    if task.get("startedBy") == run_marker(flow_run_id):
        return True
    overrides = task.get("overrides") or {}
    for container in overrides.get("containerOverrides") or []:
        for variable in container.get("environment") or []:
            if variable.get("name") == _RUN_ID_ENV:
                return bool(variable.get("value") == flow_run_id)
    return False


def _created(task: Mapping[str, Any]) -> float:
    created = task.get("createdAt")
    return created.timestamp() if isinstance(created, dt.datetime) else 0.0
