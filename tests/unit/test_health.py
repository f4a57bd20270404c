"""The health server over real HTTP: /healthz follows the poll loop, /readyz the first
contact with the server, /metrics the counters; no secret in any answer."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio
import httpx

from agent.observe.health import HealthState, serve_health
from agent.observe.metrics import Metrics

SECRET = "pnu_s3cr3t-api-key-value"


class Loop:
    """A fake clock and the poll loop's facts, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.last_poll: float | None = None
        self.reached = False
        self.paused: str | None = None

    def poll(self) -> None:
        self.last_poll = self.now
        self.reached = True


def make_state(loop: Loop, interval: float = 5.0) -> HealthState:
    return HealthState(
        poll_interval=interval,
        last_poll=lambda: loop.last_poll,
        reached=lambda: loop.reached,
        metrics=Metrics(),
        paused=lambda: loop.paused,
        clock=lambda: loop.now,
    )


def with_server(state: HealthState, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_health, state, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                await scenario(client)
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_healthz_fails_when_the_last_poll_is_older_than_three_intervals() -> None:
    loop = Loop()
    state = make_state(loop)

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200  # grace from start
        loop.now += 16  # > 3 x 5 s since start, never polled
        r = await client.get("/healthz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert "no successful poll" in r.json()["reason"]
        loop.poll()
        assert (await client.get("/healthz")).status_code == 200
        loop.now += 14.9
        assert (await client.get("/healthz")).status_code == 200
        loop.now += 0.2
        r = await client.get("/healthz")
        assert r.status_code == 503, r.text
        assert json.loads(r.text)["status"] == "unhealthy"
        loop.poll()  # the loop recovers, so does /healthz
        assert (await client.get("/healthz")).status_code == 200

    with_server(state, scenario)


def test_a_loop_paused_on_purpose_is_healthy_and_gets_a_fresh_window() -> None:
    loop = Loop()
    state = make_state(loop)
    loop.poll()
    loop.now += 100
    assert state.healthz()[0] == 503
    loop.paused = "no free slot"
    code, body = state.healthz()
    assert (code, body["paused"]) == (200, "no free slot")
    loop.paused = None
    loop.now += 10  # not polled since, but within three intervals of the pause
    assert state.healthz()[0] == 200
    loop.now += 6
    assert state.healthz()[0] == 503


def test_readyz_flips_once_the_server_was_reached() -> None:
    loop = Loop()
    state = make_state(loop)

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not ready"
        loop.reached = True
        assert (await client.get("/readyz")).status_code == 200

    with_server(state, scenario)


def test_metrics_show_the_counters_and_no_secret() -> None:
    loop = Loop()
    state = make_state(loop)
    m = state.metrics
    m.claimed("etl")
    m.launched("process", 0.3)
    m.ended("process", "oom")
    m.api_error(503)
    m.api_error(SECRET)
    m.ended(SECRET, SECRET)
    m.set_free_slots(None)

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'flow_agent_runs_claimed_total{pool="etl"} 1.0' in text
        assert 'flow_agent_runs_launched_total{backend="process"} 1.0' in text
        assert 'flow_agent_runs_ended_total{backend="process",outcome="oom"} 1.0' in text
        assert 'flow_agent_api_errors_total{status="503"} 1.0' in text
        assert 'flow_agent_launch_latency_seconds_count{backend="process"} 1.0' in text
        assert "flow_agent_free_slots -1.0" in text
        bodies = [text]
        for path in ("/healthz", "/readyz", "/nope", f"/{SECRET}"):
            bodies.append((await client.get(path, headers={"Authorization": f"Bearer {SECRET}"})).text)
        assert all(SECRET not in body for body in bodies)

    with_server(state, scenario)


def test_other_paths_methods_and_garbage() -> None:
    state = make_state(Loop())

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/")).status_code == 404
        assert (await client.post("/healthz")).status_code == 405
        head = await client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        assert (await client.get("/healthz?verbose=1")).status_code == 200
        port = client.base_url.port
        async with await anyio.connect_tcp("127.0.0.1", port) as raw:
            await raw.send(b"\x00\x01garbage\r\n\r\n")
            answer = await raw.receive()
        assert answer.startswith(b"HTTP/1.1 400")
        async with await anyio.connect_tcp("127.0.0.1", port) as raw:
            pass  # a client that connects and leaves must not disturb the server
        assert (await client.get("/readyz")).status_code == 503

    with_server(state, scenario)
