"""Every server error is classified here, once.

The rest of the agent only sees these types: `TransientError` is retried by the one
retry policy, `AuthError` stops the agent, the others are answers about one request.
"""

from __future__ import annotations

import email.utils
import time

import httpx

from agent.retry import Retryable

__all__ = [
    "ApiError",
    "AuthError",
    "Conflict",
    "DeploymentNotFound",
    "NotFound",
    "TransientError",
    "classify_exception",
    "classify_response",
]

# 408/429 and every 5xx: the SQLite server answers 503 under write bursts on purpose
# ("retry later"), and proxies answer 502/504 while the server restarts.
_TRANSIENT_STATUS = {408, 425, 429}


class ApiError(Exception):
    """The server answered with an error. `str()` never contains credentials."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class TransientError(ApiError, Retryable):
    """Worth retrying: the same request may succeed later."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AuthError(ApiError):
    """401/403: our credentials are wrong or lack permission. Fatal for the agent."""


class NotFound(ApiError):
    """404."""


class DeploymentNotFound(NotFound, LookupError):
    """No deployment with this id or `flow-name/deployment-name` (a LookupError too, as it
    was before it became an API error)."""


class Conflict(ApiError):
    """409, e.g. creating a pool that another agent just created."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        if "detail" in body:
            return str(body["detail"])
        if "exception_detail" in body:
            return str(body["exception_detail"])[:500]
        if "exception_message" in body:
            return str(body["exception_message"])
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify_response(response: httpx.Response) -> ApiError | None:
    """None for a success; otherwise the error the caller should raise."""
    status = response.status_code
    if status < 400:
        return None
    where = f"{response.request.method} {response.request.url.path}"
    detail = _detail(response)
    message = f"{where} answered {status}: {detail}"
    if status in _TRANSIENT_STATUS or status >= 500:
        return TransientError(message, status=status, retry_after=_retry_after(response))
    if status == 401:
        return AuthError(
            f"{where} answered 401 Unauthorized: the Prefect server refused our credentials. "
            "Set PREFECT_API_KEY (Prefect Cloud, sent as Bearer) or PREFECT_API_AUTH_STRING "
            "(self-hosted basic auth, 'user:password') to what the server expects.",
            status=status,
            detail=detail,
        )
    if status == 403:
        return AuthError(
            f"{where} answered 403 Forbidden ({detail}): the credentials in PREFECT_API_KEY or "
            "PREFECT_API_AUTH_STRING are not allowed to do this; grant the permission or use "
            "other credentials.",
            status=status,
            detail=detail,
        )
    if status == 404:
        return NotFound(message, status=status, detail=detail)
    if status == 409:
        return Conflict(message, status=status, detail=detail)
    return ApiError(message, status=status, detail=detail)


def classify_exception(exc: Exception, url: str = "") -> ApiError | None:
    """Map a transport failure to a TransientError; None if it is not ours to classify."""
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        where = f" talking to {url}" if url else ""
        return TransientError(f"{type(exc).__name__}{where}: {exc or 'no details'}")
    return None
