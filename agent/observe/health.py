"""The health server: `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.0.

Health measures the loop, not the process: `/healthz` answers 200 while the poll loop
has completed a poll within the last three poll intervals (counted from the start before
the first poll), 503 with a JSON reason otherwise. A loop that is not polling on purpose
(no free slot, draining after a stop signal) reports healthy: `paused` names why.
`/readyz` answers 503 until the Prefect server has been reached once (a successful poll or
heartbeat), 200 from then on. `/metrics` is the Prometheus text format of `Metrics`.
`/status` is what the agent is doing, as JSON for `flow-agent why` and `flow-agent status`:
name, version, pools, queues, limit, runs in flight, free slots, and the runs its
reconciler leaves alone with the reason (run ids and reasons only: no secret, no env).

A few dozen lines of HTTP on anyio instead of a web framework: the callers are probes
and scrapers sending one GET per connection. Every response closes its connection.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.observe.logging import get_logger
from agent.observe.metrics import Metrics

__all__ = ["STALE_INTERVALS", "HealthBindError", "HealthState", "serve_health"]

log = get_logger("agent.health")

STALE_INTERVALS = 3  # /healthz fails when the last poll is older than this many intervals
_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0
_JSON = "application/json"


@dataclass
class HealthState:
    """What the endpoints look at. Times are `clock()` readings (monotonic by default,
    the same clock as `Poller.last_poll`)."""

    poll_interval: float
    last_poll: Callable[[], float | None]
    reached: Callable[[], bool]
    metrics: Metrics
    paused: Callable[[], str | None] = lambda: None
    status: Callable[[], dict[str, object]] = dict
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    _paused_at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    @property
    def max_age(self) -> float:
        return STALE_INTERVALS * self.poll_interval

    def healthz(self) -> tuple[int, dict[str, object]]:
        now = self.clock()
        reason = self.paused()
        if reason:
            self._paused_at = now
            return 200, {"status": "ok", "paused": reason}
        # after a pause the loop gets a full window again before it counts as stale
        last = self.last_poll()
        since = max(t for t in (last, self._paused_at, self.started) if t is not None)
        age = now - since
        if age <= self.max_age:
            body: dict[str, object] = {"status": "ok", "max_age_seconds": self.max_age}
            if last is not None:
                body["last_poll_age_seconds"] = round(now - last, 3)
            return 200, body
        why = (
            f"no successful poll for {age:.1f} s (more than {STALE_INTERVALS} poll intervals "
            f"of {self.poll_interval:g} s)"
            if last is not None
            else f"no successful poll since start {age:.1f} s ago (more than {STALE_INTERVALS} "
            f"poll intervals of {self.poll_interval:g} s)"
        )
        return 503, {"status": "unhealthy", "reason": why}

    def readyz(self) -> tuple[int, dict[str, object]]:
        if self.reached():
            return 200, {"status": "ready"}
        return 503, {"status": "not ready", "reason": "the Prefect server has not been reached yet"}

    @property
    def healthy(self) -> bool:
        return self.healthz()[0] == 200


class HealthBindError(Exception):
    """The health server cannot listen where it was told to; the message names the fix."""


async def _listen(host: str, port: int) -> anyio.abc.MultiListener[SocketStream]:
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:  # socket.gaierror (an unknown host) is an OSError too
        if exc.errno == errno.EADDRINUSE:
            fix = f"port {port} is in use; choose another with --health-port or FLOW_AGENT_HEALTH_PORT"
        else:
            fix = f"{exc.strerror or exc}; set FLOW_AGENT_HEALTH_HOST to an address of this host"
        raise HealthBindError(f"cannot serve /healthz on {host}:{port}: {fix}") from None


async def serve_health(
    state: HealthState,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled. `task_status.started(port)` reports the bound port (useful
    with port 0). Start it with `await tg.start(serve_health, state, host, port)`."""
    listener = await _listen(host, port)
    bound = listener.listeners[0].extra(SocketAttribute.local_port)  # same on every address
    log.info("health server listening", host=host, port=bound)
    task_status.started(bound)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                await _handle(state, stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client went away
            except Exception:  # noqa: BLE001 - a bad request never stops the server
                log.exception("health request failed")

    async with listener:
        await listener.serve(handle)


async def _handle(state: HealthState, stream: SocketStream) -> None:
    head = b""
    with anyio.move_on_after(_READ_TIMEOUT):
        while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_REQUEST:
            chunk = await stream.receive(4096)
            if not chunk:
                break
            head += chunk
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _respond(stream, 400, _JSON, b'{"status": "bad request"}')
        return
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        await _respond(
            stream, 405, _JSON, b'{"status": "method not allowed"}', extra=[("Allow", "GET, HEAD")]
        )
        return
    path = target.split("?", 1)[0]
    if path == "/metrics":
        status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(state.metrics.registry)
    elif path == "/status":
        status, ctype, body = 200, _JSON, json.dumps(state.status(), default=str).encode()
    elif path in ("/healthz", "/readyz"):
        status, payload = state.healthz() if path == "/healthz" else state.readyz()
        ctype, body = _JSON, json.dumps(payload).encode()
    else:
        status, ctype, body = (
            404,
            _JSON,
            b'{"status": "not found", "paths": ["/healthz", "/readyz", "/metrics", "/status"]}',
        )
    await _respond(stream, status, ctype, b"" if method == "HEAD" else body, length=len(body))


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def _respond(
    stream: SocketStream,
    status: int,
    content_type: str,
    body: bytes,
    *,
    length: int | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    headers = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if length is None else length}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    await stream.send(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body)
