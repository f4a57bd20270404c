"""An execution's output on Cloud Run (issue 16): the real `run_v2` REST clients and Cloud
Logging's REST `entries:list` (through google-auth's session) against the Cloud Run fake,
the backend's own engine, no Prefect server.

Lines arrive once, in order, masked, including those printed just before the end and those
Cloud Logging shows only after it; nothing is read without `stream_output` or a sink; a
refused read leaves the run's end as it is, with one warning in the agent log.
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
from fakes.cloud_run_fake import CloudRunFake

from agent.backends.base import BackendOptions, Job
from agent.backends.cloud_run import CloudRunBackend
from agent.backends.cloud_run.output import PAGE, entry_filter, line_of
from agent.infra.cloud_run import CloudRunKind
from agent.infra.merge import resolve_job_configuration
from agent.infra.spec import RunContext
from agent.observe.logging import REDACTOR
from agent.outcome import Reason

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/cloud-run-v2.json"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cloud_run"
VARIABLES = {"image": "us-docker.pkg.dev/demo/tools/tool:1", "credentials": {"project": "demo"}}
SECRET = "cloud-run-output-canary-" + uuid.uuid4().hex[:8]
# LogEntry's fields (https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry)
LOG_ENTRY_FIELDS = {
    "logName", "resource", "protoPayload", "textPayload", "jsonPayload", "timestamp", "receiveTimestamp",
    "severity", "insertId", "httpRequest", "labels", "operation", "trace", "spanId", "traceSampled",
    "sourceLocation", "split", "errorGroups", "apphub", "apphubDestination",
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fake() -> Iterator[CloudRunFake]:
    with CloudRunFake() as started:
        yield started


@pytest.fixture
async def backend(fake: CloudRunFake) -> AsyncIterator[CloudRunBackend]:
    fake.fail_logs(0)
    started = _backend(fake)
    try:
        yield started
    finally:
        await started.aclose()


def _backend(fake: CloudRunFake, interval: float = 0.05) -> CloudRunBackend:
    options = BackendOptions(watch_interval=interval, gcp_endpoint=fake.url, gcp_logging_endpoint=fake.url)
    return CloudRunBackend(options)


def _job(stream_output: bool | None = None) -> Job:
    """A run of a cloud-run-v2 pool whose template passes `stream_output` on, as the docs say."""
    template = json.loads(TEMPLATE.read_text())
    template["job_configuration"]["stream_output"] = "{{ stream_output }}"
    template["variables"]["properties"]["stream_output"] = {"type": "boolean", "default": False}
    variables = {**VARIABLES, **({} if stream_output is None else {"stream_output": stream_output})}
    resolved = resolve_job_configuration(template, variables, {}, source="test")
    kind = CloudRunKind()
    config = kind.config_from_pool(resolved, pool_type="cloud-run-v2", source="test")
    run_id = str(uuid.uuid4())
    context = RunContext(run_id, "output-run", labels={"prefect.io/flow-run-id": run_id})
    return Job(run_id, "output-run", "cloud-run", kind.build_payload(config, context), kind.runtime(config))


def _reads(fake: CloudRunFake, execution: str) -> list[dict[str, Any]]:
    name = execution.rsplit("/", 1)[1]
    return [read for read in fake.entry_reads if f'execution_name"="{name}"' in read["filter"]]


def _warnings(logs: list[dict[str, Any]], job: Job) -> list[str]:
    ours = [e for e in logs if e.get("flow_run_id") == job.flow_run_id]
    return [e["event"] for e in ours if e["log_level"] == "warning"]


def _output_of(logs: list[dict[str, Any]], job: Job) -> list[str]:
    ours = [e for e in logs if e.get("flow_run_id") == job.flow_run_id]
    return [e["event"] for e in ours if e.get("stream") == "output"]


async def _until(predicate: Any) -> None:
    with anyio.fail_after(20):
        while not predicate():
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_sinks_lines_arrive_once_in_order_masked_and_complete(fake: CloudRunFake) -> None:
    REDACTOR.add(SECRET)
    seen: list[str] = []
    job = replace(_job(), output=seen.append)  # a direct run: a sink, stream_output off
    backend = _backend(fake, interval=0.2)  # the drain waits 0.4 s for late entries
    try:
        await _sink_run(fake, backend, job, seen)
    finally:
        await backend.aclose()


async def _sink_run(fake: CloudRunFake, backend: CloudRunBackend, job: Job, seen: list[str]) -> None:
    handle = await backend.launch(job)
    fake.start_execution(handle.pid)
    await _until(lambda: _reads(fake, handle.pid))
    fake.write_output(handle.pid, "one", f"token={SECRET}")
    fake.write_output(handle.pid, "on stderr", stream="stderr")
    fake.write_output(handle.pid, json_payload={"message": "structured", "severity": "INFO"})
    await _until(lambda: len(seen) >= 4)
    fake.write_output(handle.pid, "last words", "  ")  # printed just before the exit
    fake.write_output(handle.pid, "shown late", delay=0.3)  # Cloud Logging shows it after the end
    fake.finish_execution(handle.pid, 3)

    with anyio.fail_after(20):
        outcome = await backend.wait(handle)
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 3
    assert seen == ["one", "token=********", "on stderr", "structured", "last words", "shown late"]
    assert handle.pid.rsplit("/executions/", 1)[0] not in fake.list_jobs()  # drained, then deleted


@pytest.mark.anyio
async def test_stream_output_ships_to_the_runs_logs_and_off_reads_nothing(
    fake: CloudRunFake, backend: CloudRunBackend
) -> None:
    streamed, quiet = _job(stream_output=True), _job()
    assert streamed.runtime.stream_output and not quiet.runtime.stream_output
    with structlog.testing.capture_logs() as logs:
        handles = [await backend.launch(streamed), await backend.launch(quiet)]
        for handle in handles:
            fake.start_execution(handle.pid)
            fake.write_output(handle.pid, "hello", "world")
        await _until(lambda: _reads(fake, handles[0].pid))
        for handle in handles:
            fake.finish_execution(handle.pid, 0)
        with anyio.fail_after(20):
            outcomes = [await backend.wait(handle) for handle in handles]
    assert [o.exit_code for o in outcomes] == [0, 0]
    assert _output_of(logs, streamed) == ["hello", "world"]
    assert _output_of(logs, quiet) == [] and _reads(fake, handles[1].pid) == []
    assert _warnings(logs, quiet) == []


@pytest.mark.anyio
async def test_an_adopted_run_with_stream_output_ships_its_lines(
    fake: CloudRunFake, backend: CloudRunBackend
) -> None:
    job = _job(stream_output=True)
    launcher = _backend(fake)
    try:
        handle = await launcher.launch(job)
    finally:
        await launcher.aclose()  # the launching agent is gone
    found = await backend.find(job)
    assert found is not None and found.pid == handle.pid
    with structlog.testing.capture_logs() as logs:
        fake.start_execution(handle.pid)
        fake.write_output(handle.pid, "before the adoption", "after it")
        fake.finish_execution(handle.pid, 0)
        with anyio.fail_after(20):
            assert (await backend.wait(found)).exit_code == 0
    assert _output_of(logs, job) == ["before the adoption", "after it"]


@pytest.mark.anyio
async def test_a_refused_read_warns_once_with_the_fix_and_the_run_ends_right(
    fake: CloudRunFake, backend: CloudRunBackend
) -> None:
    refused = json.loads((FIXTURES / "log_refused.json").read_text())["error"]["error"]
    seen: list[str] = []
    job = replace(_job(stream_output=True), output=seen.append)
    with structlog.testing.capture_logs() as logs:
        fake.fail_logs(refused["code"], refused["status"], refused["message"])
        handle = await backend.launch(job)
        fake.start_execution(handle.pid)
        fake.write_output(handle.pid, "never seen")
        await _until(lambda: _reads(fake, handle.pid))
        await anyio.sleep(0.3)  # several rounds: still one warning, and no more reads
        fake.finish_execution(handle.pid, 1)
        with anyio.fail_after(20):
            outcome = await backend.wait(handle)
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 1
    assert seen == []
    [warning] = _warnings(logs, job)
    assert "output is unavailable" in warning and "logging.logEntries.list" in warning
    assert "roles/logging.viewer" in warning  # the fix
    assert len(_reads(fake, handle.pid)) == 1  # a refusal is not asked again every round


@pytest.mark.anyio
async def test_a_transient_failure_and_many_pages_lose_nothing(
    fake: CloudRunFake, backend: CloudRunBackend
) -> None:
    seen: list[str] = []
    job = replace(_job(), output=seen.append)
    lines = [f"line {i}" for i in range(PAGE + 5)]  # more than one page
    with structlog.testing.capture_logs() as logs:
        handle = await backend.launch(job)
        fake.start_execution(handle.pid)
        await _until(lambda: _reads(fake, handle.pid))
        fake.fail_logs(503, "UNAVAILABLE", "The service is currently unavailable.")
        fake.write_output(handle.pid, *lines)
        await _until(lambda: _warnings(logs, job))
        fake.fail_logs(0)
        fake.finish_execution(handle.pid, 0)
        with anyio.fail_after(20):
            assert (await backend.wait(handle)).exit_code == 0
    assert seen == lines
    [warning] = _warnings(logs, job)
    assert "trying again" in warning and "503" in warning
    assert any(read.get("pageToken") for read in _reads(fake, handle.pid))


def test_the_recorded_answer_and_the_filter() -> None:
    fixture = json.loads((FIXTURES / "log_entries.json").read_text())
    assert all(source.startswith("https://") for source in fixture["sources"])
    for entry in fixture["response"]["entries"]:
        assert set(entry) <= LOG_ENTRY_FIELDS
    assert [line_of(entry) for entry in fixture["response"]["entries"]] == fixture["lines"]
    execution = "projects/demo/locations/us-central1/jobs/flow-run-1111/executions/flow-run-1111-x7k2p"
    assert entry_filter(execution, None) == fixture["request"]["filter"]
    assert line_of({"jsonPayload": {"level": "info", "n": 1}}) == '{"level": "info", "n": 1}'


def test_the_fakes_entries_have_the_recorded_shape(fake: CloudRunFake) -> None:
    execution = "projects/demo/locations/us-central1/jobs/shape-1/executions/shape-1-abcde"
    fake.write_output(execution, "a line")
    fake.write_output(execution, json_payload={"message": "json"})
    recorded = json.loads((FIXTURES / "log_entries.json").read_text())["response"]["entries"]
    shapes = {(frozenset(e), frozenset(e["resource"]["labels"]), frozenset(e["labels"])) for e in recorded}
    made = [
        entry
        for _, entry in fake.entries
        if entry["labels"]["run.googleapis.com/execution_name"] == "shape-1-abcde"
    ]
    assert len(made) == 2
    for entry in made:
        assert (
            frozenset(entry),
            frozenset(entry["resource"]["labels"]),
            frozenset(entry["labels"]),
        ) in shapes
