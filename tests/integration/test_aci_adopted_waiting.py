"""ACI groups adopted by another backend (an agent restarted): a container that waits
forever (Waiting, with the state's startTime, as Azure shows it) meets the run's start
deadline again; one whose provisioning Failed is START_FAILED at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from agent.backends.aci import AciBackend
from agent.backends.base import BackendOptions
from agent.outcome import Reason

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    from contract.harness_aci import make_harness

    made = make_harness(tmp_path)
    yield made
    await made.aclose()


def _second_backend(harness: Any) -> AciBackend:
    from contract.harness_aci import StaticTokenCredential

    return AciBackend(
        BackendOptions(watch_interval=0.1, azure_arm_endpoint=harness.fake.url),
        credential=StaticTokenCredential(),
        client_kwargs={"connection_verify": harness.fake.ca_file},
    )


async def _launched_by_a_gone_agent(harness: Any, job: Any) -> Any:
    """Launched by a backend that then stops (its groups keep running): only Azure knows it."""
    launcher = _second_backend(harness)
    try:
        return await launcher.launch(job)
    finally:
        await launcher.aclose()


async def _adopted_outcome(harness: Any, name: str, drive: Any) -> Any:
    job = harness.job(name)
    handle = await _launched_by_a_gone_agent(harness, job)
    drive(handle.pid.rsplit("/", 1)[1])
    adopter = _second_backend(harness)
    try:
        found = await adopter.find(job)
        assert found is not None and found.runtime == job.runtime
        with anyio.fail_after(20):
            return await adopter.wait(found)
    finally:
        await adopter.aclose()


async def test_an_adopted_group_stuck_waiting_meets_the_start_deadline(harness: Any) -> None:
    outcome = await _adopted_outcome(
        harness,
        "run-adopted-waiting",
        lambda name: harness.fake.stick_waiting(name, "Back-off pulling image"),
    )
    assert outcome.reason is Reason.START_FAILED, outcome
    assert "Back-off pulling image" in outcome.message()


async def test_an_adopted_group_whose_provisioning_failed_is_start_failed(harness: Any) -> None:
    outcome = await _adopted_outcome(
        harness, "run-adopted-failed", lambda name: harness.fake.fail_provisioning(name, "no capacity")
    )
    assert outcome.reason is Reason.START_FAILED and "no capacity" in outcome.message(), outcome


async def test_without_the_runs_options_an_adopted_group_has_no_deadline(harness: Any) -> None:
    job = harness.job("run-adopted-bare")
    handle = await _launched_by_a_gone_agent(harness, job)
    harness.fake.stick_waiting(handle.pid.rsplit("/", 1)[1], "Back-off pulling image")
    adopter = _second_backend(harness)
    try:
        bare = adopter.parse_pid(handle.pid, handle.flow_run_id)  # no runtime options
        with anyio.move_on_after(3) as waited:  # longer than the 2 s deadline: nothing ends it
            await adopter.wait(bare)
        assert waited.cancelled_caught
    finally:
        await adopter.aclose()


async def test_a_failed_create_does_not_hide_the_containers_oom(harness: Any) -> None:
    handle = await harness.backend.launch(harness.job("run-failed-create-oom"))
    harness.fake.fail_after_running(handle.pid.rsplit("/", 1)[1], 137, "the operation failed", "OOMKilled")
    with anyio.fail_after(20):
        outcome = await harness.backend.wait(handle)
    assert outcome.reason is Reason.OOM and outcome.exit_code == 137, outcome
    assert await harness.leftovers(handle) == []
