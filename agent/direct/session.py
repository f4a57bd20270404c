"""One direct-run session: a Prefect client, the job builder and the backends, and the
infrastructure id a detached run is known by.

An infrastructure id is `SOURCE:RUN_ID:PID`, e.g.
`cloud-run-job/nightly:3f0c…:projects/p/locations/r/jobs/direct-3f0c1a2b-…/executions/…`:
SOURCE (`TYPE/BLOCK` or `pool/POOL`) says where to read the configuration again (the
block's credentials are read from the server then, never put into the id), RUN_ID is the
direct run's id (what names and labels its workload) and PID is the backend's own handle
string. `logs`, `wait` and `kill` rebuild the job from SOURCE (with the same `--job-var`s
for a pool whose variables chose credentials or a region) and the handle from PID.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from agent.api import PrefectClient
from agent.backends import Backends
from agent.backends.base import Backend, Handle, Job, OutputSink
from agent.direct.build import DirectBuilder, DirectError, Request, Target
from agent.direct.run import Result, kill_and_clean, result_of, run_job
from agent.observe.logging import REDACTOR
from agent.orchestrate.trigger import client_from_settings
from agent.outcome import Outcome
from agent.registry import REGISTRY
from agent.runtime.app import backend_options
from agent.settings import Settings

__all__ = ["DirectSession", "InfraId"]


@dataclass(frozen=True)
class InfraId:
    target: Target
    run_id: str
    pid: str

    def __str__(self) -> str:
        return f"{self.target.ref}:{self.run_id}:{self.pid}"

    @classmethod
    def parse(cls, text: str) -> InfraId:
        ref, _, rest = text.strip().partition(":")
        run_id, _, pid = rest.partition(":")
        if not run_id or not pid:
            raise DirectError(
                f"{text!r} is not an infrastructure id; use the one `flow-agent infra run --detach` printed "
                "(TYPE/BLOCK:RUN_ID:PID)"
            )
        return cls(Target.block(ref), run_id, pid)


class DirectSession:
    """Build, launch, wait for and kill direct runs. `backends` replaces the agent's own
    (tests point them at the platform doubles)."""

    def __init__(
        self,
        settings: Settings,
        *,
        environ: Mapping[str, str],
        backends: Mapping[str, Backend] | None = None,
        api: PrefectClient | None = None,
        server_calls: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        """`server_calls` scopes the calls to the server (reading the block or pool): the
        CLI retries them for a short while, visibly; the workload's own watch is not in it."""
        self.settings = settings
        self.api = api or client_from_settings(settings)
        self._own_api = api is None
        self._server_calls = server_calls
        self._own_backends = backends is None
        self.backends: Mapping[str, Backend] = (
            backends if backends is not None else Backends(backend_options(settings))
        )
        self.builder = DirectBuilder(
            self.api,
            python=settings.python,
            environ=environ,
            on_secret=REDACTOR.add,
            worker_name=settings.name,
        )

    async def __aenter__(self) -> DirectSession:
        if self._own_api:
            await self.api.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._own_backends and isinstance(self.backends, Backends):
                for backend in self.backends.built():
                    await backend.aclose()
        finally:
            if self._own_api:
                await self.api.__aexit__(kind, exc, tb)

    def backend(self, kind: str) -> Backend:
        try:
            return self.backends[kind]
        except KeyError:
            entry = REGISTRY.get(kind)
            extra = f": pip install 'flow-agent[{entry.extra}]'" if entry and entry.extra else ""
            raise DirectError(f"the {kind} backend is not installed here{extra}") from None

    async def job(
        self, target: Target, request: Request, *, run_id: str | None = None, output: OutputSink | None = None
    ) -> Job:
        with self._server_calls():
            return await self.builder.build(target, request, run_id=run_id, output=output)

    async def run(
        self,
        target: Target,
        request: Request,
        *,
        output: OutputSink,
        on_launched: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> Result:
        """Run to the end; cancelled, the workload is killed and cleaned up first.
        `on_launched` gets the infrastructure id as soon as the workload exists."""
        job = await self.job(target, request, run_id=run_id, output=output)
        backend = self.backend(job.kind)
        return await run_job(
            backend,
            job,
            kill_grace=self.settings.kill_grace,
            infra_id=lambda handle: str(InfraId(target, job.flow_run_id, handle.pid)),
            on_launched=on_launched,
        )

    async def launch(
        self, target: Target, request: Request, *, output: OutputSink
    ) -> tuple[Job, Handle, InfraId]:
        job = await self.job(target, request, output=output)
        handle = await self.backend(job.kind).launch(job)
        return job, handle, InfraId(target, job.flow_run_id, handle.pid)

    async def rebuild(
        self, ident: InfraId, job_vars: Mapping[str, Any] | None = None
    ) -> tuple[Backend, Handle]:
        """The backend and the handle (with its credentials) of a detached run."""
        job = await self.job(ident.target, Request(job_vars=dict(job_vars or {})), run_id=ident.run_id)
        backend = self.backend(job.kind)
        parsed = backend.parse_pid(ident.pid, ident.run_id)
        return backend, Handle(parsed.kind, parsed.pid, ident.run_id, runtime=job.runtime)

    async def wait(self, ident: InfraId, job_vars: Mapping[str, Any] | None = None) -> Result:
        backend, handle = await self.rebuild(ident, job_vars)
        return result_of(await backend.wait(handle), str(ident))

    async def kill(self, ident: InfraId, job_vars: Mapping[str, Any] | None = None) -> Outcome | None:
        backend, handle = await self.rebuild(ident, job_vars)
        return await kill_and_clean(backend, handle, self.settings.kill_grace)
