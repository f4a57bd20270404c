"""Wire models for the parts of the Prefect API the agent reads.

Only the fields we use are declared; everything else is ignored, so newer servers that
add fields do not break us.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BULK_LIMIT",
    "FILTER_PAGE",
    "Deployment",
    "FlowRun",
    "OrchestrationResult",
    "ScheduledRun",
    "SetStateStatus",
    "State",
    "StateType",
    "WorkPool",
    "Worker",
]


BULK_LIMIT = 50  # the server's BULK_OPERATION_LIMIT: 51 is answered 422
FILTER_PAGE = 200  # the server's default (and maximum) page size for `/filter` endpoints


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StateType(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


class State(_Model):
    id: str | None = None
    type: StateType
    name: str | None = None
    message: str | None = None
    timestamp: datetime | None = None
    state_details: dict[str, Any] = Field(default_factory=dict)


class SetStateStatus(StrEnum):
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"
    WAIT = "WAIT"


class OrchestrationResult(_Model):
    state: State | None = None
    status: SetStateStatus
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def reason(self) -> str:
        return str(self.details.get("reason") or "")

    @property
    def delay_seconds(self) -> float:
        return float(self.details.get("delay_seconds") or 0)


class RunStateResult(OrchestrationResult):
    """One run's answer in `POST /flow_runs/bulk_set_state`."""

    flow_run_id: str


class FlowRun(_Model):
    id: str
    name: str = ""
    flow_id: str | None = None
    deployment_id: str | None = None
    work_queue_name: str | None = None
    work_pool_name: str | None = None
    state_type: StateType | None = None
    state_name: str | None = None
    state: State | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    job_variables: dict[str, Any] | None = None
    infrastructure_document_id: str | None = None
    infrastructure_pid: str | None = None
    tags: list[str] = Field(default_factory=list)
    labels: dict[str, Any] = Field(default_factory=dict)
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None

    @property
    def current_type(self) -> StateType | None:
        return self.state.type if self.state else self.state_type


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


class ScheduledRun(_Model):
    """One entry of `get_scheduled_flow_runs`: the run plus the pool and queue it came from."""

    work_pool_id: str
    work_queue_id: str
    flow_run: FlowRun


class WorkPool(_Model):
    id: str
    name: str
    type: str
    base_job_template: dict[str, Any] = Field(default_factory=dict)
    is_paused: bool = False
    concurrency_limit: int | None = None
    status: str | None = None


class Deployment(_Model):
    id: str
    name: str
    flow_id: str
    job_variables: dict[str, Any] = Field(default_factory=dict)
    infrastructure_document_id: str | None = None
    work_pool_name: str | None = None
    work_queue_name: str | None = None
    path: str | None = None
    entrypoint: str | None = None
    version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    updated: datetime | None = None  # Prefect's workers label jobs with it


class DeploymentCreate(_Model):
    """The body of `POST /deployments/` (an upsert on flow and name). Only the fields given
    are sent, so the server's defaults apply to the rest."""

    name: str
    flow_id: str
    work_pool_name: str | None = None
    entrypoint: str | None = None
    path: str | None = None
    pull_steps: list[dict[str, Any]] | None = None
    job_variables: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    tags: list[str] | None = None
    enforce_parameter_schema: bool | None = None


class Flow(_Model):
    id: str
    name: str


class TaskRun(_Model):
    id: str
    name: str = ""
    flow_run_id: str | None = None


class Variable(_Model):
    name: str
    value: Any = None  # any JSON


class Worker(_Model):
    """A worker row of a pool: who heartbeats it, and when it last did."""

    name: str
    status: str | None = None  # ONLINE | OFFLINE
    last_heartbeat_time: datetime | None = None
    heartbeat_interval_seconds: int | None = None
