"""The Prefect REST API: client, wire models and error classification."""

from agent.api.client import ClaimResult, PrefectClient, auth_headers
from agent.api.errors import ApiError, AuthError, Conflict, NotFound, TransientError
from agent.api.models import Deployment, FlowRun, ScheduledRun, StateType, WorkPool

__all__ = [
    "ApiError",
    "AuthError",
    "ClaimResult",
    "Conflict",
    "Deployment",
    "FlowRun",
    "NotFound",
    "PrefectClient",
    "ScheduledRun",
    "StateType",
    "TransientError",
    "WorkPool",
    "auth_headers",
]
