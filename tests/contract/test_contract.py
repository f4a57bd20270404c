"""One contract, every backend: launch, success, failure exit, OOM, start timeout, kill,
a workload stuck waiting, the platform's own timeout, a cancel racing the workload's end.

Each backend's harness drives its platform double (real processes, moto, the fakes in
tests/fakes); the assertions are the same for all, so a backend that passes here reports
outcomes the runner can turn into truthful states.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from support.fake_backend import FAKE

from agent.outcome import Reason
from agent.registry import REGISTRY, KindEntry, register, unregister

# Every kind of the registry, and the test fake (registered through it while its tests
# run), each with its harness module contract/harness_<kind, "-" as "_">.py.
KINDS: dict[str, KindEntry] = {entry.kind: entry for entry in [*REGISTRY, FAKE]}
HARNESSES = {kind: f"contract.harness_{kind.replace('-', '_')}" for kind in KINDS}

pytestmark = pytest.mark.anyio


def _factory(module: ModuleType, kind: str) -> Any:
    """A harness module's factory: takes tmp_path, returns a Harness (or an awaitable of
    one; the fixture calls aclose). `make_harness`, else the class named for the kind
    (ProcessHarness). Cloud harnesses skip when their SDK or double is not installed."""
    names = ("make_harness", "".join(part.title() for part in kind.split("-")) + "Harness")
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"{module.__name__} has none of {', '.join(names)}")


@contextlib.contextmanager
def _registered(entry: KindEntry) -> Iterator[None]:
    """The kind in the registry while its harness runs (only the fake is not already)."""
    if entry.kind in REGISTRY:
        yield
        return
    register(entry)
    try:
        yield
    finally:
        unregister(entry.kind)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=list(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    kind = request.param
    try:
        module = importlib.import_module(HARNESSES[kind])
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name.startswith("contract.harness_") or exc.name.startswith("agent.backends.")):
            pytest.skip(f"no {kind} backend yet")
        raise
    with _registered(KINDS[kind]):
        made = _factory(module, kind)(tmp_path)
        if hasattr(made, "__await__"):
            made = await made
        try:
            yield made
        finally:
            await made.aclose()


async def _launch(harness, name: str):  # type: ignore[no-untyped-def]
    handle = await harness.backend.launch(harness.job(name))
    assert handle.kind == harness.kind
    return handle


async def _wait(harness, handle, limit: float = 60):  # type: ignore[no-untyped-def]
    with anyio.fail_after(limit):
        return await harness.backend.wait(handle)


async def test_handle_round_trips_through_its_pid(harness) -> None:  # type: ignore[no-untyped-def]
    handle = await _launch(harness, "run-roundtrip")
    rebuilt = harness.backend.parse_pid(handle.pid, handle.flow_run_id)
    assert rebuilt == handle
    await harness.finish(handle, exit_code=0)
    await _wait(harness, handle)


async def test_success(harness) -> None:  # type: ignore[no-untyped-def]
    handle = await _launch(harness, "run-success")
    await harness.finish(handle, exit_code=0)
    outcome = await _wait(harness, handle)
    assert outcome.succeeded, outcome
    assert await harness.leftovers(handle) == []


async def test_failure_exit_code(harness) -> None:  # type: ignore[no-untyped-def]
    handle = await _launch(harness, "run-failure")
    await harness.finish(handle, exit_code=1)
    outcome = await _wait(harness, handle)
    assert outcome.exit_code == 1 and not outcome.oom and not outcome.succeeded
    assert "exit code 1" in outcome.message()
    assert await harness.leftovers(handle) == []


async def test_oom_is_reported_as_oom(harness) -> None:  # type: ignore[no-untyped-def]
    handle = await _launch(harness, "run-oom")
    await harness.finish(handle, exit_code=137, oom=True)
    outcome = await _wait(harness, handle)
    assert outcome.oom and not outcome.succeeded, outcome
    assert "OOM" in outcome.message()
    assert await harness.leftovers(handle) == []


async def test_start_timeout_fails_with_the_platforms_reason(harness) -> None:  # type: ignore[no-untyped-def]
    if not harness.supports_start_timeout:
        pytest.skip(f"{harness.kind} workloads cannot fail to start after launch")
    handle = await _launch(harness, "run-never-starts")
    await harness.never_start(handle, reason="CannotPullContainerError: image not found")
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.START_FAILED, outcome
    assert "CannotPullContainerError" in outcome.message()
    assert await harness.leftovers(handle) == []


async def test_kill_stops_the_workload_and_is_idempotent(harness) -> None:  # type: ignore[no-untyped-def]
    handle = await _launch(harness, "run-killed")
    await harness.backend.kill(handle, 1.0)
    outcome = await _wait(harness, handle)
    assert not outcome.succeeded
    await harness.backend.kill(handle, 1.0)  # again: no error
    assert await harness.leftovers(handle) == []


def _hook(harness, name: str, flag: str | None = None):  # type: ignore[no-untyped-def]
    """A harness's optional hook, or a skip: a harness not yet written for a case (another
    backend's hooks land on their own) or a platform without the behaviour (`flag` False)."""
    hook = getattr(harness, name, None)
    if hook is None:
        pytest.skip(f"the {harness.kind} harness has no {name} yet")
    if flag is not None and not getattr(harness, flag, False):
        pytest.skip(f"{harness.kind}: {flag} is False")
    return hook


async def test_stuck_waiting_hits_the_start_deadline_and_is_cleaned_up(harness) -> None:  # type: ignore[no-untyped-def]
    stick_waiting = _hook(harness, "stick_waiting", "supports_start_timeout")
    handle = await _launch(harness, "run-stuck-waiting")
    await stick_waiting(handle, reason="ImagePullBackOff: Back-off pulling image")
    outcome = await _wait(harness, handle)
    assert outcome.reason is Reason.START_FAILED, outcome
    assert "Back-off pulling image" in outcome.message()
    assert await harness.leftovers(handle) == []


async def test_a_timeout_is_reported_as_a_timeout_never_as_oom(harness) -> None:  # type: ignore[no-untyped-def]
    time_out = _hook(harness, "time_out", "supports_timeout")
    handle = await _launch(harness, "run-timed-out")
    await time_out(handle)
    outcome = await _wait(harness, handle)
    assert not outcome.succeeded and not outcome.oom, outcome
    assert outcome.reason is not Reason.OOM
    assert re.search(r"\btime(d)?\s?out", outcome.message(), re.IGNORECASE), outcome.message()
    assert "OOM" not in outcome.message()
    assert await harness.leftovers(handle) == []


async def test_a_cancel_racing_the_end_reports_the_real_end(harness) -> None:  # type: ignore[no-untyped-def]
    finish_racing_cancel = _hook(harness, "finish_racing_cancel")
    if getattr(harness, "supports_racing_cancel", True) is False:
        pytest.skip(f"{harness.kind}: supports_racing_cancel is False")
    handle = await _launch(harness, "run-racing-cancel")
    await finish_racing_cancel(handle, exit_code=1)
    await harness.backend.kill(handle, 1.0)  # arrives after the end: no error
    outcome = await _wait(harness, handle)
    assert outcome.reason is not Reason.KILLED, outcome
    assert outcome.exit_code == 1 and not outcome.succeeded, outcome
    assert await harness.leftovers(handle) == []
