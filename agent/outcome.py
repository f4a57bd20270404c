"""How a run's infrastructure ended, and the one table that explains exit codes.

Every backend returns an `Outcome`; the runner turns it into a Prefect state. The table
follows Prefect's own `infrastructure_exit_codes.py` so users see familiar wording, and
adds an explicit OOM flag so a memory kill is never reported as a plain failure.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ExitInfo", "Outcome", "Reason", "explain_exit_code"]


class Reason(StrEnum):
    """Why the infrastructure stopped, in the backend-neutral vocabulary."""

    EXITED = "exited"  # the workload ran and exited (any code)
    OOM = "oom"  # killed for memory, by the kernel or the platform
    START_FAILED = "start_failed"  # never reached running (image pull, quota, timeout)
    KILLED = "killed"  # stopped by us (cancel or shutdown)
    LOST = "lost"  # the infrastructure vanished without an exit status


@dataclass(frozen=True)
class ExitInfo:
    explanation: str
    resolution: str
    oom: bool = False


_OOM_RESOLUTION = (
    "Increase the memory available to the flow run: raise the memory limit of the job "
    "(Kubernetes), the task memory (ECS), the container memory (Cloud Run, ACI), or free "
    "memory on the host (process)."
)

# Codes and negative signal numbers (POSIX `returncode`) to a plain explanation.
_TABLE: dict[int, ExitInfo] = {
    0: ExitInfo("Process exited cleanly.", ""),
    1: ExitInfo(
        "Process exited with a general error.",
        "Check the flow run logs for the exception that ended it.",
    ),
    -signal.SIGKILL: ExitInfo(
        "Process was killed by SIGKILL, typically by the operating system for exceeding "
        "memory limits (possible out-of-memory kill), or by a manual kill.",
        _OOM_RESOLUTION,
        oom=True,
    ),
    -signal.SIGTERM: ExitInfo(
        "Process was terminated by SIGTERM, typically by manual cancellation or a shutdown.",
        "Check who stopped the process; rerun the flow if it was not intended.",
    ),
    -signal.SIGSEGV: ExitInfo(
        "Process crashed with a segmentation fault (SIGSEGV).",
        "Check native extensions used by the flow.",
    ),
    125: ExitInfo(
        "The container failed to run (the container runtime reported an error).",
        "Check the image and the container runtime logs.",
    ),
    126: ExitInfo(
        "The command could not be executed (permission denied or not executable).",
        "Check the command and the file permissions in the image or on the host.",
    ),
    127: ExitInfo(
        "The command was not found.",
        "Check the command and that its program is installed on the PATH.",
    ),
    137: ExitInfo(
        "Process was killed (SIGKILL, exit 137), likely due to an out-of-memory (OOM) condition.",
        _OOM_RESOLUTION,
        oom=True,
    ),
    139: ExitInfo(
        "Process crashed with a segmentation fault (exit 139).",
        "Check native extensions used by the flow.",
    ),
    143: ExitInfo(
        "Process was terminated by SIGTERM (exit 143), usually sent by the container runtime.",
        "Check whether the platform stopped the workload (scale-down, eviction, cancel).",
    ),
    247: ExitInfo(
        "Process was terminated due to high memory usage (exit 247).",
        _OOM_RESOLUTION,
        oom=True,
    ),
    0xC000013A: ExitInfo(
        "Process was terminated by Ctrl+C or Ctrl+Break (Windows).",
        "Check who interrupted the process.",
    ),
}

_UNKNOWN = ExitInfo(
    "Process exited with an unexpected status code.",
    "Check the flow run logs and the infrastructure logs for details.",
)


def explain_exit_code(code: int) -> ExitInfo:
    """The explanation for an exit code or a negative signal number."""
    if code in _TABLE:
        return _TABLE[code]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return ExitInfo(f"Process was killed by {name}.", _UNKNOWN.resolution)
    return _UNKNOWN


@dataclass(frozen=True)
class Outcome:
    """The end of one run's infrastructure, the same shape for every backend."""

    reason: Reason
    exit_code: int | None = None
    detail: str = ""  # the backend's own words: stoppedReason, pod reason, Azure message

    @property
    def succeeded(self) -> bool:
        return self.reason is Reason.EXITED and self.exit_code == 0

    @property
    def oom(self) -> bool:
        if self.reason is Reason.OOM:
            return True
        return self.exit_code is not None and explain_exit_code(self.exit_code).oom

    def message(self) -> str:
        """One line a person can act on, e.g. for a CRASHED state."""
        parts: list[str] = []
        if self.exit_code is not None:
            info = explain_exit_code(self.exit_code)
            parts.append(f"exit code {self.exit_code}: {info.explanation}")
        elif self.reason is Reason.START_FAILED:
            parts.append("the infrastructure never started")
        elif self.reason is Reason.LOST:
            parts.append("the infrastructure disappeared without an exit status")
        elif self.reason is Reason.KILLED:
            parts.append("the infrastructure was killed")
        if self.detail:
            parts.append(self.detail)
        if self.oom:
            parts.append("OOM warning: the flow run was probably killed for using too much memory")
        return "; ".join(parts) if parts else "the infrastructure ended"

    def resolution(self) -> str:
        if self.oom:
            return _OOM_RESOLUTION
        if self.exit_code is not None:
            return explain_exit_code(self.exit_code).resolution
        return _UNKNOWN.resolution
