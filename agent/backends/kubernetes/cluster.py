"""One Kubernetes API server: its client, its identity, raw JSON calls, error mapping.

Requests go through the official client's `ApiClient` (auth, TLS, token refresh, proxies
from the kubeconfig) but with our JSON as it is: the typed `BatchV1Api` methods validate
the body into their pydantic models, which rejects fields newer than the client and could
reshape what the kind built, and `render` promises the payload is sent byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError

__all__ = ["ApiException", "Cluster", "Gone", "api_error", "cluster_key", "connect"]

_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
_TIMEOUT = (10.0, 30.0)  # connect, read (seconds) for ordinary requests
_CHUNK = 64 * 1024  # bytes read at a time from a streamed answer
_LINE_LIMIT = 1 << 20  # longest line of a streamed answer kept whole (bytes)
_HINTS = {
    401: "check the credentials in the kubeconfig or cluster_config",
    403: "check the RBAC rules of the agent's service account (jobs, pods, events in the namespace) "
    "and the namespace's ResourceQuota",
    404: "check that the namespace exists",
    409: "a job with that name exists already",
    422: "check the job manifest (job variables, base job template, customizations)",
}


class Gone(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


@dataclass
class Cluster:
    """The API server one configuration points at; `uid` identifies the cluster (kube-system's uid)."""

    key: str
    api: k8s.ApiClient
    uid: str | None = None
    identity_checked: bool = False
    _streams: set[Any] = field(default_factory=set)
    _closing: bool = False

    def call(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None
    ) -> Any:
        """One JSON request; ApiException on a non-2xx answer."""
        response = self._open(method, path, query, body, _TIMEOUT)
        raw = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=raw.decode(errors="replace"), data=None)
        return json.loads(raw) if raw else {}

    def stream(self, path: str, query: Mapping[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it; Gone on 410."""
        response = self._open("GET", path, {**query, "watch": "true"}, None, (10.0, timeout + 15))
        raw = response.response
        if not 200 <= response.status <= 299:
            response.read()
            if response.status == 410:
                raise Gone()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        self._streams.add(raw)
        try:
            if self._closing:  # closed while this request was on its way: no stream left behind
                return
            from kubernetes.watch.watch import iter_resp_lines

            for line in iter_resp_lines(raw):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Gone()
                    raise ApiException(status=status.get("code"), reason=status.get("message"))
                yield event
        finally:
            self._streams.discard(raw)
            raw.release_conn()

    def lines(self, path: str, query: Mapping[str, str], read_timeout: float) -> Iterator[str]:
        """The lines of one plain-text answer (a followed pod log) as they come, each cut at
        `_LINE_LIMIT` bytes, until the server ends it; ApiException on a non-2xx answer."""
        response = self._open("GET", path, query, None, (10.0, read_timeout))
        if not 200 <= response.status <= 299:
            body = response.read().decode(errors="replace")
            raise ApiException.from_response(http_resp=response, body=body, data=None)
        raw = response.response
        self._streams.add(raw)
        try:
            if self._closing:
                return
            pending = bytearray()
            for chunk in raw.stream(amt=_CHUNK, decode_content=True):
                pending.extend(chunk)
                *complete, rest = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace")
                pending = bytearray(rest)
                while len(pending) > _LINE_LIMIT:  # a line with no end in sight: what is there
                    yield pending[:_LINE_LIMIT].decode(errors="replace")
                    del pending[:_LINE_LIMIT]
            if pending:
                yield pending.decode(errors="replace")
        finally:
            self._streams.discard(raw)
            raw.release_conn()

    def close_streams(self) -> None:
        """Unblock watch threads at shutdown: their reads end at once, and none starts."""
        self._closing = True
        for raw in list(self._streams):
            # urllib3's way to end a read blocked in another thread (its socket, SHUT_RD)
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                raw.shutdown()

    def _open(self, method: str, path: str, query: Mapping[str, str] | None, body: Any, timeout: Any) -> Any:
        method, url, headers, body, _ = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=dict(_HEADERS),
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(method, url, headers, body, _request_timeout=timeout)

    def load_identity(self) -> None:
        """kube-system's uid, as Prefect 2 used it; None where RBAC forbids reading namespaces."""
        if self.identity_checked:
            return
        try:
            self.uid = self.call("GET", "/api/v1/namespaces/kube-system")["metadata"]["uid"]
        except (ApiException, KeyError, TypeError, ValueError):
            self.uid = None  # a namespaced role cannot read it: pids then carry no identity
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach the Kubernetes API: {type(exc).__name__}") from exc
        self.identity_checked = True


def cluster_key(cluster_config: Mapping[str, Any] | None) -> str:
    """A stable name for a configuration (a hash: the config itself holds credentials)."""
    if not cluster_config:
        return "default"
    digest = hashlib.sha256(json.dumps(cluster_config, sort_keys=True, default=str).encode()).hexdigest()
    return f"config-{digest[:16]}"


def connect(cluster_config: Mapping[str, Any] | None, kubeconfig: str | None) -> Cluster:
    """A client from a block's cluster config, else in-cluster config, else the kubeconfig."""
    configuration = k8s.Configuration()
    try:
        if cluster_config:
            # a kubernetes-cluster-config block: {"config": <kubeconfig dict>, "context_name": ...}
            data = cluster_config.get("config", cluster_config)
            context = cluster_config.get("context_name")
            k8s_config.load_kube_config_from_dict(
                dict(data), context=context, client_configuration=configuration, persist_config=False
            )
        elif kubeconfig:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            _load_default(configuration)
    except (ConfigException, OSError, TypeError, ValueError, KeyError) as exc:
        source = "the cluster_config" if cluster_config else (kubeconfig or "the default kubeconfig")
        raise LaunchError(
            f"cannot load the Kubernetes configuration from {source}: {type(exc).__name__}; run the "
            "agent in a pod with a service account, or set FLOW_AGENT_KUBECONFIG / the cluster_config"
        ) from None
    return Cluster(cluster_key(cluster_config), k8s.ApiClient(configuration))


def _load_default(configuration: k8s.Configuration) -> None:
    # The SDK's own convention: in a pod (it reads KUBERNETES_SERVICE_HOST), else ~/.kube/config
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)


def api_error(exc: BaseException, what: str) -> BackendError:
    """The one mapping from SDK and transport errors to the backend's errors.

    Messages carry Kubernetes' own reason and message (never request bodies or headers).
    """
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, Gone):
        return BackendUnavailable(f"{what}: the watch expired (410 Gone)")
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason, message = _status_text(exc)
        text = f"{what}: {status} {reason}" + (f": {message}" if message else "")
        if status == 0 or status == 429 or status >= 500:
            return BackendUnavailable(text, retry_after=_retry_after(exc))
        if status == 404:
            return InfrastructureNotFound(text)
        hint = _HINTS.get(status)
        return LaunchError(f"{text}; {hint}" if hint else text)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return BackendUnavailable(f"{what}: cannot reach the Kubernetes API ({type(exc).__name__})")
    return BackendError(f"{what}: unexpected {type(exc).__name__}")


def _status_text(exc: ApiException) -> tuple[str, str]:
    """The `Status` object's reason and message, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict):
        return str(body.get("reason") or exc.reason or ""), str(body.get("message") or "")[:500]
    return str(exc.reason or ""), ""


def _retry_after(exc: ApiException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
