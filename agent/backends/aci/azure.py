"""The Azure SDK boundary: clients, credentials, the pid format and the one error mapping.

Every call into `azure.*` made by the ACI backend goes through this module, and every SDK
exception leaves it as one of the backend errors (`to_backend_error`), so nothing above
needs to know Azure's exception types.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError
from agent.infra.aci import AciCredentials

__all__ = ["ARM_DEFAULT", "AzureClients", "GroupRef", "to_backend_error"]

ARM_DEFAULT: Final = "https://management.azure.com"
_RESOURCE_GROUP_API: Final = "2021-04-01"
# An ARM resource id: no part may contain "/", so the id parses back unambiguously.
_PID_RE: Final = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.ContainerInstance/containerGroups/(?P<name>[^/]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GroupRef:
    """One container group. `pid` is its ARM resource id, the run's `infrastructure_pid`."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def pid(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerInstance/containerGroups/{self.name}"
        )

    @classmethod
    def parse(cls, pid: str) -> GroupRef:
        match = _PID_RE.fullmatch(pid.strip())
        if match is None:
            raise InfrastructureNotFound(
                f"not an ACI container group id: {pid!r}; expected /subscriptions/<id>/resourceGroups/"
                "<group>/providers/Microsoft.ContainerInstance/containerGroups/<name>"
            )
        return cls(match["sub"], match["rg"], match["name"])


def to_backend_error(exc: Exception, what: str) -> BackendError:
    """The one mapping from SDK errors to backend errors; `what` says what we were doing.

    Messages carry Azure's error code and message, never request bodies or credentials."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        # the credential itself failed (no token): a configuration problem, not ARM's answer
        return LaunchError(f"{what}: Azure authentication failed: {_first_line(exc)}")
    if isinstance(exc, ResourceNotFoundError):
        return InfrastructureNotFound(f"{what}: {_azure_message(exc)}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status in (408, 429) or status >= 500:
            return BackendUnavailable(
                f"{what}: Azure answered {status}: {_azure_message(exc)}", retry_after=_retry_after(exc)
            )
        if status in (401, 403):
            return LaunchError(f"{what}: Azure refused the request ({status}): {_azure_message(exc)}")
        if status == 404:
            return InfrastructureNotFound(f"{what}: {_azure_message(exc)}")
        if status == 0:  # an LRO that ended Failed: the operation's own error
            return LaunchError(f"{what}: {_azure_message(exc)}")
        return LaunchError(f"{what}: Azure rejected the request ({status}): {_azure_message(exc)}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, OSError, TimeoutError)):
        return BackendUnavailable(f"{what}: could not reach Azure: {_first_line(exc)}")
    return BackendError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


def _azure_message(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if code or message:
        return f"({code}) {message}" if code else str(message)
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _retry_after(exc: HttpResponseError) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class AzureClients:
    """One management client per (subscription, API version, credential), made on first use.

    The credential comes from the run's `AciCredentials`: client id, tenant id and secret
    all set -> `ClientSecretCredential`, else `DefaultAzureCredential`; `credential_kwargs`
    go to either. A fixed `credential` (tests: a static token) replaces both.
    """

    def __init__(
        self,
        base_url: str | None,
        *,
        credential: TokenCredential | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = (base_url or ARM_DEFAULT).rstrip("/")
        self._credential = credential
        self._client_kwargs = dict(client_kwargs or {})
        self._clients: dict[tuple[str, str, str], ContainerInstanceManagementClient] = {}
        self._locations: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def client(
        self, subscription_id: str, api_version: str | None, credentials: AciCredentials | None = None
    ) -> Any:
        key = (subscription_id, api_version or "", _credential_key(credentials))
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                kwargs = dict(self._client_kwargs)
                if api_version:
                    kwargs["api_version"] = api_version
                if self.base_url != ARM_DEFAULT:  # a sovereign cloud's tokens are for its own ARM
                    kwargs.setdefault("credential_scopes", [f"{self.base_url}/.default"])
                credential = self._credential or _make_credential(credentials)
                found = ContainerInstanceManagementClient(
                    credential, subscription_id, base_url=self.base_url, **kwargs
                )
                self._clients[key] = found
            return found

    def location_of(self, client: Any, ref: GroupRef) -> str:
        """The resource group's location (blocking; cached), for a body without `location`."""
        key = (ref.subscription_id, ref.resource_group.lower())
        if key in self._locations:
            return self._locations[key]
        url = f"/subscriptions/{ref.subscription_id}/resourcegroups/{ref.resource_group}"
        url += f"?api-version={_RESOURCE_GROUP_API}"
        response = client._send_request(HttpRequest("GET", url))  # the client's own auth pipeline
        if response.status_code != 200:
            try:
                error = response.json().get("error") or {}
            except ValueError:
                error = {}
            message = (
                f"({error.get('code')}) {error.get('message')}" if error else f"HTTP {response.status_code}"
            )
            problem = f"could not read the location of resource group {ref.resource_group!r}: {message}"
            fix = "set the job variable 'location' (or the block's location) to skip this lookup"
            if response.status_code == 429 or response.status_code >= 500:
                raise BackendUnavailable(problem)
            raise LaunchError(f"{problem}; {fix}")
        location = str(response.json().get("location") or "")
        if not location:
            raise LaunchError(
                f"resource group {ref.resource_group!r} has no location; set the job variable 'location'"
            )
        self._locations[key] = location
        return location

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort
                client.close()


def _credential_key(credentials: AciCredentials | None) -> str:
    """A cache key for a credential configuration; the secret only enters as a hash."""
    if credentials is None:
        return ""
    secret = credentials.client_secret.get_secret_value() if credentials.client_secret else ""
    parts = {
        "client_id": credentials.client_id,
        "tenant_id": credentials.tenant_id,
        "secret": hashlib.sha256(secret.encode()).hexdigest() if secret else "",
        "kwargs": credentials.credential_kwargs,
    }
    return json.dumps(parts, sort_keys=True, default=str)


def _make_credential(credentials: AciCredentials | None) -> TokenCredential:
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    credentials = credentials or AciCredentials()
    kwargs = dict(credentials.credential_kwargs)
    client_id, tenant_id, secret = credentials.client_id, credentials.tenant_id, credentials.client_secret
    if client_id and tenant_id and secret is not None:
        return ClientSecretCredential(tenant_id, client_id, secret.get_secret_value(), **kwargs)
    return DefaultAzureCredential(**kwargs)
