"""A fault-injecting HTTP reverse proxy for tests and benchmarks.

`FaultProxy(upstream)` listens on 127.0.0.1:<free port> in background threads. It answers
a deterministic pseudo-random fraction of requests itself (503 `{"exception_message":
"Service Unavailable"}`, the SQLite-busy answer of a real Prefect server) and forwards
the rest unchanged. `set_down(True)` simulates an outage: every request is answered with
the fault status; `fail_route(pattern)` does the same for the routes it matches only.
Counters (`total`, `injected`, `forwarded`, `by_route`) tell what the client under test
actually did, and `seen()` when: each request's arrival time, route and fate, so a test
can measure the client's timing against the proxy's own clock (`down_at`, `up_at`).

stdlib `ThreadingHTTPServer` (one thread per connection, HTTP/1.1 keep-alive) plus one
shared `httpx.Client` for the upstream side; enough for ~100 concurrent connections.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["FaultProxy", "Seen", "route_of"]

# RFC 9110 §7.6.1, plus what must be recomputed for the re-encoded message.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
}

# Written again by BaseHTTPRequestHandler.send_response.
_RESPONSE_DROPPED = _HOP_BY_HOP | {"server", "date"}

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def route_of(method: str, path: str) -> str:
    """`POST /api/flow_runs/<uuid>/set_state` -> `POST /api/flow_runs/{id}/set_state`."""
    return f"{method} {_ID.sub('{id}', path.split('?', 1)[0])}"


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    at: float  # time.time() on arrival
    route: str  # route_of(method, path)
    path: str  # as sent, ids included
    injected: bool  # answered with the fault status instead of forwarded


class FaultProxy:
    def __init__(
        self,
        upstream_url: str,
        *,
        fail_ratio: float = 1 / 3,
        status: int = 503,
        seed: int = 20240601,
        body: dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= fail_ratio <= 1.0:
            raise ValueError("fail_ratio must be within [0, 1]")
        parts = urlsplit(upstream_url.rstrip("/"))
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path  # e.g. "/api": kept, so the proxy URL is a drop-in
        self.fail_ratio = fail_ratio
        self.status = status
        self.body = json.dumps(body if body is not None else {"exception_message": _reason(status)}).encode()

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._down = False
        self._failing_routes: list[re.Pattern[str]] = []
        self.down_at: float | None = None  # time.time() of the last set_down(True)
        self.up_at: float | None = None  # ... and of the last set_down(False)
        self._seen: list[Seen] = []
        self.total = 0
        self.injected = 0
        self.forwarded = 0
        self.by_route: Counter[str] = Counter()

        self._upstream = httpx.Client(
            base_url=self.upstream_origin,
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL to use as PREFECT_API_URL (same path as the upstream, e.g. `/api`)."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    def start(self) -> FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="fault-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._upstream.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control -------------------------------------------------------------------------------

    def set_down(self, down: bool = True) -> float:
        """While down, every request is answered with the fault status. Returns the time
        of the change (time.time()), also kept in `down_at` / `up_at`."""
        with self._lock:
            self._down = down
            now = time.time()
            if down:
                self.down_at = now
            else:
                self.up_at = now
            return now

    def fail_route(self, pattern: str) -> None:
        """Answer every request whose route (`route_of`) matches the regex `pattern` with the
        fault status, e.g. `fail_route(r"/workers/heartbeat$")`, until `heal_routes()`."""
        with self._lock:
            self._failing_routes.append(re.compile(pattern))

    def heal_routes(self) -> None:
        with self._lock:
            self._failing_routes.clear()

    def set_fail_ratio(self, ratio: float) -> None:
        with self._lock:
            self.fail_ratio = ratio

    def reset_counts(self) -> None:
        with self._lock:
            self.total = self.injected = self.forwarded = 0
            self.by_route.clear()
            self._seen.clear()

    def seen(self, pattern: str = "", *, since: float = 0.0, injected: bool | None = None) -> list[Seen]:
        """Requests that arrived at or after `since` whose route matches the regex `pattern`
        (and were answered by the proxy, or forwarded, if `injected` says so), in order."""
        regex = re.compile(pattern)
        with self._lock:
            return [
                s
                for s in self._seen
                if s.at >= since and regex.search(s.route) and injected in (None, s.injected)
            ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.total,
                "injected": self.injected,
                "forwarded": self.forwarded,
                "by_route": dict(self.by_route),
            }

    # -- used by the handler -------------------------------------------------------------------

    def _decide(self, method: str, path: str) -> bool:
        """Count the request; True if it gets the fault answer."""
        with self._lock:
            self.total += 1
            self.by_route[route_of(method, path)] += 1
            # Always draw, so the sequence of decisions only depends on the seed.
            fail = self._rng.random() < self.fail_ratio or self._down or self._route_fails(method, path)
            if fail:
                self.injected += 1
            else:
                self.forwarded += 1
            return fail

    def _route_fails(self, method: str, path: str) -> bool:
        route = route_of(method, path)
        return any(pattern.search(route) for pattern in self._failing_routes)

    def _record(self, at: float, method: str, path: str, injected: bool) -> None:
        with self._lock:
            self._seen.append(Seen(at, route_of(method, path), path, injected))

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        out_headers = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        out_headers.append(("Accept-Encoding", "identity"))
        try:
            response = self._upstream.request(method, path, headers=out_headers, content=body)
        except httpx.HTTPError as exc:
            message = json.dumps({"exception_message": f"proxy: upstream error: {exc!r}"})
            return 502, [("Content-Type", "application/json")], message.encode()
        back = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _RESPONSE_DROPPED]
        return response.status_code, back, response.content


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Injected fault"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    timeout = 120  # idle keep-alive connections end eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        arrived = time.time()
        injected = proxy._decide(self.command, self.path)
        proxy._record(arrived, self.command, self.path, injected)
        if injected:
            self._send(proxy.status, [("Content-Type", "application/json")], proxy.body)
            return
        status, headers, content = proxy._forward(self.command, self.path, list(self.headers.items()), body)
        self._send(status, headers, content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
