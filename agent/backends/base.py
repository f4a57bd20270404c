"""The one small interface every backend implements.

A backend turns a fully resolved `Job` into running infrastructure and reports how it
ended. It knows nothing of polling, claiming, Prefect states or the server: the runner
owns all of that. Backends raise only the errors defined here, so the runner can tell a
bad job (fail that run) from an unavailable platform (retry later).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from agent.observe.logging import get_logger
from agent.outcome import Outcome
from agent.retry import Retryable, RetryPolicy

__all__ = [
    "Backend",
    "BackendOptions",
    "BackendError",
    "BackendUnavailable",
    "Controllable",
    "Delivery",
    "Handle",
    "InfrastructureNotFound",
    "Job",
    "LaunchError",
    "OutputSink",
    "output_sink",
    "sent",
]

# Where a workload's output goes, one line at a time (already masked, no trailing newline).
# A flow run's default is the agent log with its flow_run_id, which ships the line to the
# run's logs in the UI; a direct run (`flow-agent infra run`) passes one that prints.
OutputSink = Callable[[str], None]


# A line in Prefect's console format ("12:00:01.123 | INFO    | ...") is one of the engine's
# own log records, which its API log handler already sends to the run's logs: shipped again,
# the UI would show it twice. Everything else (prints, a traceback before the engine's logging
# is up, a non-Python program's output) is shipped.
_ENGINE_RECORD = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \| (DEBUG|INFO|WARNING|ERROR|CRITICAL) *\| ")


def output_sink(kind: str, flow_run_id: str, given: OutputSink | None = None) -> OutputSink:
    """`given`, else the agent log, shipping to the flow run's logs what the engine does not."""
    if given is not None:
        return given
    log = get_logger(f"agent.backends.{kind}", flow_run_id=flow_run_id)

    def emit(line: str) -> None:
        log.info(line, stream="output", ship=_ENGINE_RECORD.match(line) is None)

    return emit


def sent(emit: OutputSink, line: str, kind: str, flow_run_id: str) -> bool:
    """Hand one line to a sink; False (said once in the agent log) when the sink failed: a
    sink's failure must never end the watch of the workload, only its output."""
    try:
        emit(line)
    except Exception as exc:  # noqa: BLE001 - whatever the sink raised
        log = get_logger(f"agent.backends.{kind}", flow_run_id=flow_run_id)
        log.warning("the output sink failed; no more output is sent", error=repr(exc))
        return False
    return True


# The typed runtime options of one kind: what its backend needs beyond the request payload
# (credentials, timeouts, cleanup flags). Each kind declares the type (`InfraKind.runtime`)
# and each backend the one it takes (`Backend.runtime_type`).
R = TypeVar("R")


@dataclass(frozen=True)
class BackendOptions:
    """Agent-wide settings every backend gets at construction (per-run ones come in the Job)."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)  # the user's FLOW_AGENT_RETRY_*
    watch_interval: float = 5.0  # seconds between status reads of one batch of workloads
    state_dir: Path | None = None  # where a backend may keep state that outlives the agent
    gcp_endpoint: str | None = None  # Cloud Run API base URL (tests point it at a fake)
    gcp_logging_endpoint: str | None = None  # Cloud Logging API base URL (default: Google's)
    azure_arm_endpoint: str | None = None  # ARM base URL (tests point it at a fake)
    kubeconfig: str | None = None  # default: in-cluster config, else ~/.kube/config
    warm_start: bool = True  # process runs of the default command fork from a warm engine


@dataclass(frozen=True)
class Job(Generic[R]):
    """Everything a backend needs to launch one flow run, already templated and patched.

    `payload` is the exact request the backend sends (for a process: command, env, cwd),
    built by the run's infrastructure kind with the user's customizations applied; it holds
    the run's credentials, so it is never logged. `runtime` is the kind's typed runtime
    options, for settings that are not part of the request (credentials, timeouts, cleanup).
    """

    flow_run_id: str
    flow_run_name: str
    kind: str
    payload: Mapping[str, Any] = field(repr=False)
    runtime: R = field(repr=False)  # type: ignore[assignment]
    source: str = ""  # where the configuration came from, for messages
    # None: the agent log with flow_run_id (see `OutputSink`); backends call `emit` per line
    output: OutputSink | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Handle(Generic[R]):
    """A self-contained reference to launched infrastructure.

    `pid` is what the server stores as `infrastructure_pid`; any agent can rebuild a
    handle from it with `Backend.parse_pid` and kill or inspect the workload.
    """

    kind: str
    pid: str
    flow_run_id: str = ""
    # The run's runtime options when known (an adopted run's are rebuilt from its pool and
    # deployment): credentials and cleanup flags the pid string cannot carry.
    runtime: R | None = field(default=None, compare=False, repr=False)


class BackendError(Exception):
    """Base for errors a backend reports; `str()` is safe to show a user (no secrets)."""


class LaunchError(BackendError):
    """The job cannot be launched as configured: fail this run, do not retry."""


class BackendUnavailable(BackendError, Retryable):
    """The platform could not be reached or throttled us: the operation may be retried.

    Retry with the agent's one policy: `RetryPolicy.call(op, retry_on=(BackendUnavailable,))`;
    set `retry_after` (seconds) when the platform said how long to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InfrastructureNotFound(BackendError):
    """The workload named by a handle does not exist (any more)."""


@runtime_checkable
class Backend(Protocol[R]):
    kind: ClassVar[str]
    # Remote workloads (containers in a cloud) outlive the agent: on shutdown they are left
    # running, not killed; a local process is a child and must not be orphaned.
    remote: ClassVar[bool]
    runtime_type: ClassVar[type]  # the runtime options this backend takes (R)

    async def launch(self, job: Job[R]) -> Handle[R]:
        """Start the workload; return as soon as it exists."""
        ...

    async def wait(self, handle: Handle) -> Outcome:
        """Block until the workload has ended. A failed workload is an Outcome, not an error."""
        ...

    async def kill(self, handle: Handle, grace: float) -> None:
        """Stop politely, then forcefully after `grace` seconds. Idempotent."""
        ...

    async def inspect(self, handle: Handle) -> Outcome | None:
        """The outcome if the workload has ended, None while it runs (for reconciliation)."""
        ...

    async def find(self, job: Job[R]) -> Handle[R] | None:
        """The workload launching `job` made, alive or ended, if one exists; None when the
        platform proves there is none. `job` is the run's job rebuilt from its pool and
        deployment (the agent that launched it may be dead), so the lookup goes by what
        identifies the run on the platform: its flow run id (tags, labels, a name derived
        from it). Raises BackendError when it cannot tell (the platform is unreachable, a
        process on another host): "unknown" is never "none"."""
        ...

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        """Rebuild a handle from an `infrastructure_pid` string."""
        ...

    async def aclose(self) -> None:
        """Release clients and watchers."""
        ...


class Delivery(Enum):
    """How a control intent fared (see `Controllable`)."""

    ACKED = "acked"  # the workload's engine committed it: the kill that follows means it
    NOT_CONNECTED = "not_connected"  # no engine listened (not started yet, a custom command)
    NO_ACK = "no_ack"  # an engine listened but did not confirm within the bound


@runtime_checkable
class Controllable(Protocol):
    """A backend that can tell a workload's Prefect engine why it is about to be killed
    (the process backend, over Prefect's loopback control channel). Without it, an engine
    takes the kill of a cancelled run for a crash and runs the wrong hooks."""

    async def deliver(self, handle: Handle, intent: str) -> Delivery:
        """Send `intent` ("cancel") and wait, bounded, for the engine's ack."""
        ...
