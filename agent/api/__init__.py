"""The Prefect REST API: every endpoint and wire model the agent and its tools use.

`client.py` is the transport and the agent loop's endpoints; `deployments`, `flows`,
`flow_runs`, `task_runs`, `variables` and `blocks` hold the rest, one resource each.
"""

from agent.api.client import ClaimResult, PrefectClient, auth_headers
from agent.api.errors import ApiError, AuthError, Conflict, DeploymentNotFound, NotFound, TransientError
from agent.api.models import Deployment, FlowRun, ScheduledRun, StateType, WorkPool

__all__ = [
    "ApiError",
    "AuthError",
    "ClaimResult",
    "Conflict",
    "Deployment",
    "DeploymentNotFound",
    "FlowRun",
    "NotFound",
    "PrefectClient",
    "ScheduledRun",
    "StateType",
    "TransientError",
    "WorkPool",
    "auth_headers",
]
