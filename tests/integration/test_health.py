"""Running it in production: the health server and systemd's notify socket, end to end.

The agent is started with `FLOW_AGENT_HEALTH_PORT` (flag `--health-port`) and, for the
systemd test, `NOTIFY_SOCKET` and `WATCHDOG_USEC` pointing at a socket this test owns.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for
from support.proxy import FaultProxy
from support.server import PrefectServer

pytestmark = pytest.mark.integration

SECRET = "pnu_integration-s3cr3t-key-9f8e7d"
POLL_INTERVAL = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Health:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=2)

    def status(self, path: str) -> int | None:
        try:
            return self.get(path).status_code
        except httpx.TransportError:
            return None

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.get("/metrics").text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def proxy(prefect_server: PrefectServer) -> Iterator[FaultProxy]:
    with FaultProxy(prefect_server.api_url, fail_ratio=0) as p:
        yield p


def start_with_health(start_agent, pool: str, api_url: str, **env: str):  # type: ignore[no-untyped-def]
    port = free_port()
    agent = start_agent(
        pool,
        api_url=api_url,
        env={
            "FLOW_AGENT_HEALTH_PORT": str(port),
            "FLOW_AGENT_POLL_INTERVAL": str(POLL_INTERVAL),
            "FLOW_AGENT_RETRY_MAX": "1",  # come back quickly after the outage
            **env,
        },
    )
    return agent, Health(port)


def test_healthz_fails_while_the_server_is_unreachable_and_recovers(
    pool: str, start_agent, proxy: FaultProxy
) -> None:
    agent, health = start_with_health(start_agent, pool, proxy.url)

    wait_for(lambda: health.status("/readyz") == 200, 60, message="/readyz 200", interval=0.2)
    assert health.status("/healthz") == 200
    wait_for(
        lambda: health.metric("flow_agent_last_poll_timestamp_seconds") > time.time() - 60,
        30,
        message="a recent last poll time in /metrics",
    )

    proxy.set_down(True)
    down_at = time.monotonic()
    wait_for(lambda: health.status("/healthz") == 503, 30, message="/healthz 503", interval=0.1)
    # the last successful poll was before the outage: 3 intervals, plus slack for a slow box
    assert time.monotonic() - down_at < 3 * POLL_INTERVAL + 3
    body = health.get("/healthz").json()
    assert body["status"] == "unhealthy" and "poll" in body["reason"]
    assert health.status("/readyz") == 200  # reached once: readiness stays
    assert agent.alive(), agent.describe()

    proxy.set_down(False)
    wait_for(lambda: health.status("/healthz") == 200, 60, message="/healthz 200 again", interval=0.2)
    assert health.metric("flow_agent_api_errors_total", status="503") > 0


def test_readyz_waits_for_the_server(pool: str, start_agent, proxy: FaultProxy) -> None:
    proxy.set_down(True)
    agent, health = start_with_health(start_agent, pool, proxy.url)

    wait_for(lambda: health.status("/readyz") == 503, 60, message="/readyz 503 while down", interval=0.2)
    assert agent.alive(), agent.describe()
    proxy.set_down(False)
    wait_for(lambda: health.status("/readyz") == 200, 60, message="/readyz 200", interval=0.2)
    wait_for(lambda: health.status("/healthz") == 200, 30, message="/healthz 200", interval=0.2)


def test_metrics_count_a_runs_life_and_hold_no_secret(
    api: PrefectAPI, pool: str, start_agent, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    api.create_process_pool(pool)
    completed = api.create_flow_run(api.real_flow_deployment(pool, tmp_path))["id"]
    crashed = api.create_flow_run(api.command_deployment(pool, "sh -c 'exit 3'", name="crash"))["id"]
    oom = api.create_flow_run(api.command_deployment(pool, "sh -c 'kill -9 $$'", name="oom"))["id"]

    _, health = start_with_health(
        start_agent, pool, prefect_server.api_url, PREFECT_API_KEY=SECRET, FLOW_AGENT_LIMIT="4"
    )

    for run_id, expected in ((completed, "COMPLETED"), (crashed, "CRASHED"), (oom, "CRASHED")):
        run = api.wait_for_state(run_id, "COMPLETED", "FAILED", "CRASHED", timeout=120)
        assert state_type(run) == expected, state_message(run)

    def ended(outcome: str) -> float:
        return health.metric("flow_agent_runs_ended_total", backend="process", outcome=outcome)

    wait_for(
        lambda: (ended("completed"), ended("crashed"), ended("oom")) == (1, 1, 1),
        30,
        message="one run ended per outcome",
    )
    assert health.metric("flow_agent_runs_claimed_total", pool=pool) == 3
    assert health.metric("flow_agent_runs_launched_total", backend="process") == 3
    assert health.metric("flow_agent_launch_latency_seconds_count", backend="process") == 3
    wait_for(lambda: health.metric("flow_agent_runs_in_flight") == 0, 30, message="nothing in flight")
    assert health.metric("flow_agent_free_slots") == 4

    for path in ("/metrics", "/healthz", "/readyz"):
        assert SECRET not in health.get(path).text


def test_systemd_notify_ready_and_watchdog(pool: str, start_agent, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(0.5)
        messages: list[str] = []

        def receive() -> list[str]:
            with contextlib.suppress(TimeoutError, BlockingIOError):
                messages.extend(sock.recv(4096).decode().splitlines())
            return messages

        agent = start_agent(pool, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})

        wait_for(lambda: "READY=1" in receive(), 60, interval=0, message="READY=1")
        # WATCHDOG_USEC=2 s: systemd wants a ping at least every 2 s; see two of them
        wait_for(lambda: receive().count("WATCHDOG=1") >= 2, 10, interval=0, message="two WATCHDOG=1")

        assert agent.stop() == 0
        sock.setblocking(False)
        count = -1
        while count != len(messages):  # read what was sent while stopping
            count = len(messages)
            receive()
        assert "STOPPING=1" in messages, messages
