"""The Kubernetes backend against the API double for what Kubernetes itself ends: API
evictions and node shutdown (not the flow's 137/143), the Job's own failure reason, the
kill's grace period reaching the pods, and a kill that arrives after the run ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from agent.outcome import Reason

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    from contract.harness_kubernetes import make_harness

    made = make_harness(tmp_path)
    yield made
    await made.aclose()


async def _running(harness: Any, name: str) -> tuple[Any, str]:
    handle = await harness.backend.launch(harness.job(name))
    job = handle.pid.split(":")[-1]
    harness.fake.set_pod_phase(job, "Running")
    return handle, job


async def _wait(harness: Any, handle: Any) -> Any:
    with anyio.fail_after(30):
        return await harness.backend.wait(handle)


async def test_an_api_eviction_is_reported_as_such_not_as_exit_143(harness: Any) -> None:
    handle, job = await _running(harness, "run-drained")
    harness.fake.disrupt(job, "EvictionByEvictionAPI", "Eviction API: evicting")
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.LOST and outcome.exit_code is None, outcome
    assert "EvictionByEvictionAPI" in outcome.message() and "BackoffLimitExceeded" in outcome.message()


async def test_node_shutdown_is_reported_as_such(harness: Any) -> None:
    handle, job = await _running(harness, "run-node-gone")
    words = "Pod was terminated in response to imminent node shutdown."
    harness.fake.disrupt(job, "TerminationByKubelet", words, pod_reason="Terminated")
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.LOST and outcome.exit_code is None, outcome
    assert words in outcome.message() and "OOM" not in outcome.message()


async def test_the_jobs_failure_reason_is_named_with_the_exit_code(harness: Any) -> None:
    handle, job = await _running(harness, "run-exit-3")
    await harness.finish(handle, exit_code=3)
    outcome = await _wait(harness, handle)
    assert outcome.exit_code == 3
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in outcome.message()


async def test_the_kills_grace_period_reaches_the_pods(harness: Any) -> None:
    handle, job = await _running(harness, "run-graceful")
    await harness.backend.kill(handle, 7)
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.KILLED
    ours = [d for d in harness.fake.pod_deletions if d["name"].startswith(job) and d["by"] == "client"]
    assert [d["gracePeriodSeconds"] for d in ours] == ["7"]
    assert harness.fake.leftovers("default", job) == []


async def test_a_role_that_cannot_delete_pods_still_kills_the_job(harness: Any) -> None:
    harness.fake.forbid_pod_delete = True
    handle, job = await _running(harness, "run-no-pod-rights")
    await harness.backend.kill(handle, 5)
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.KILLED
    assert harness.fake.leftovers("default", job) == []
    assert all(d["by"] == "garbage collector" for d in harness.fake.pod_deletions)


async def test_a_kill_after_the_job_ended_reports_the_real_end_and_deletes_nothing_twice(
    harness: Any,
) -> None:
    handle, job = await _running(harness, "run-ended-first")
    await harness.finish(handle, exit_code=0)
    await harness.backend.kill(handle, 5)
    outcome = await _wait(harness, handle)
    assert outcome.succeeded, outcome
    assert not any(d["by"] == "client" for d in harness.fake.pod_deletions)  # no kill was sent
