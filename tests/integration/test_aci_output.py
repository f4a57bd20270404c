"""A container's output on ACI (issue 16): the real management client over HTTPS against the
ARM fake's container logs route, the backend's own engine, no Prefect server.

Lines arrive once, in order, masked, including those printed just before the end; nothing
is read without `stream_output` or a sink; a refused log read leaves the run's end as it
is, with one warning in the agent log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from azure.mgmt.containerinstance.models import Logs
from contract.harness_aci import StaticTokenCredential
from fakes.aci_fake import AciFake

from agent.backends.aci import AciBackend
from agent.backends.aci.output import TAIL_MAX, TAIL_MIN, fresh_lines
from agent.backends.base import BackendOptions, Job
from agent.infra.aci import AciKind
from agent.infra.spec import RunContext
from agent.observe.logging import REDACTOR
from agent.outcome import Reason

pytestmark = pytest.mark.integration

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000bb"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aci"
SECRET = "aci-output-canary-" + uuid.uuid4().hex[:8]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fake() -> Iterator[AciFake]:
    with AciFake() as started:
        yield started


@pytest.fixture
async def backend(fake: AciFake) -> AsyncIterator[AciBackend]:
    fake.fail_logs(0, "", "")
    started = AciBackend(
        BackendOptions(watch_interval=0.05, azure_arm_endpoint=fake.url),
        credential=StaticTokenCredential(),
        client_kwargs={"connection_verify": fake.ca_file},
    )
    try:
        yield started
    finally:
        await started.aclose()


def _job(**variables: Any) -> Job:
    run_id = str(uuid.uuid4())
    kind = AciKind()
    resolved = {
        "image": "registry.example/tool:1",
        "resource_group_name": "rg-agents",
        "subscription_id": SUBSCRIPTION,
        **variables,
    }
    config = kind.config_from_pool(resolved, pool_type="azure-container-instance", source="test")
    context = RunContext(run_id, "output-run", env={"PREFECT__FLOW_RUN_ID": run_id})
    return Job(run_id, "output-run", "aci", kind.build_payload(config, context), kind.runtime(config))


def _name(job: Job) -> str:
    return str(job.payload["container_group_name"])


async def _until(predicate: Any, what: str) -> None:
    with anyio.fail_after(20):
        while not predicate():
            await anyio.sleep(0.02)


def _reads(fake: AciFake, job: Job) -> list[dict[str, str]]:
    return [read for read in fake.log_reads if read["group"] == _name(job)]


def _warnings(logs: list[dict[str, Any]], job: Job) -> list[str]:
    return [
        e["event"] for e in logs if e.get("flow_run_id") == job.flow_run_id and e["log_level"] == "warning"
    ]


def _output_of(logs: list[dict[str, Any]], run_id: str) -> list[str]:
    return [e["event"] for e in logs if e.get("flow_run_id") == run_id and e.get("stream") == "output"]


@pytest.mark.anyio
async def test_a_sinks_lines_arrive_once_in_order_masked_and_complete(
    fake: AciFake, backend: AciBackend
) -> None:
    REDACTOR.add(SECRET)
    seen: list[str] = []
    job = replace(_job(), output=seen.append)  # a direct run: a sink, stream_output off
    handle = await backend.launch(job)
    await _until(lambda: _reads(fake, job), "the first log read")  # the container runs
    fake.write_output(_name(job), "one", f"token={SECRET}", at="2026-12-02T10:00:01.0000000Z")
    fake.write_output(_name(job), "two", "two")  # two lines, the same words: both shown
    await _until(lambda: len(seen) >= 4, "the first lines")
    fake.write_output(_name(job), "last words", "   ", "")  # printed just before the exit
    fake.terminate(_name(job), 3)

    with anyio.fail_after(20):
        outcome = await backend.wait(handle)
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 3
    assert seen == ["one", "token=********", "two", "two", "last words"]
    assert _name(job) not in fake.list_groups()  # drained, then deleted
    assert {read["timestamps"] for read in _reads(fake, job)} == {"true"}
    assert {read["tail"] for read in _reads(fake, job)} == {str(TAIL_MIN)}  # a few lines: a small window


@pytest.mark.anyio
async def test_a_kill_that_finds_the_container_ended_drains_its_last_lines(fake: AciFake) -> None:
    # no watch round comes before the kill (the first is 5 s away): only the drain reads
    slow = AciBackend(
        BackendOptions(watch_interval=5, azure_arm_endpoint=fake.url),
        credential=StaticTokenCredential(),
        client_kwargs={"connection_verify": fake.ca_file},
    )
    seen: list[str] = []
    job = replace(_job(), output=seen.append)
    try:
        handle = await slow.launch(job)
        fake.write_output(_name(job), "printed", "then exited")
        fake.terminate(_name(job), 2)
        with anyio.fail_after(20):
            await slow.kill(handle, 0)
            assert (await slow.wait(handle)).exit_code == 2  # its own end, not the kill
    finally:
        await slow.aclose()
    assert seen == ["printed", "then exited"] and len(_reads(fake, job)) == 1
    assert _name(job) not in fake.list_groups()


@pytest.mark.anyio
async def test_stream_output_ships_to_the_runs_logs_and_off_reads_nothing(
    fake: AciFake, backend: AciBackend
) -> None:
    streamed, quiet = _job(stream_output=True), _job()
    assert streamed.runtime.stream_output and not quiet.runtime.stream_output
    with structlog.testing.capture_logs() as logs:
        handles = [await backend.launch(streamed), await backend.launch(quiet)]
        await _until(lambda: _reads(fake, streamed), "a log read")
        for job in (streamed, quiet):
            fake.write_output(_name(job), "hello", "world")
            fake.terminate(_name(job), 0)
        with anyio.fail_after(20):
            outcomes = [await backend.wait(handle) for handle in handles]
    assert [o.exit_code for o in outcomes] == [0, 0]
    assert _output_of(logs, streamed.flow_run_id) == ["hello", "world"]
    assert _output_of(logs, quiet.flow_run_id) == [] and _reads(fake, quiet) == []
    assert not [e for e in logs if e.get("flow_run_id") == quiet.flow_run_id and e["log_level"] == "warning"]


@pytest.mark.anyio
async def test_an_adopted_run_with_stream_output_ships_its_lines(fake: AciFake, backend: AciBackend) -> None:
    job = _job(stream_output=True)
    launcher = AciBackend(
        BackendOptions(watch_interval=0.05, azure_arm_endpoint=fake.url),
        credential=StaticTokenCredential(),
        client_kwargs={"connection_verify": fake.ca_file},
    )
    try:
        handle = await launcher.launch(job)
    finally:
        await launcher.aclose()  # the launching agent is gone
    found = await backend.find(job)
    assert found is not None and found.runtime is not None
    with structlog.testing.capture_logs() as logs:
        fake.write_output(_name(job), "before the adoption", "after it")
        fake.terminate(_name(job), 0)
        with anyio.fail_after(20):
            assert (await backend.wait(found)).exit_code == 0
    assert found.pid == handle.pid
    assert _output_of(logs, job.flow_run_id) == ["before the adoption", "after it"]


@pytest.mark.anyio
async def test_a_refused_log_read_warns_once_and_the_run_ends_right(
    fake: AciFake, backend: AciBackend
) -> None:
    refused = json.loads((FIXTURES / "logs_refused.json").read_text())
    seen: list[str] = []
    job = replace(_job(stream_output=True), output=seen.append)
    with structlog.testing.capture_logs() as logs:
        fake.fail_logs(
            refused["status"], refused["error"]["error"]["code"], refused["error"]["error"]["message"]
        )
        handle = await backend.launch(job)
        await _until(lambda: _reads(fake, job), "a refused read")
        fake.write_output(_name(job), "never seen")
        await anyio.sleep(0.3)  # several rounds: still one warning, and no more reads
        fake.terminate(_name(job), 1)
        with anyio.fail_after(20):
            outcome = await backend.wait(handle)
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 1
    assert seen == []
    warnings = _warnings(logs, job)
    assert len(warnings) == 1, warnings
    assert "output is unavailable" in warnings[0] and "AuthorizationFailed" in warnings[0]
    assert "containers/logs/read" in warnings[0]  # the fix
    assert len(_reads(fake, job)) == 1  # a refusal is not asked again every round


@pytest.mark.anyio
async def test_a_transient_log_failure_loses_nothing(fake: AciFake, backend: AciBackend) -> None:
    seen: list[str] = []
    job = replace(_job(), output=seen.append)
    with structlog.testing.capture_logs() as logs:
        handle = await backend.launch(job)
        await _until(lambda: _reads(fake, job), "a log read")
        fake.fail_logs(503, "ServiceUnavailable", "try later")
        fake.write_output(_name(job), "during the outage")
        # the SDK's own quick retries of a 503 run out, then the engine's next rounds try again
        await _until(lambda: _warnings(logs, job), "the warning")
        reads = len(_reads(fake, job))
        await _until(lambda: len(_reads(fake, job)) > reads, "a read during the outage")
        fake.fail_logs(0, "", "")
        fake.write_output(_name(job), "after it")
        fake.terminate(_name(job), 0)
        with anyio.fail_after(20):
            assert (await backend.wait(handle)).exit_code == 0
    assert seen == ["during the outage", "after it"]
    warnings = _warnings(logs, job)
    assert len(warnings) == 1 and "trying again" in warnings[0], warnings


def test_the_recorded_answer_through_the_sdk_model_and_the_cursor() -> None:
    fixture = json.loads((FIXTURES / "logs.json").read_text())
    assert all(source.startswith("https://") for source in fixture["_source"])
    content = Logs.deserialize(fixture["logs"]).content
    lines, short = fresh_lines(content, None, TAIL_MIN)
    assert [text for _, text in lines] == fixture["lines"] and not short
    # read again with one more line: only it is new, and the same-instant pair is not repeated
    again, _ = fresh_lines(content + "2026-12-02T10:05:00.0000000Z bye\n", lines[-1][0], TAIL_MIN)
    assert [text for _, text in again] == ["bye"]
    # the cursor inside an instant: the second of the two equal lines is still new
    partial, _ = fresh_lines(content, lines[1][0], TAIL_MIN)
    assert [text for _, text in partial] == fixture["lines"][2:]
    # a window that starts inside that instant (its first line cut off) falls short: widened
    cut = content.split("\n", 2)[2]
    assert fresh_lines(cut, lines[1][0], 2)[1]


def test_a_full_window_falls_short_unless_it_reaches_back_to_the_cursor() -> None:
    window = "".join(f"2026-12-02T10:00:{i // 100:02d}.{i % 100:07d}Z line {i}\n" for i in range(50))
    lines, short = fresh_lines(window, (0, 1), 50)
    assert short and len(lines) == 50
    assert fresh_lines(window, None, 50)[1]  # no cursor yet: the log may begin before the window
    assert fresh_lines(window, lines[0][0], 50)[1]  # it may start inside the cursor's instant
    assert not fresh_lines(window, lines[1][0], 50)[1]  # it starts before the cursor
    assert not fresh_lines(window, (0, 1), 51)[1]  # not full: the whole log


@pytest.mark.anyio
async def test_a_burst_between_two_reads_widens_the_window_and_loses_nothing(
    fake: AciFake, backend: AciBackend
) -> None:
    seen: list[str] = []
    job = replace(_job(), output=seen.append)
    handle = await backend.launch(job)
    fake.write_output(_name(job), "first")
    await _until(lambda: seen == ["first"], "the first line")
    burst = [f"burst {i}" for i in range(3 * TAIL_MIN)]
    fake.write_output(_name(job), *burst)
    fake.terminate(_name(job), 0)
    with anyio.fail_after(20):
        assert (await backend.wait(handle)).exit_code == 0
    assert seen == ["first", *burst]
    tails = [int(read["tail"]) for read in _reads(fake, job)]
    assert max(tails) > TAIL_MIN and max(tails) <= TAIL_MAX
