"""The Prefect REST API: client, wire models, error classification and the retry policy."""

from agent.api.client import ClaimResult, PrefectClient, auth_headers
from agent.api.errors import ApiError, AuthError, Conflict, NotFound, TransientError
from agent.api.models import Deployment, FlowRun, ScheduledRun, StateType, WorkPool
from agent.api.retry import RetryPolicy

__all__ = [
    "ApiError",
    "AuthError",
    "ClaimResult",
    "Conflict",
    "Deployment",
    "FlowRun",
    "NotFound",
    "PrefectClient",
    "RetryPolicy",
    "ScheduledRun",
    "StateType",
    "TransientError",
    "WorkPool",
    "auth_headers",
]
