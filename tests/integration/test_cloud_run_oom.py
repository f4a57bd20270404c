"""A Cloud Run task the system killed (issue 14): the execution's system log decides OOM.

The real `run_v2` REST clients and Cloud Logging's REST `entries:list` against the Cloud
Run fake, the backend's own engine, no Prefect server. The Admin API only says SIGKILL
(`term_signal` 9); the memory-limit entry of the execution's system log
(`run.googleapis.com/varlog/system`, tests/fixtures/cloud_run/system_memory.json) makes an
OOM in Cloud Run's words, its absence a SIGKILL by the system; a refused read leaves the
older heuristic with one warning; a timeout stays a timeout and reads nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from fakes.cloud_run_fake import MEMORY_WORDS, CloudRunFake

from agent.backends.base import BackendOptions, Job
from agent.backends.cloud_run import CloudRunBackend
from agent.backends.cloud_run.watch import SYSTEM_TRIES
from agent.infra.cloud_run import CloudRunKind
from agent.infra.merge import resolve_job_configuration
from agent.infra.spec import RunContext
from agent.outcome import Outcome, Reason

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/cloud-run-v2.json"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cloud_run"
VARIABLES = {"image": "us-docker.pkg.dev/demo/flows/flow:1", "credentials": {"project": "demo"}}
WORDS = "Memory limit of 512 MiB exceeded with 530 MiB used"


@pytest.fixture(scope="module")
def fake() -> Iterator[CloudRunFake]:
    with CloudRunFake() as started:
        yield started


def _backend(fake: CloudRunFake, interval: float = 0.05) -> CloudRunBackend:
    # the plain-http Cloud Run endpoint is the double, which serves Cloud Logging too
    return CloudRunBackend(BackendOptions(watch_interval=interval, gcp_endpoint=fake.url))


def _job(name: str, **variables: Any) -> Job:
    kind = CloudRunKind()
    template = json.loads(TEMPLATE.read_text())
    template["job_configuration"]["stream_output"] = "{{ stream_output }}"
    template["variables"]["properties"]["stream_output"] = {"type": "boolean", "default": False}
    resolved = resolve_job_configuration(template, {**VARIABLES, **variables}, {}, source="test")
    config = kind.config_from_pool(resolved, pool_type="cloud-run-v2", source="test")
    run_id = f"{name}-1111"
    context = RunContext(run_id, name, labels={"prefect.io/flow-run-id": run_id})
    return Job(run_id, name, "cloud-run", kind.build_payload(config, context), kind.runtime(config))


def _system_reads(fake: CloudRunFake, execution: str) -> list[dict[str, Any]]:
    name = execution.rsplit("/", 1)[1]
    return [
        read
        for read in fake.entry_reads
        if f'execution_name"="{name}"' in read["filter"] and "varlog%2Fsystem" in read["filter"]
    ]


def _warnings(logs: list[dict[str, Any]], job: Job) -> list[str]:
    return [
        e["event"] for e in logs if e.get("flow_run_id") == job.flow_run_id and e["log_level"] == "warning"
    ]


async def _end(backend: CloudRunBackend, job: Job, finish: Any) -> tuple[str, Outcome]:
    handle = await backend.launch(job)
    finish(handle.pid)
    with anyio.fail_after(20):
        return handle.pid, await backend.wait(handle)


def test_an_oom_is_the_memory_entry_of_the_system_log_even_when_shown_late(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake, interval=0.25)  # the read waits 0.5 s after the end is seen
        try:
            for job in (_job("oom-quiet"), _job("oom-streaming", stream_output=True)):

                def killed_for_memory(pid: str) -> None:
                    # Cloud Logging shows the entry 0.3 s after the end: later than the first
                    # round that sees the end, earlier than the settled read
                    fake.write_system(pid, MEMORY_WORDS, "ERROR", delay=0.3)
                    fake.system_kill(pid, words=False)

                pid, outcome = await _end(backend, job, killed_for_memory)
                assert outcome.reason is Reason.OOM and outcome.oom, outcome
                assert WORDS in outcome.message() and "signal 9" in outcome.message()
                assert len(_system_reads(fake, pid)) == 1  # one bounded read, output on or off
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_sigkill_without_the_memory_entry_is_a_sigkill_by_the_system(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            for words in (True, False):
                pid, outcome = await _end(
                    backend, _job(f"killed-{words}"), lambda p, w=words: fake.system_kill(p, words=w)
                )
                assert outcome.reason is Reason.EXITED and not outcome.oom and outcome.exit_code is None, (
                    outcome
                )
                message = outcome.message()
                assert "SIGKILL" in message and "no memory-limit entry" in message and "OOM" not in message
                assert ("Container terminated on signal 9." in message) is words
                assert len(_system_reads(fake, pid)) == 1
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_refused_read_falls_back_to_the_heuristic_with_one_warning(fake: CloudRunFake) -> None:
    refused = json.loads((FIXTURES / "log_refused.json").read_text())["error"]["error"]

    async def scenario() -> None:
        backend = _backend(fake)
        seen: list[str] = []
        try:
            fake.fail_logs(refused["code"], refused["status"], refused["message"])
            # with no output, and with a sink whose own reads are refused first: one warning each
            for job in (_job("refused-quiet"), replace(_job("refused-sink"), output=seen.append)):
                with structlog.testing.capture_logs() as logs:
                    pid, outcome = await _end(backend, job, lambda p: fake.finish_execution(p, oom=True))
                assert outcome.reason is Reason.OOM, outcome
                assert "entry is in the execution's logs" in outcome.message()  # the older wording
                [warning] = _warnings(logs, job)
                assert "roles/logging.viewer" in warning and "logging.logEntries.list" in warning
            assert seen == []
        finally:
            fake.fail_logs(0)
            await backend.aclose()

    anyio.run(scenario)


def test_a_timeout_stays_a_timeout_and_reads_no_system_log(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:

            def timed_out_with_memory_words(pid: str) -> None:
                fake.write_system(pid, MEMORY_WORDS, "ERROR")  # adversarial: the entry is there too
                fake.time_out(pid)

            pid, outcome = await _end(backend, _job("timed-out-oom-words"), timed_out_with_memory_words)
            assert outcome.reason is Reason.EXITED and not outcome.oom, outcome
            assert "timeout of 600 s" in outcome.message() and WORDS not in outcome.message()
            assert _system_reads(fake, pid) == []
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_an_adopted_or_inspected_run_reads_the_system_log_too(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        launcher = _backend(fake)
        jobs = {"adopted-oom": True, "adopted-kill": False}
        handles = {name: await launcher.launch(_job(name)) for name in jobs}
        await launcher.aclose()  # the launching agent is gone
        for name, oom in jobs.items():
            if oom:
                fake.finish_execution(handles[name].pid, oom=True)
            else:
                fake.system_kill(handles[name].pid)

        finder = _backend(fake)
        try:
            for name, oom in jobs.items():
                found = await finder.find(_job(name))
                assert found is not None and found.pid == handles[name].pid
                inspected = await finder.inspect(found)
                assert inspected is not None and inspected.oom is oom, inspected
                with anyio.fail_after(20):
                    waited = await finder.wait(found)
                assert waited.oom is oom and (WORDS in waited.message()) is oom, waited
                assert len(_system_reads(fake, found.pid)) == 2  # inspect's read, then the watch's
        finally:
            await finder.aclose()

    anyio.run(scenario)


def test_a_transient_failure_is_tried_next_round_then_falls_back_with_one_warning(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake, interval=0.25)  # rounds far enough apart to step in between
        try:
            for recovers in (True, False):
                job = _job(f"flaky-logs-{recovers}")
                with structlog.testing.capture_logs() as logs:
                    handle = await backend.launch(job)
                    fake.fail_logs(503, "UNAVAILABLE", "The service is currently unavailable.")
                    fake.finish_execution(handle.pid, oom=True)
                    with anyio.fail_after(20):
                        while not _system_reads(fake, handle.pid):
                            await anyio.sleep(0.02)
                        if recovers:
                            fake.fail_logs(0)
                        outcome = await backend.wait(handle)
                fake.fail_logs(0)
                assert outcome.reason is Reason.OOM, outcome
                reads, warnings = _system_reads(fake, handle.pid), _warnings(logs, job)
                if recovers:  # the second round's read finds the entry, nothing is said
                    assert WORDS in outcome.message() and len(reads) == 2 and warnings == []
                else:  # SYSTEM_TRIES rounds, then the older wording and one warning
                    assert "entry is in the execution's logs" in outcome.message()
                    assert len(reads) == SYSTEM_TRIES
                    [warning] = warnings
                    assert "system log is unavailable" in warning and "503" in warning
        finally:
            fake.fail_logs(0)
            await backend.aclose()

    anyio.run(scenario)
