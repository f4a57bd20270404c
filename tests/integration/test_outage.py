"""Never stuck at start or after an outage: the agent behind a FaultProxy that goes down.

Timings are read from the proxy's own clock (when each request arrived), not from sleeps
in the test: they measure when the agent acted, whatever the server's speed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent_proc import DEFAULT_ENV
from support.prefect_api import (
    PrefectAPI,
    assert_each_launched_once,
    marker_command,
    read_markers,
    state_type,
    wait_for,
)
from support.proxy import FaultProxy
from support.server import PrefectServer

pytestmark = pytest.mark.integration

POLL = float(DEFAULT_ENV["FLOW_AGENT_POLL_INTERVAL"])  # 0.5 s
# What a first claim may take beyond two poll intervals: the server answering the poll (or
# the claim) that comes first after the outage, and the agent sending the next request, on
# a 2-core machine shared with other test sessions. Before the fix the first claim came 15
# to 30 s after a 30 s outage (the retry backoff had grown to 30 s).
TOLERANCE = 1.0
OUTAGE = 30.0

CLAIM = r"^POST /api/flow_runs/\{id\}/set_state$"  # only claims: these runs report nothing else
POLLS = r"/get_scheduled_flow_runs$"
HEARTBEAT = r"/workers/heartbeat$"


@pytest.fixture
def proxy(prefect_server: PrefectServer) -> Iterator[FaultProxy]:
    """The server behind a proxy that forwards everything until told otherwise."""
    with FaultProxy(prefect_server.api_url, fail_ratio=0) as p:
        yield p


def test_first_claim_within_two_poll_intervals_after_a_30s_outage(
    api: PrefectAPI, pool: str, proxy: FaultProxy, start_agent, tmp_path: Path
) -> None:
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    run_ids = api.create_flow_runs(api.command_deployment(pool, marker_command(markers)), 100)
    start_agent(pool, api_url=proxy.url)

    wait_for(lambda: len(read_markers(markers)) >= 10, 60, message="the drain to be under way")
    down_at = proxy.set_down(True)
    time.sleep(OUTAGE)
    left = [r for r in api.read_flow_runs(run_ids) if state_type(r) == "SCHEDULED"]
    assert left, "the agent drained everything before the outage: nothing left to measure"
    up_at = proxy.set_down(False)

    # All through the outage the agent kept asking for work (polls, or the claims it had in
    # flight) at least every two intervals: no backoff grew long, whenever the server returns.
    tries = [s.at for s in proxy.seen(f"{CLAIM}|{POLLS}", since=down_at) if s.at < up_at]
    gaps = [b - a for a, b in zip([down_at, *tries], [*tries, up_at], strict=True)]
    assert max(gaps) <= 2 * POLL + TOLERANCE, f"{len(tries)} tries, longest gap {max(gaps):.2f} s"

    wait_for(lambda: proxy.seen(CLAIM, since=up_at, injected=False), 60, message="a claim after the outage")
    # A claim retried from before the outage is not a new one: the first new claim needs a
    # poll that works again (or the claims queued behind the retried ones) to go through.
    tried = {s.path for s in proxy.seen(CLAIM, since=down_at) if s.at < up_at}
    first_new = wait_for(
        lambda: next((s for s in proxy.seen(CLAIM, since=up_at) if s.path not in tried), None),
        60,
        message="a new claim after the outage",
    )
    first_any = proxy.seen(CLAIM, since=up_at)[0]
    delay = first_new.at - up_at
    assert delay <= 2 * POLL + TOLERANCE, (
        f"first new claim {delay:.2f} s after the server came back "
        f"(first claim of any kind: {first_any.at - up_at:.2f} s); "
        f"requests since: {[(round(s.at - up_at, 2), s.route) for s in proxy.seen(since=up_at)[:15]]}"
    )

    wait_for(api.all_launched_or_ended(run_ids), 180, interval=1, message="all 100 runs launched")
    wait_for(lambda: len(read_markers(markers)) >= 100, 60, message="100 markers")
    assert_each_launched_once(api, markers, run_ids)


def test_a_failing_heartbeat_does_not_delay_the_first_claim(
    api: PrefectAPI, pool: str, proxy: FaultProxy, start_agent, tmp_path: Path
) -> None:
    proxy.fail_route(HEARTBEAT)  # every heartbeat answered 503, from the first one on
    markers = tmp_path / "launched.txt"
    api.create_process_pool(pool)
    run_ids = api.create_flow_runs(api.command_deployment(pool, marker_command(markers)), 20)

    start_agent(pool, api_url=proxy.url)

    wait_for(api.all_launched_or_ended(run_ids), 120, interval=1, message="all 20 runs launched")
    first_contact = proxy.seen()[0].at  # the agent's first request: its start, on the proxy's clock
    first_claim = proxy.seen(CLAIM, injected=False)[0].at
    heartbeats = proxy.seen(HEARTBEAT)
    assert heartbeats, "the agent never tried to heartbeat"
    assert not [s for s in heartbeats if not s.injected], "a heartbeat went through: nothing was tested"
    # Before the fix, polling waited for the first heartbeat and its retries: a minute.
    assert first_claim - first_contact <= 2 * POLL + TOLERANCE, (
        f"first claim {first_claim - first_contact:.2f} s after the agent's first request; "
        f"requests: {[(round(s.at - first_contact, 2), s.route) for s in proxy.seen()[:15]]}"
    )
    wait_for(lambda: len(read_markers(markers)) >= 20, 60, message="20 markers")
    assert_each_launched_once(api, markers, run_ids)


# Exit after one SIGINT with the server down: nothing is in flight, so what is left is the
# agent's own shutdown (the last log flush has a 2 s budget) and the interpreter's exit.
# Before the fix it took until a poll's retry budget ran out (60 s), or a third signal.
EXIT_BOUND = 8.0


@pytest.mark.parametrize("when", ["at start", "while polling"])
def test_one_sigint_stops_an_agent_waiting_for_a_down_server(
    pool: str, proxy: FaultProxy, start_agent, when: str
) -> None:
    if when == "at start":
        down_at = proxy.set_down(True)
        agent = start_agent(pool, api_url=proxy.url)
    else:
        agent = start_agent(pool, api_url=proxy.url)
        wait_for(lambda: proxy.seen(POLLS, injected=False), 60, message="the agent to poll")
        down_at = proxy.set_down(True)
    # Several failed attempts: the retry backoff has grown past the first sleeps.
    wait_for(lambda: len(proxy.seen(since=down_at)) >= 5, 60, message="the agent to retry")
    assert agent.alive(), agent.describe()

    agent.send_signal(signal.SIGINT)
    code = agent.wait(timeout=EXIT_BOUND)  # raises if the agent is still up by then

    assert code == 0, agent.describe()
    assert "flow-agent stopped" in agent.events()
