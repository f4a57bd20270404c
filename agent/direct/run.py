"""Run a direct job to its end on a backend, and say how it ended.

The backend launches and watches a direct run exactly as a flow run's: its output comes
through `Job.output`, the end is an `Outcome`, and a cancelled wait kills the workload and
lets the backend clean up (a deleted Cloud Run job, ACI group or Kubernetes Job) before the
caller sees the cancellation, so a Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

from agent.backends.base import Backend, Handle, Job
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome, Reason

__all__ = ["Result", "exit_status", "kill_and_clean", "result_of", "run_job"]

# What a shell would say for a workload that has no exit status of its own.
NO_STATUS: Final = 1
OOM_STATUS: Final = 128 + signal.SIGKILL
_CLEANUP_WAIT: Final = 60.0  # seconds for the end and the cleanup after a kill


@dataclass(frozen=True)
class Result:
    """How a direct run ended. `exit_code` is the workload's (a signal as 128+N, as a shell
    shows it; an OOM kill without a code is 137), or 1 when it has none (never started,
    lost); `explanation` is one line."""

    exit_code: int
    oom: bool
    explanation: str
    infrastructure_id: str
    reason: str = Reason.EXITED.value

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.reason == Reason.EXITED.value


def exit_status(outcome: Outcome) -> int:
    code = outcome.exit_code
    if code is None:  # a platform that says "OOM" without a code: what a shell shows for it
        return OOM_STATUS if outcome.oom else NO_STATUS
    if code < 0:  # a local process killed by a signal: the shell's 128+N
        return 128 + min(-code, 127)
    return code if code < 256 else NO_STATUS


def result_of(outcome: Outcome, infrastructure_id: str) -> Result:
    # the platform's own words may quote the workload's env or output: masked here, once
    explanation = "" if outcome.succeeded else REDACTOR.mask_text(outcome.message())
    return Result(exit_status(outcome), outcome.oom, explanation, infrastructure_id, outcome.reason.value)


async def run_job(
    backend: Backend,
    job: Job,
    *,
    kill_grace: float,
    infra_id: Callable[[Handle], str],
    on_launched: Callable[[str], None] | None = None,
) -> Result:
    """Launch `job`, wait for its end. Cancelled (Ctrl-C), it kills the workload, waits for
    its end and cleanup, then lets the cancellation go on."""
    handle = await backend.launch(job)
    ident = infra_id(handle)
    if on_launched is not None:
        on_launched(ident)
    try:
        outcome = await backend.wait(handle)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await kill_and_clean(backend, handle, kill_grace)
        raise
    return result_of(outcome, ident)


async def kill_and_clean(backend: Backend, handle: Handle, grace: float) -> Outcome | None:
    """Kill, then wait for the end the backend reports (its cleanup done by then)."""
    await backend.kill(handle, grace)
    with anyio.move_on_after(grace + _CLEANUP_WAIT):
        return await backend.wait(handle)
    return None


def interrupted_result(infrastructure_id: str) -> Result:
    return Result(
        128 + signal.SIGINT,
        False,
        "interrupted: the workload was killed",
        infrastructure_id,
        Reason.KILLED.value,
    )
