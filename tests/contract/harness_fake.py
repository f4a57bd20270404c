"""The fake backend's harness: in-memory workloads the harness ends through the backend."""

from __future__ import annotations

from pathlib import Path

from support.fake_backend import FAKE_TEMPLATE, FakeBackend, FakeKind

from agent.backends.base import BackendOptions, Handle, Job
from agent.infra import resolve_job_configuration
from agent.infra.spec import RunContext


class FakeHarness:
    kind = "fake"
    supports_start_timeout = True
    supports_timeout = False  # the in-memory workloads have no timeout of their own
    # no stick_waiting: the fake backend has no start deadline to meet (the case skips)

    def __init__(self) -> None:
        self.backend = FakeBackend(BackendOptions(watch_interval=0.1))
        self._kind = FakeKind()

    def job(self, name: str) -> Job:
        resolved = resolve_job_configuration(FAKE_TEMPLATE, {"hold": True}, None, source="contract")
        config = self._kind.config_from_pool(resolved, pool_type="fake", source="contract")
        payload = self._kind.build_payload(config, RunContext(name, name))
        return Job(name, name, "fake", payload, self._kind.runtime(config))

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        self.backend.release(handle.flow_run_id, exit_code=exit_code, oom=oom)

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        self.backend.never_start(handle.flow_run_id, reason=reason)

    async def time_out(self, handle: Handle) -> None:
        raise NotImplementedError("the fake backend has no timeout of its own")

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        self.backend.release(handle.flow_run_id, exit_code=exit_code)

    async def leftovers(self, handle: Handle) -> list[str]:
        return [item for item in self.backend.leftovers() if item.endswith(f" {handle.pid}")]

    async def aclose(self) -> None:
        await self.backend.aclose()


def make_harness(tmp_path: Path) -> FakeHarness:
    return FakeHarness()
