"""The fault-injecting proxy used by the integration tests and bench/, against a tiny echo server."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support.proxy import FaultProxy, route_of


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received, as JSON."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status = int(self.headers.get("X-Status", "200"))
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
            }
        ).encode()
        if self.headers.get("X-Gzip"):
            payload = gzip.compress(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "yes")
        if self.headers.get("X-Gzip"):
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _echo


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_url_keeps_the_upstream_path(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=0) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}/api"


def test_forwards_method_path_query_headers_and_body(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=0) as proxy:
        response = httpx.post(
            f"{proxy.url}/flow_runs/filter?limit=3",
            json={"flow_runs": {}},
            headers={"Authorization": "Bearer k", "X-Custom": "v"},
        )

    assert response.status_code == 200
    assert response.headers["x-upstream"] == "yes"
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/api/flow_runs/filter?limit=3"
    assert echoed["headers"]["authorization"] == "Bearer k"
    assert echoed["headers"]["x-custom"] == "v"
    assert json.loads(echoed["body"]) == {"flow_runs": {}}
    assert proxy.total == proxy.forwarded == 1
    assert proxy.injected == 0


def test_passes_upstream_errors_through(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=0) as proxy:
        response = httpx.get(f"{proxy.url}/work_pools/missing", headers={"X-Status": "404"})
    assert response.status_code == 404
    assert response.json()["path"] == "/api/work_pools/missing"


def test_compressed_upstream_answers_arrive_intact(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=0) as proxy:
        response = httpx.get(f"{proxy.url}/health", headers={"X-Gzip": "1"})
    assert response.status_code == 200
    assert response.json()["path"] == "/api/health"


def test_fail_ratio_one_answers_everything_itself(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=1.0) as proxy:
        responses = [httpx.get(f"{proxy.url}/health") for _ in range(5)]

    assert {r.status_code for r in responses} == {503}
    assert responses[0].json() == {"exception_message": "Service Unavailable"}
    assert proxy.injected == proxy.total == 5
    assert proxy.forwarded == 0


def test_status_is_configurable(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=1.0, status=401) as proxy:
        response = httpx.get(f"{proxy.url}/work_pools/p")
    assert response.status_code == 401
    assert response.json() == {"exception_message": "Unauthorized"}


def _outcomes(upstream: str, seed: int, count: int = 60) -> list[int]:
    with FaultProxy(upstream, fail_ratio=1 / 3, seed=seed) as proxy, httpx.Client() as client:
        return [client.get(f"{proxy.url}/health").status_code for _ in range(count)]


def test_faults_are_a_deterministic_fraction(upstream: str) -> None:
    first = _outcomes(upstream, seed=7)
    second = _outcomes(upstream, seed=7)

    assert first == second
    assert set(first) == {200, 503}
    assert 10 <= first.count(503) <= 30  # about a third of 60


def test_outage_answers_everything_until_lifted(upstream: str) -> None:
    with FaultProxy(upstream, fail_ratio=0) as proxy, httpx.Client() as client:
        proxy.set_down(True)
        during = [client.get(f"{proxy.url}/health").status_code for _ in range(3)]
        proxy.set_down(False)
        after = client.get(f"{proxy.url}/health").status_code

    assert during == [503, 503, 503]
    assert after == 200


def test_unreachable_upstream_is_a_502() -> None:
    with FaultProxy("http://127.0.0.1:9/api", fail_ratio=0) as proxy:
        response = httpx.get(f"{proxy.url}/health")
    assert response.status_code == 502


def test_handles_fifty_concurrent_connections(upstream: str) -> None:
    barrier = threading.Barrier(50)

    def one(i: int) -> int:
        # A fresh client per thread: 50 distinct connections, all in flight together.
        with httpx.Client(timeout=30) as client:
            barrier.wait(timeout=30)
            return client.post(f"{proxy.url}/logs/", json=[{"i": i}]).status_code

    with FaultProxy(upstream, fail_ratio=0) as proxy, ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))

    assert statuses == [200] * 50
    assert proxy.total == 50


def test_counts_requests_by_route(upstream: str) -> None:
    run_id = "0b7c1a8e-1d5e-4a43-9a4c-2f6f6a3c0d11"
    with FaultProxy(upstream, fail_ratio=0) as proxy, httpx.Client() as client:
        client.post(f"{proxy.url}/flow_runs/{run_id}/set_state", json={})
        client.post(f"{proxy.url}/flow_runs/{run_id}/set_state", json={})
        client.patch(f"{proxy.url}/flow_runs/{run_id}", json={})

    assert proxy.stats()["by_route"] == {
        "POST /api/flow_runs/{id}/set_state": 2,
        "PATCH /api/flow_runs/{id}": 1,
    }
    assert route_of("GET", "/api/health?x=1") == "GET /api/health"
