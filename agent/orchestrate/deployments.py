"""The former home of `run_deployment` and its helpers, kept so existing imports still work.

The code lives in `agent.orchestrate.trigger` (creating the run, idempotency, the parent link),
`agent.orchestrate.wait` (watching a run to a final state) and `agent.orchestrate.parse`
(exit codes, durations, start times, KEY=VALUE assignments).
"""

from agent.orchestrate.parse import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_NOT_FINISHED,
    exit_code_for,
    parse_assignments,
    parse_duration,
    parse_start,
)
from agent.orchestrate.trigger import (
    ParentLink,
    arun_deployment,
    client_from_environment,
    client_from_settings,
    run_deployment,
)
from agent.orchestrate.wait import OnUpdate, wait_for_flow_run

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NOT_FINISHED",
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
