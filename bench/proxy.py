"""A small request-counting reverse proxy for the benchmark (HTTP and websockets).

Run it standalone::

    python bench/proxy.py --upstream http://127.0.0.1:4200 --port 4300

Clients then use ``PREFECT_API_URL=http://127.0.0.1:4300/api``. Every request is forwarded
unchanged to the upstream server and counted; websocket connections are piped frame by
frame (subprotocol and close codes included), so Prefect's worker keeps its websocket
channel and events streams instead of falling back to REST polling.

Two control endpoints are answered by the proxy itself and never counted:

* ``GET  /__proxy__/stats``  counters since the last reset (JSON, see ``Counters.snapshot``)
* ``POST /__proxy__/reset``  zero all counters

Paths are normalised for the per-path counts: UUIDs become ``{id}`` and the work pool name
after ``/work_pools/`` becomes ``{pool}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from collections import Counter
from typing import Any

import httpx
import uvicorn
import websockets
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_POOL = re.compile(r"(/work_pools/)(?!filter\b|count\b)[^/]+")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}
_WS_SKIP = _HOP_BY_HOP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}


def normalise(path: str) -> str:
    path = _UUID.sub("{id}", path)
    return _POOL.sub(r"\1{pool}", path)


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.time()
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.ms_by_path: Counter[str] = Counter()  # summed upstream latency
        self.ws_connections: Counter[str] = Counter()
        self.ws_frames_in: Counter[str] = Counter()  # client -> server
        self.ws_frames_out: Counter[str] = Counter()  # server -> client
        self.errors = 0
        self.proxy_retries = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "now": time.time(),
            "requests": self.requests,
            "by_path": dict(self.by_path.most_common()),
            "by_status": dict(self.by_status.most_common()),
            "mean_ms_by_path": {k: round(self.ms_by_path[k] / n, 1) for k, n in self.by_path.most_common()},
            "ws_connections": dict(self.ws_connections),
            "ws_frames_in": dict(self.ws_frames_in),
            "ws_frames_out": dict(self.ws_frames_out),
            "ws_frames_total": sum(self.ws_frames_in.values()) + sum(self.ws_frames_out.values()),
            "proxy_errors": self.errors,
            "proxy_retries": self.proxy_retries,
        }


class CountingProxy:
    """An ASGI app forwarding to ``upstream`` (scheme://host:port, no path)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.ws_upstream = "ws" + self.upstream[len("http") :]
        self.counters = Counters()
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.upstream,
                timeout=httpx.Timeout(120.0),
                # Expire idle connections well before the server's keep-alive timeout (uvicorn:
                # 5 s), or a request may race the server closing the connection.
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0),
            )
        return self._client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(Request(scope, receive), send, scope, receive)
        elif scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, request: Request, send: Any, scope: Any, receive: Any) -> None:
        path = request.url.path
        if path.startswith("/__proxy__/"):
            if path == "/__proxy__/reset":
                self.counters.reset()
                response: Response = JSONResponse({"ok": True})
            else:
                response = JSONResponse(self.counters.snapshot())
            await response(scope, receive, send)
            return

        key = f"{request.method} {normalise(path)}"
        self.counters.requests += 1
        self.counters.by_path[key] += 1
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        body = await request.body()
        url = path + (f"?{request.url.query}" if request.url.query else "")
        started = time.perf_counter()
        try:
            upstream, content = await self._forward(request.method, url, headers, body)
        except httpx.HTTPError as exc:
            self.counters.errors += 1
            print(f"proxy: {key}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.counters.by_status["502"] += 1
            response = JSONResponse({"detail": f"proxy: {type(exc).__name__}: {exc}"}, 502)
            await response(scope, receive, send)
            return
        self.counters.ms_by_path[key] += (time.perf_counter() - started) * 1000
        self.counters.by_status[str(upstream.status_code)] += 1
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        response = Response(content, upstream.status_code, headers=out_headers)
        await response(scope, receive, send)

    async def _forward(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[httpx.Response, bytes]:
        for attempt in (1, 2):
            try:
                upstream = await self.client.send(
                    self.client.build_request(method, url, headers=headers, content=body),
                    stream=True,
                )
                try:
                    content = b"".join([chunk async for chunk in upstream.aiter_raw()])
                finally:
                    await upstream.aclose()
                return upstream, content
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                # A pooled connection closed under us before any answer: the one case where
                # resending is safe and invisible to the client. Counted once, as sent.
                if attempt == 2:
                    raise
                self.counters.proxy_retries += 1
        raise AssertionError("unreachable")

    async def _websocket(self, ws: WebSocket) -> None:
        path = ws.url.path
        key = normalise(path)
        self.counters.ws_connections[key] += 1
        url = self.ws_upstream + path + (f"?{ws.url.query}" if ws.url.query else "")
        subprotocols = ws.scope.get("subprotocols") or None
        headers = [(k, v) for k, v in ws.headers.items() if k.lower() not in _WS_SKIP]
        try:
            upstream = await websockets.connect(
                url,
                subprotocols=subprotocols,
                additional_headers=headers,
                open_timeout=30,
                ping_interval=None,
                max_size=None,
            )
        except Exception:
            self.counters.errors += 1
            await ws.close(code=1011)
            return
        await ws.accept(subprotocol=upstream.subprotocol)

        async def client_to_upstream() -> tuple[int, str]:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return message.get("code", 1000), message.get("reason", "") or ""
                self.counters.ws_frames_in[key] += 1
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

        async def upstream_to_client() -> tuple[int, str]:
            try:
                async for frame in upstream:
                    self.counters.ws_frames_out[key] += 1
                    if isinstance(frame, str):
                        await ws.send_text(frame)
                    else:
                        await ws.send_bytes(frame)
            except websockets.ConnectionClosed:
                pass
            return upstream.close_code or 1000, upstream.close_reason or ""

        tasks = {
            asyncio.ensure_future(client_to_upstream()): "client",
            asyncio.ensure_future(upstream_to_client()): "upstream",
        }
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        first = next(iter(done))
        try:
            code, reason = first.result()
        except (WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError):
            code, reason = 1000, ""
        with contextlib.suppress(Exception):
            await upstream.close(code=code if 1000 <= code < 5000 and code != 1005 else 1000, reason=reason)
        if tasks[first] == "upstream":
            with contextlib.suppress(Exception):
                await ws.close(code=code if code not in (1005, 1006) else 1000, reason=reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:4200")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        CountingProxy(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        lifespan="on",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
