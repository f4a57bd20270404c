"""The ECS backend's harness: moto in this process, task endings written into its models."""

from __future__ import annotations

from pathlib import Path

from support.moto_ecs import OOM_REASON, MotoEcs, ecs_template, moto_ecs

from agent.backends import BackendOptions
from agent.backends.base import Handle, Job
from agent.backends.ecs import EcsBackend
from agent.infra import resolve_job_configuration
from agent.infra.ecs import EcsKind
from agent.infra.spec import RunContext


class EcsHarness:
    kind = "ecs"
    supports_start_timeout = True
    supports_timeout = False  # ECS has no task timeout: a task runs until it exits or is stopped

    def __init__(self, moto: MotoEcs) -> None:
        self.moto = moto
        moto.reset()
        self.backend = EcsBackend(BackendOptions(watch_interval=0.1))
        self._kind = EcsKind()

    def job(self, name: str) -> Job:
        variables = {"image": "busybox:latest", "aws_credentials": self.moto.credentials}
        resolved = resolve_job_configuration(
            ecs_template(start_timeout=1), variables, None, source="contract"
        )
        config = self._kind.config_from_pool(resolved, pool_type="ecs", source="contract")
        ctx = RunContext(name, name, deployment_id="contract-deployment", work_pool_name="contract")
        payload = self._kind.build_payload(config, ctx)
        return Job(name, name, "ecs", payload, self._kind.runtime(config))

    @staticmethod
    def _arn(handle: Handle) -> str:
        return handle.pid.split("::", 1)[1]

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        self.moto.finish(self._arn(handle), exit_code=exit_code, reason=OOM_REASON if oom else None)

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        self.moto.hold_pending(self._arn(handle), reason=reason)

    async def stick_waiting(self, handle: Handle, *, reason: str) -> None:
        self.moto.hold_pending(self._arn(handle), reason=reason)

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The flow container exits on its own; a StopTask sent now finds the task STOPPED
        and changes nothing (the moto wrapper does as ECS: the stop code stays
        EssentialContainerExited)."""
        self.moto.finish(self._arn(handle), exit_code=exit_code)

    async def leftovers(self, handle: Handle) -> list[str]:
        arn = self._arn(handle)
        return [] if self.moto.task(arn).last_status == "STOPPED" else [f"ECS task {arn}"]

    async def aclose(self) -> None:
        await self.backend.aclose()


def make_harness(tmp_path: Path) -> EcsHarness:
    return EcsHarness(moto_ecs())
