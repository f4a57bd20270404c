"""The pod log endpoint of tests/fakes/kubernetes_fake.py, as the API reference documents it.

`GET /api/v1/namespaces/{ns}/pods/{name}/log` ("read log of the specified Pod",
https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#get-read-log-of-the-specified-pod):
plain text, one line per output line; `timestamps=true` puts an RFC3339Nano time and a
space before each; `sinceTime` (RFC3339) keeps lines from that time on; `follow=true`
keeps the response open and streams new lines until the container ends. `container` must
name one of the pod's containers (required when it has more than one). A container that
has not started answers 400 "... is waiting to start: <reason>"; a missing pod 404; a role
without `get` on `pods/log` 403. The answers are recorded in
tests/fixtures/kubernetes/pod_log.json.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

from fakes.kubernetes_http import status_body

__all__ = ["PodLogs", "rfc3339nano"]


def rfc3339nano(nanos: int) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(nanos, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _since(value: str) -> int:
    """An RFC3339 time (any fraction) as nanoseconds."""
    stamp, _, rest = value.rstrip("Z").partition(".")
    seconds = int(dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp())
    return seconds * 1_000_000_000 + int((rest or "0").ljust(9, "0")[:9])


class PodLogs:
    """Every pod's output, kept by the fake kubelet; `cond` is the fake's condition."""

    def __init__(self, fake: Any, cond: threading.Condition) -> None:
        self._fake = fake
        self._cond = cond
        self.lines: dict[str, list[tuple[int, str]]] = {}  # pod -> (time in ns, line)
        self.forbidden = False  # a role without `get` on pods/log: 403
        self.requests = 0  # log requests answered (errors included)
        self._clock = 0
        self._cuts = 0

    def write(self, pod: str, lines: tuple[str, ...], *, same_time: bool = False) -> None:
        """The container prints `lines` (`same_time`: within one clock tick, one timestamp)."""
        with self._cond:
            now = max(time.time_ns(), self._clock + 1)
            for line in lines:
                self.lines.setdefault(pod, []).append((now, line))
                if not same_time:
                    now += 1
            self._clock = now
            self._cond.notify_all()

    def cut(self) -> None:
        """Every followed answer ends now, its container still running (an API server or
        proxy timeout, a dropped connection): a client must ask again."""
        with self._cond:
            self._cuts += 1
            self._cond.notify_all()

    def _pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            return self._fake.objects.get(("pods", namespace, name))

    def check(self, namespace: str, name: str, query: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        """The error answer for this request, or None when the log can be read."""
        self.requests += 1
        if self.forbidden:
            message = (
                f'pods "{name}" is forbidden: User "system:serviceaccount:{namespace}:flow-agent" cannot get '
                f'resource "pods/log" in API group "" in the namespace "{namespace}"'
            )
            return 403, status_body(403, "Forbidden", message)
        pod = self._pod(namespace, name)
        if pod is None:
            return 404, status_body(404, "NotFound", f'pods "{name}" not found')
        names = [c.get("name") for c in pod["spec"].get("containers") or []]
        container = query.get("container")
        if container is None and len(names) > 1:
            message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
            return 400, status_body(400, "BadRequest", message)
        container = container or names[0]
        if container not in names:
            return 400, status_body(400, "BadRequest", f"container {container} is not valid for pod {name}")
        state = self._state(pod, container)
        if "waiting" in state or not state:
            reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
            message = f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            return 400, status_body(400, "BadRequest", message)
        return None

    @staticmethod
    def _state(pod: dict[str, Any], container: str) -> dict[str, Any]:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == container:
                return status.get("state") or {}
        return {}

    def _ended(self, namespace: str, name: str, container: str) -> bool:
        pod = self._pod(namespace, name)
        return pod is None or "terminated" in self._state(pod, container)

    def stream(self, namespace: str, name: str, query: dict[str, str]) -> Iterator[bytes]:
        """The answer's body, line by line; with follow, until the container ends."""
        since = _since(query["sinceTime"]) if query.get("sinceTime") else 0
        stamps = query.get("timestamps") in ("true", "1")
        follow = query.get("follow") in ("true", "1")
        pod = self._pod(namespace, name) or {}
        container = query.get("container") or pod.get("spec", {}).get("containers", [{}])[0].get("name", "")
        sent = 0
        with self._cond:
            cuts = self._cuts
        while True:
            with self._cond:
                lines = self.lines.get(name, [])[sent:]
                sent += len(lines)
                ended = self._ended(namespace, name, container) or self._fake._stopping
                if self._cuts != cuts:
                    return
                if not lines and follow and not ended:
                    self._cond.wait(0.5)
                    continue
            for nanos, line in lines:
                if nanos >= since:
                    yield (f"{rfc3339nano(nanos)} {line}\n" if stamps else f"{line}\n").encode()
            if not follow or (ended and not lines):
                return
