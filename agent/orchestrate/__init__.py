"""Orchestrate from deployments: trigger runs (`run_deployment`) and act on many runs at once.

Library use never imports Prefect: it talks to the server with the agent's `PrefectClient`,
through the endpoints of `agent.api` (this package only composes them).

    from agent.orchestrate import run_deployment

    run = run_deployment("ingest/nightly", parameters={"table": "orders"}, timeout=None)
    print(run.state_type)   # COMPLETED, FAILED, ...
"""

from agent.api.errors import DeploymentNotFound
from agent.api.models import RunInfo
from agent.orchestrate.batch import (
    BatchResult,
    RunFilter,
    Selection,
    cancel_flow_runs,
    delete_flow_runs,
    select_flow_runs,
)
from agent.orchestrate.parse import exit_code_for, parse_assignments, parse_duration, parse_start
from agent.orchestrate.register import register_local_deployment
from agent.orchestrate.trigger import arun_deployment, run_deployment
from agent.orchestrate.wait import wait_for_flow_run

__all__ = [
    "BatchResult",
    "DeploymentNotFound",
    "RunFilter",
    "RunInfo",
    "Selection",
    "arun_deployment",
    "cancel_flow_runs",
    "delete_flow_runs",
    "exit_code_for",
    "parse_assignments",
    "parse_duration",
    "parse_start",
    "register_local_deployment",
    "run_deployment",
    "select_flow_runs",
    "wait_for_flow_run",
]
