"""What the contract suite needs from each backend's test double.

Every backend ships a `Harness` (in tests/contract/harness_<kind>.py) that builds a real
Job for its backend, drives the platform double to make a launched workload end a given
way, and says whether anything is left behind. The suite (test_contract.py) then checks
the same promises for every backend.
"""

from __future__ import annotations

from typing import Protocol

from agent.backends.base import Backend, Handle, Job


class Harness(Protocol):
    kind: str
    backend: Backend  # configured with a short start deadline and watch interval
    supports_start_timeout: bool  # False where "never starts" does not exist (process)
    # False where the platform has no timeout of its own (ACI, a local process). A harness
    # without the attribute or without a hook below (not written yet) skips those cases.
    supports_timeout: bool

    def job(self, name: str) -> Job:
        """A launchable job, built through the backend's kind from a pool configuration."""
        ...

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        """Make the workload end with this exit code (and the platform's OOM signal)."""
        ...

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        """Keep the workload from ever running (image pull error, quota, ...) with `reason`."""
        ...

    async def stick_waiting(self, handle: Handle, *, reason: str) -> None:
        """The workload waits forever, showing what the real service shows for a waiting one
        (ACI: Waiting with the state's startTime; Kubernetes: a Pending pod with a startTime
        and a waiting container; Cloud Run: pending conditions) with `reason`."""
        ...

    async def time_out(self, handle: Handle) -> None:
        """The platform's own timeout ends the workload, as the service reports it
        (Kubernetes: activeDeadlineSeconds, DeadlineExceeded; Cloud Run: the task timeout)."""
        ...

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The workload ends on its own with `exit_code` just before the suite's kill arrives:
        by the time the kill is sent the platform shows the end (the kill answers as the
        service does for an ended workload)."""
        ...

    async def leftovers(self, handle: Handle) -> list[str]:
        """What still exists on the platform for this workload (empty once cleaned up)."""
        ...

    async def aclose(self) -> None: ...
