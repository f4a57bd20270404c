"""A sixth kind for tests: `FakeKind` and `FakeBackend`, registered through `agent.registry`.

The fake is a real backend, only in memory: workloads are records in the backend, they
start, run, end and are killed the way the `Backend` protocol says, and the contract
suite holds it to the same promises as the five real ones. Each run is scripted by its
job variables (the pool's base job template is `FAKE_TEMPLATE`):

- `launch_delay` (seconds): how long `launch` takes;
- `launch_error`: `launch` raises `LaunchError` with this message;
- `hold_launch`: `launch` waits until the test calls `release_launch(run_id)`;
- `hold`: the workload runs until the test calls `release(run_id, exit_code=...)`;
- `exit_code` (with `run_seconds`): otherwise the workload ends by itself with this code.

and by the test, through the backend: `launch_started(run_id)` / `launched(run_id)` wait
for those moments, `release_launch`, `release`, `never_start`; `runs[run_id].history`
says what happened to a run, in order ("launching", "launched", "killed", "ended", ...).

The kind is not in the registry by default: `fake_registered()` adds it (a test fixture
wraps it) and takes it out again.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.backends.base import BackendOptions, Handle, InfrastructureNotFound, Job, LaunchError
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError
from agent.outcome import Outcome, Reason
from agent.registry import REGISTRY, KindEntry, register

__all__ = [
    "FAKE",
    "FAKE_TEMPLATE",
    "FakeBackend",
    "FakeConfig",
    "FakeKind",
    "FakeRuntime",
    "fake_registered",
]

FAKE = KindEntry(
    "fake",
    "support.fake_backend:FakeKind",
    "support.fake_backend:FakeBackend",
    pool_types=("fake",),
    block_slug="fake",
)

_VARIABLES: dict[str, dict[str, Any]] = {
    "launch_delay": {"type": "number", "default": 0},
    "launch_error": {"type": "string"},
    "hold_launch": {"type": "boolean", "default": False},
    "hold": {"type": "boolean", "default": False},
    "exit_code": {"type": "integer", "default": 0},
    "run_seconds": {"type": "number", "default": 0},
}
# A base job template in Prefect's format: each job variable goes to the same field.
FAKE_TEMPLATE: dict[str, Any] = {
    "job_configuration": {name: "{{ " + name + " }}" for name in _VARIABLES},
    "variables": {"type": "object", "properties": _VARIABLES},
}


@contextlib.contextmanager
def fake_registered() -> Iterator[KindEntry]:
    """The fake kind in the registry for the duration of the block."""
    register(FAKE)
    try:
        yield FAKE
    finally:
        REGISTRY.unregister(FAKE.kind)


# -- the kind -------------------------------------------------------------------------------


class FakeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    launch_delay: float = 0.0
    launch_error: str | None = None
    hold_launch: bool = False
    hold: bool = False
    exit_code: int = 0
    run_seconds: float = 0.0


@dataclass(frozen=True)
class FakeRuntime:
    """What the backend needs beyond the payload: the run's script."""

    launch_delay: float = 0.0
    launch_error: str | None = None
    hold_launch: bool = False
    hold: bool = False
    exit_code: int = 0
    run_seconds: float = 0.0


class FakeKind:
    kind: ClassVar[str] = "fake"

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> FakeConfig:
        return _config(resolved, source)

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> FakeConfig:
        return _config({k: v for k, v in data.items() if k not in ("type", "block_type_slug")}, source)

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        return {"name": ctx.flow_run_name, "labels": dict(ctx.labels), "env": dict(ctx.env)}

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        return []

    def runtime(self, config: BaseModel) -> FakeRuntime:
        assert isinstance(config, FakeConfig)
        return FakeRuntime(**config.model_dump())


def _config(values: Mapping[str, Any], source: str) -> FakeConfig:
    try:
        return FakeConfig.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        path = ".".join(str(part) for part in error["loc"])
        raise InfraError(f"{path} of {source}: {error['msg']}", field=path, source=source) from None


# -- the backend ----------------------------------------------------------------------------


@dataclass(eq=False)
class Workload:
    handle: Handle[FakeRuntime]
    runtime: FakeRuntime
    ends_at: float | None  # when it exits by itself; None: held until released or killed
    outcome: Outcome | None = None
    kills: list[float] = field(default_factory=list)  # the grace of each kill received
    ended: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class FakeRun:
    """Everything the backend saw of one flow run, whether or not it launched."""

    history: list[str] = field(default_factory=list)
    launch_started: anyio.Event = field(default_factory=anyio.Event)
    launch_gate: anyio.Event = field(default_factory=anyio.Event)
    launched: anyio.Event = field(default_factory=anyio.Event)
    workloads: list[Workload] = field(default_factory=list)


class FakeBackend:
    kind: ClassVar[str] = "fake"
    remote: ClassVar[bool] = False  # like a child process: killed when the agent stops
    runtime_type: ClassVar[type] = FakeRuntime

    def __init__(self, options: BackendOptions) -> None:
        self.options = options
        self.runs: dict[str, FakeRun] = {}
        self.workloads: dict[str, Workload] = {}  # by pid
        self.closed = False
        self._pids = itertools.count(1)

    def run(self, flow_run_id: str) -> FakeRun:
        return self.runs.setdefault(flow_run_id, FakeRun())

    # -- what the test drives ---------------------------------------------------------------

    async def launch_started(self, flow_run_id: str) -> None:
        await self.run(flow_run_id).launch_started.wait()

    async def launched(self, flow_run_id: str) -> Workload:
        run = self.run(flow_run_id)
        await run.launched.wait()
        return run.workloads[-1]

    def release_launch(self, flow_run_id: str) -> None:
        self.run(flow_run_id).launch_gate.set()

    def release(self, flow_run_id: str, *, exit_code: int, oom: bool = False) -> None:
        """End the run's workload with this exit code (OOM: the platform says so)."""
        workload = self.run(flow_run_id).workloads[-1]
        self._end(workload, Outcome(Reason.OOM if oom else Reason.EXITED, exit_code))

    def never_start(self, flow_run_id: str, *, reason: str) -> None:
        workload = self.run(flow_run_id).workloads[-1]
        self._end(workload, Outcome(Reason.START_FAILED, detail=reason))

    def leftovers(self) -> list[str]:
        return [f"fake workload {pid}" for pid, w in self.workloads.items() if self._outcome(w) is None]

    # -- the Backend protocol ---------------------------------------------------------------

    async def launch(self, job: Job[FakeRuntime]) -> Handle[FakeRuntime]:
        runtime, run = job.runtime, self.run(job.flow_run_id)
        run.history.append("launching")
        run.launch_started.set()
        if runtime.hold_launch:
            await run.launch_gate.wait()
        await anyio.sleep(runtime.launch_delay)
        if runtime.launch_error:
            run.history.append("launch failed")
            raise LaunchError(runtime.launch_error)
        handle = Handle(self.kind, f"fake-{next(self._pids)}", job.flow_run_id, runtime)
        ends_at = None if runtime.hold else time.monotonic() + runtime.run_seconds
        workload = Workload(handle, runtime, ends_at)
        self.workloads[handle.pid] = workload
        run.workloads.append(workload)
        run.history.append("launched")
        run.launched.set()
        return handle

    async def wait(self, handle: Handle) -> Outcome:
        workload = self._get(handle)
        while (outcome := self._outcome(workload)) is None:
            left = math.inf if workload.ends_at is None else workload.ends_at - time.monotonic()
            with anyio.move_on_after(max(0.0, left)):
                await workload.ended.wait()
        return outcome

    async def kill(self, handle: Handle, grace: float) -> None:
        workload = self._get(handle)
        workload.kills.append(grace)
        if self._outcome(workload) is None:
            self.run(handle.flow_run_id).history.append("killed")
            self._end(workload, Outcome(Reason.KILLED, detail="flow-agent killed the fake workload"))

    async def inspect(self, handle: Handle) -> Outcome | None:
        return self._outcome(self._get(handle))

    async def find(self, job: Job[FakeRuntime]) -> Handle[FakeRuntime] | None:
        run = self.runs.get(job.flow_run_id)
        return run.workloads[-1].handle if run and run.workloads else None

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        self.closed = True

    # -- the workloads ------------------------------------------------------------------------

    def _get(self, handle: Handle) -> Workload:
        workload = self.workloads.get(handle.pid)
        if workload is None:
            raise InfrastructureNotFound(f"no fake workload {handle.pid}")
        return workload

    def _outcome(self, workload: Workload) -> Outcome | None:
        """The outcome, once ended (a workload that is not held ends by itself on time)."""
        if workload.outcome is None and workload.ends_at is not None and time.monotonic() >= workload.ends_at:
            self._end(workload, Outcome(Reason.EXITED, workload.runtime.exit_code))
        return workload.outcome

    def _end(self, workload: Workload, outcome: Outcome) -> None:
        if workload.outcome is not None:
            return
        workload.outcome = outcome
        self.run(workload.handle.flow_run_id).history.append("ended")
        workload.ended.set()
