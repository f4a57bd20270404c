"""The process backend's harness: real processes that wait for a verdict file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import psutil

from agent.backends.base import BackendOptions, Handle, Job
from agent.backends.process import ProcessBackend
from agent.infra.process import ProcessKind
from agent.infra.spec import RunContext


class ProcessHarness:
    kind = "process"
    supports_start_timeout = False
    supports_timeout = False  # a local process has no timeout of its own

    def __init__(self, tmp_path: Path) -> None:
        self.backend = ProcessBackend(BackendOptions(state_dir=tmp_path / "state"), hostname="contract-host")
        self._dir = tmp_path
        self._kind = ProcessKind(python=sys.executable, base_env={"PATH": os.environ["PATH"]})

    def _verdict(self, name: str) -> Path:
        return self._dir / f"{name}.verdict"

    def job(self, name: str) -> Job:
        verdict = self._verdict(name)
        script = (
            f"while [ ! -s {verdict} ]; do sleep 0.02; done; v=$(cat {verdict}); "
            'if [ "$v" = oom ]; then kill -9 $$; fi; exit $v'
        )
        config = self._kind.config_from_pool(
            {"command": ["sh", "-c", script]}, pool_type="process", source="contract"
        )
        payload = self._kind.build_payload(config, RunContext(name, name))
        return Job(name, name, "process", payload, self._kind.runtime(config))

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        self._verdict(handle.flow_run_id).write_text("oom" if oom else str(exit_code))

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        raise NotImplementedError("a local process cannot fail to start after launch")

    async def time_out(self, handle: Handle) -> None:
        raise NotImplementedError("a local process has no timeout of its own")

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The process exits on its own; the kill arrives once it has (a zombie or gone)."""
        self._verdict(handle.flow_run_id).write_text(str(exit_code))
        pid = int(handle.pid.rsplit(":", 1)[1])
        with anyio.fail_after(10):
            while await self.leftovers(handle) and psutil.pid_exists(pid):
                await anyio.sleep(0.02)

    async def leftovers(self, handle: Handle) -> list[str]:
        pid = int(handle.pid.rsplit(":", 1)[1])
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return [f"process {pid}"] if alive else []

    async def aclose(self) -> None:
        await self.backend.aclose()
