"""The Cloud Run v2 clients, their credentials, and the one place SDK errors are classified.

Everything here is blocking (the `run_v2` REST clients): the backend calls it through
`agent.backends.sdk.SdkCalls` built with `classify`, so SDK errors leave the backend only
as the errors of agent/backends/base.py, worded with the platform's own message and never
with a secret.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exc
from google.auth.transport.requests import AuthorizedSession
from google.cloud import run_v2

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError

__all__ = ["LOGGING_DEFAULT", "Clients", "ClientCache", "classify", "words"]

LOGGING_DEFAULT: Final = "https://logging.googleapis.com"

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    gexc.RetryError,
    gexc.Aborted,
)


@dataclass(frozen=True)
class Clients:
    jobs: run_v2.JobsClient
    executions: run_v2.ExecutionsClient
    tasks: run_v2.TasksClient
    # Cloud Logging has no client here (google-cloud-logging is not a dependency): its REST
    # API through the same credentials, `entries:list` at `logging_url` (see output.py)
    logs: AuthorizedSession = field(repr=False)
    logging_url: str = LOGGING_DEFAULT


def classify(
    exc: Exception, what: str, *, missing: type[BackendError] = InfrastructureNotFound
) -> BackendError:
    """The backend error for an SDK exception (`what` names the call in messages).

    Not found is `missing`: InfrastructureNotFound for an execution we watch, LaunchError
    when the project, region or job a launch needs does not exist.
    """
    if isinstance(exc, gexc.NotFound):
        hint = "; check the project and region" if missing is LaunchError else ""
        return missing(f"Cloud Run {what}: not found: {exc.message}{hint}")
    if isinstance(exc, _TRANSIENT):
        return BackendUnavailable(f"Cloud Run {what}: {words(exc)} (will retry)")
    if isinstance(exc, gexc.Unauthenticated | gexc.PermissionDenied):
        return LaunchError(
            f"Cloud Run {what}: {words(exc)}; give the credentials the Cloud Run Developer role "
            "(run.jobs.* and run.executions.*) in this project"
        )
    if isinstance(exc, gexc.GoogleAPICallError):  # 400, 409 outside create, 412: the request is wrong
        return LaunchError(f"Cloud Run {what}: {words(exc)}")
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return LaunchError(
            "no Google credentials: give the GcpCredentials block service_account_info, or set up "
            "Application Default Credentials for the agent"
        )
    if isinstance(exc, auth_exc.TransportError | auth_exc.RefreshError | ConnectionError | OSError):
        # RefreshError: the token endpoint failed; its text may quote the key's id, not the key
        return BackendUnavailable(f"Cloud Run {what}: {type(exc).__name__} (will retry)")
    if isinstance(exc, concurrent.futures.TimeoutError):
        return BackendUnavailable(f"Cloud Run {what}: no answer in time (will retry)")
    # anything else: its text is not ours to show (it may quote a request), its type is
    return BackendError(f"Cloud Run {what}: unexpected {type(exc).__name__}")


def words(exc: gexc.GoogleAPICallError) -> str:
    code = getattr(exc, "code", None)
    return f"{exc.message} (HTTP {int(code)})" if code else str(exc.message)


class ClientCache:
    """One set of clients per endpoint and credentials; built lazily (ADC lookup does I/O)."""

    def __init__(self, endpoint: str | None, credentials: Any = None, *, logging: str | None = None) -> None:
        self._endpoint = endpoint
        # a plain-HTTP Cloud Run endpoint is a local double, which serves the log route too
        local = endpoint if endpoint and endpoint.startswith("http://") else None
        self._logging = (logging or local or LOGGING_DEFAULT).rstrip("/")
        self._override = credentials
        self._clients: dict[str, Clients] = {}
        self._lock = threading.Lock()

    def get(self, credentials_block: Mapping[str, Any] | None) -> Clients:
        info = _service_account_info(credentials_block)
        key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest() if info else "adc"
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._build(info)
            return self._clients[key]

    def _build(self, info: Mapping[str, Any] | None) -> Clients:
        options = ClientOptions(api_endpoint=self._endpoint) if self._endpoint else None
        kwargs: dict[str, Any] = {"transport": "rest", "client_options": options}
        kwargs["credentials"] = credentials = self._credentials(info)
        return Clients(
            run_v2.JobsClient(**kwargs),
            run_v2.ExecutionsClient(**kwargs),
            run_v2.TasksClient(**kwargs),
            AuthorizedSession(credentials),
            self._logging,
        )

    def _credentials(self, info: Mapping[str, Any] | None) -> Any:
        if self._override is not None:
            return self._override
        if self._endpoint and self._endpoint.startswith("http://"):
            # a plain-HTTP endpoint is a local double: never send a token over it
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if info:
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_info(dict(info), scopes=_SCOPES)
            except (ValueError, KeyError) as exc:
                field = exc.args[0] if isinstance(exc, KeyError) else "private_key"
                raise LaunchError(
                    f"the GcpCredentials block's service_account_info is not a usable key (check {field!r}); "
                    "paste the whole JSON key file"
                ) from None
        import google.auth

        credentials, _project = google.auth.default(scopes=_SCOPES)
        return credentials


def _service_account_info(block: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The key from `service_account_info` (a dict or its JSON), else from `service_account_file`."""
    info = (block or {}).get("service_account_info")
    path = (block or {}).get("service_account_file")
    if not info and isinstance(path, str) and path:
        try:
            with open(path, encoding="utf-8") as key_file:
                info = key_file.read()
        except OSError as exc:
            raise LaunchError(
                f"cannot read the GcpCredentials block's service_account_file {path!r}: {exc.strerror}"
            ) from None
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            raise LaunchError("the GcpCredentials block's service account key is not JSON") from None
    return info if isinstance(info, Mapping) and info else None
