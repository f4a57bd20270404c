"""One claimed run, from resolution to its final report.

resolve → launch → report `infrastructure_pid` → wait → report the outcome. A run that
cannot be resolved or launched is reported CRASHED with the reason; a run killed because
the user cancelled it is reported CANCELLED; a run killed because the agent is stopping
is reported CRASHED saying so. Nothing raised here may escape and stop the agent.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio

from agent.api import ApiError, FlowRun, NotFound, PrefectClient, StateType, WorkPool
from agent.api.models import SetStateStatus
from agent.backends import extra_for
from agent.backends.base import Backend, BackendError, Controllable, Delivery, Handle, Job
from agent.infra import InfraError
from agent.observe.logging import REDACTOR, get_logger
from agent.observe.metrics import Metrics, outcome_label
from agent.outcome import Outcome
from agent.runtime.audit import StartAudit
from agent.runtime.deployments import DeploymentCache
from agent.runtime.hooks import FlowHooks, Which
from agent.runtime.jobs import JobBuilder
from agent.runtime.labels import OwnerLabels

__all__ = ["Runner"]


class KillReason(StrEnum):
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


@dataclass
class _InFlight:
    run: FlowRun
    backend: Backend | None = None
    handle: Handle | None = None
    kill_reason: KillReason | None = None
    adopted: bool = False
    pool: WorkPool | None = None  # an adopted run's, to rebuild its job for hooks
    job: Job | None = None
    entrypoint: bool = False  # the deployment names the flow's code: its hooks can be loaded
    delivery: Delivery | None = None  # how the cancel intent fared, for backends that take one
    launched: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)  # reported, hooks run, slot given back
    started: float = field(default_factory=time.monotonic)  # just after the claim


class Runner:
    def __init__(
        self,
        api: PrefectClient,
        backends: Mapping[str, Backend],
        jobs: JobBuilder,
        deployments: DeploymentCache,
        audit: StartAudit,
        *,
        kill_grace: float,
        metrics: Metrics,
        redact: Callable[[str], str] = REDACTOR.mask_text,
        labels: OwnerLabels | None = None,
        hooks: FlowHooks | None = None,
    ) -> None:
        self._metrics = metrics
        self._hooks = hooks or FlowHooks(sys.executable)
        self._labels = labels  # who this agent is, written on every run it takes
        self._api = api
        self._backends = backends
        self._jobs = jobs
        self._deployments = deployments
        self._audit = audit
        # every message we write into a state passes here: output tails and errors can
        # carry secret values the run resolved
        self._redact = redact
        self._kill_grace = kill_grace
        self._in_flight: dict[str, _InFlight] = {}
        self._idle = anyio.Event()
        self._idle.set()

    # -- what the watchdog and the app look at -------------------------------------------------

    @property
    def in_flight_ids(self) -> list[str]:
        return list(self._in_flight)

    @property
    def launching(self) -> int:
        return sum(1 for f in self._in_flight.values() if not f.launched.is_set())

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_launches(self) -> None:
        for entry in list(self._in_flight.values()):
            await entry.launched.wait()

    # -- one run -------------------------------------------------------------------------------

    async def execute(self, run: FlowRun, pool: WorkPool, release: Callable[[], None]) -> None:
        """Take a claimed run to its end. Never raises (except cancellation)."""
        log = get_logger("agent.runtime.runner", flow_run_id=run.id, ship=True)
        entry = _InFlight(run)
        with self._tracking(entry, release):
            try:
                await self._execute(entry, pool, log)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # noqa: BLE001 - one bad run must never stop the agent
                log.exception("flow-agent failed while handling this run")
                with contextlib.suppress(Exception):
                    await self._crash(run.id, f"flow-agent failed while handling this run: {exc}")

    @contextlib.contextmanager
    def _tracking(self, entry: _InFlight, release: Callable[[], None]) -> Iterator[None]:
        """The run is in flight (watched for cancellation, counted, keeps the agent busy)
        until the block ends; then its slot goes back."""
        self._in_flight[entry.run.id] = entry
        self._metrics.set_in_flight(len(self._in_flight))
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        try:
            yield
        finally:
            entry.launched.set()
            entry.ended.set()
            self._in_flight.pop(entry.run.id, None)
            self._metrics.set_in_flight(len(self._in_flight))
            release()
            if not self._in_flight:
                self._idle.set()

    async def _prepare(self, entry: _InFlight, pool: WorkPool, log: Any) -> Job | None:
        """The run's job and backend, or None after reporting why it cannot be launched."""
        run = entry.run
        try:
            deployment = await self._deployments.get(run.deployment_id)
            job = await self._jobs.build(run, pool, deployment)
        except InfraError as exc:
            self._metrics.ended("unknown", "failed_to_launch")
            log.error("cannot resolve the run's infrastructure", error=str(exc))
            await self._crash(run.id, f"flow-agent could not resolve the infrastructure: {exc}")
            return None
        backend = self._backends.get(job.kind)
        if backend is None:
            extra = extra_for(job.kind)
            install = f"install it with `pip install 'flow-agent[{extra}]'` or " if extra else ""
            message = (
                f"this flow-agent has no {job.kind!r} backend; {install}serve this run with an "
                f"agent that has one (available here: {', '.join(sorted(self._backends))})"
            )
            log.error(message)
            self._metrics.ended(job.kind, "failed_to_launch")
            await self._crash(run.id, message)
            return None
        entry.backend = backend
        entry.job, entry.entrypoint = job, bool(deployment and deployment.entrypoint)
        return job

    async def _execute(self, entry: _InFlight, pool: WorkPool, log: Any) -> None:
        run = entry.run
        job = await self._prepare(entry, pool, log)
        if job is None or entry.backend is None:
            return
        async with anyio.create_task_group() as tg:
            # the owner's labels go on while the workload starts: off the launch's path
            tg.start_soon(self.label, run.id, pool)
            handle = await self._launch(entry.backend, job)
        if isinstance(handle, BackendError):
            self._metrics.ended(job.kind, "failed_to_launch")
            log.error("cannot launch the run", error=str(handle))
            await self._crash(run.id, f"flow-agent could not launch the infrastructure: {handle}")
            return
        entry.handle = handle
        entry.launched.set()
        log.info("launched flow run", backend=handle.kind, infrastructure_pid=handle.pid)
        if entry.kill_reason is not None:  # cancelled or stopped while we were launching
            await self._kill(entry)
        try:
            await self._api.update_flow_run(run.id, infrastructure_pid=handle.pid)
            self._metrics.launched(handle.kind, time.monotonic() - entry.started)
        except NotFound:
            log.warning("flow run was deleted after launch; killing its infrastructure")
            entry.kill_reason = KillReason.CANCEL
            await self._kill(entry)
            await entry.backend.wait(handle)
            return
        outcome = await entry.backend.wait(handle)
        cancelled = entry.kill_reason is KillReason.CANCEL
        self._metrics.ended(handle.kind, outcome_label(outcome, cancelled=cancelled))
        await self._report(entry, outcome, log)

    @staticmethod
    async def _launch(backend: Backend, job: Job) -> Handle | BackendError:
        try:
            return await backend.launch(job)
        except BackendError as exc:
            return exc

    async def label(self, run_id: str, pool: WorkPool) -> None:
        """Say on the run that this agent owns it (Prefect's worker labels and our own): at
        once, or soon after (labels.py); the claim's message already names the owner."""
        if self._labels is not None:
            await self._labels.write(run_id, pool)

    async def adopt(
        self,
        run: FlowRun,
        backend: Backend,
        handle: Handle,
        release: Callable[[], None],
        *,
        pool: WorkPool | None = None,
        report_pid: bool = False,
    ) -> None:
        """Watch a run launched by an agent that is gone (a restart, a dead replica) to its end.
        `pool`: take ownership on the server; `report_pid`: the launching agent died before
        it could say where the run is."""
        log = get_logger("agent.runtime.runner", flow_run_id=run.id, ship=True)
        entry = _InFlight(run, backend, handle, adopted=True, pool=pool)
        entry.launched.set()
        log.info("watching a run launched before this agent started", infrastructure_pid=handle.pid)
        with self._tracking(entry, release):
            try:
                if pool is not None:
                    await self.label(run.id, pool)
                if report_pid:
                    await self._api.update_flow_run(run.id, infrastructure_pid=handle.pid)
                outcome = await backend.wait(handle)
                await self._report(entry, outcome, log)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # noqa: BLE001 - one bad run must never stop the agent
                log.warning("could not watch the adopted run", error=str(exc))

    def watching(self, run_id: str) -> bool:
        return run_id in self._in_flight

    async def _report(self, entry: _InFlight, outcome: Outcome, log: Any) -> None:
        run_id, pid = entry.run.id, entry.handle.pid if entry.handle else "?"
        if entry.kill_reason is KillReason.CANCEL:
            await self._report_cancelled(entry, log)
            return
        if entry.kill_reason is KillReason.SHUTDOWN:
            message = (
                f"flow-agent was stopped before the flow run finished and killed its "
                f"infrastructure ({pid}); {outcome.message()}"
            )
            log.warning("flow run killed because flow-agent is stopping", infrastructure_pid=pid)
            await self._crash(run_id, message)
            return
        if outcome.succeeded:
            log.info("infrastructure exited cleanly", infrastructure_pid=pid)
            self._audit.add(run_id)
            return
        log.error(f"infrastructure failed: {outcome.message()}", infrastructure_pid=pid)
        log.info(f"resolution: {outcome.resolution()}")
        # Adopted runs may be watched by more than one agent after a takeover: the same
        # transition id from each makes their reports one transition on the server.
        transition = outcome_transition_id(run_id, pid) if entry.adopted else None
        result = await self._crash(run_id, outcome.message(), transition_id=transition)
        if result is not SetStateStatus.ACCEPT:
            log.info("run already ended on its own; its final state is kept")
            return
        # ACCEPT: the engine did not see the end coming (SIGKILL, OOM), so it ran no hooks
        await self._run_hooks(entry, "crashed")

    async def _report_cancelled(self, entry: _InFlight, log: Any) -> None:
        pid = entry.handle.pid if entry.handle else "?"
        log.info("flow run cancelled; its infrastructure was killed", infrastructure_pid=pid)
        # The cancellation hooks are ours to run, before CANCELLED as Prefect does, when the
        # engine ran none: it acknowledged (it leaves them to us), or it never listened
        # (still starting, a custom command). An engine that listened without an ack, or an
        # adopted run's (it listened to its dead agent), took the kill for a crash.
        if entry.delivery is Delivery.ACKED or (
            entry.delivery is Delivery.NOT_CONNECTED and not entry.adopted
        ):
            await self._run_hooks(entry, "cancellation")
        await self._api.set_state(
            entry.run.id,
            StateType.CANCELLED,
            message=f"Flow run was cancelled; flow-agent killed its infrastructure ({pid}).",
            # an engine that acknowledged leaves CANCELLED to us, and a run that ended on its
            # own just before keeps its end; without an ack, the engine may have forced
            # CRASHED over CANCELLING, which the cancel overrides
            force=entry.delivery is not Delivery.ACKED,
        )

    async def _run_hooks(self, entry: _InFlight, which: Which) -> None:
        """The flow's hooks in a child, where the flow's code can be loaded (hooks.py)."""
        if entry.job is None and entry.adopted and entry.pool is not None:
            await self._rebuild_job(entry)
        if entry.job is not None and entry.entrypoint and self._hooks.supports(entry.job):
            await self._hooks.run(which, entry.job)

    async def _rebuild_job(self, entry: _InFlight) -> None:
        """An adopted run's job (its env and interpreter), as the agent that launched it built it."""
        try:
            deployment = await self._deployments.get(entry.run.deployment_id)
            entry.job = await self._jobs.build(entry.run, entry.pool, deployment)
            entry.entrypoint = bool(deployment and deployment.entrypoint)
        except (InfraError, ApiError, LookupError) as exc:
            get_logger("agent.runtime.runner", flow_run_id=entry.run.id, ship=True).warning(
                "cannot rebuild the run's job to run its flow's hooks", error=self._redact(str(exc))
            )

    async def _crash(self, run_id: str, message: str, *, transition_id: str | None = None) -> SetStateStatus:
        # Without force the server refuses to overwrite a terminal state (ABORT), which is
        # exactly "unless the run already reached a terminal state" in one request.
        result = await self._api.set_state(
            run_id, StateType.CRASHED, message=self._redact(message)[:2000], transition_id=transition_id
        )
        return result.status

    # -- killing -----------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> None:
        """The user cancelled the run: kill its infrastructure; `execute` runs the flow's
        cancellation hooks and reports CANCELLED. Once killed, returns when that is done, so
        the run, still CANCELLING meanwhile, is not taken for a new cancellation."""
        await self._request_kill(run_id, KillReason.CANCEL)
        entry = self._in_flight.get(run_id)
        if entry is not None and entry.handle is not None:  # killed: hooks and report follow
            await entry.ended.wait()

    async def kill_all(self) -> int:
        """Stage two of shutdown: kill local processes, leave remote workloads running.

        A container in a cloud outlives the agent and its flow engine reports its own
        state, so a rollout of the agent must not kill every running job. Returns how many
        runs were left running (their `execute` tasks are then cancelled by the app).
        """
        left = 0
        async with anyio.create_task_group() as tg:
            for run_id, entry in list(self._in_flight.items()):
                if entry.handle is not None and getattr(entry.backend, "remote", False):
                    left += 1
                    get_logger("agent.runtime.runner", flow_run_id=run_id, ship=True).info(
                        "flow-agent is stopping; the run keeps running on its infrastructure",
                        infrastructure_pid=entry.handle.pid,
                    )
                    continue
                tg.start_soon(self._request_kill, run_id, KillReason.SHUTDOWN)
        return left

    async def _request_kill(self, run_id: str, reason: KillReason) -> None:
        entry = self._in_flight.get(run_id)
        if entry is None or entry.kill_reason is not None:
            return
        entry.kill_reason = reason
        if entry.handle is not None:
            await self._kill(entry)

    async def _kill(self, entry: _InFlight) -> None:
        log = get_logger("agent.runtime.runner", flow_run_id=entry.run.id, ship=True)
        assert entry.handle is not None and entry.backend is not None
        log.info("killing infrastructure", reason=str(entry.kill_reason), grace=self._kill_grace)
        try:
            if entry.kill_reason is KillReason.CANCEL and isinstance(entry.backend, Controllable):
                # first tell the engine the kill is a cancel, so it does not take it for a crash
                entry.delivery = await entry.backend.deliver(entry.handle, "cancel")
                log.info("told the engine the run is cancelled", delivery=entry.delivery.value)
            await entry.backend.kill(entry.handle, self._kill_grace)
        except BackendError as exc:
            log.error("could not kill the infrastructure", error=str(exc))


def outcome_transition_id(run_id: str, pid: str) -> str:
    """The transition id every agent uses to report how one workload of a run ended."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"flow-agent:{run_id}:{pid}:ended"))
