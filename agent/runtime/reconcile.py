"""The reconciler: no run of our pools stays PENDING, RUNNING or CANCELLING because the agent
that claimed it died.

At start and every `interval`, it reads the unfinished runs of this agent's pools, and for
each one whose owner is provably dead (ownership.py) it asks the run's backend whether a
workload exists for that flow run: by its `infrastructure_pid`, or, when the owner died
before reporting one, by `find` (the run's job is rebuilt from its pool and deployment).
- A workload that exists (alive or ended) is adopted: watched to its end, its real outcome
  reported, its pid reported if the owner never did, the run relabelled to this agent.
- No workload, run PENDING: back to SCHEDULED, so whichever agent claims it next launches
  it, once.
- No workload, run RUNNING or CANCELLING: CRASHED or CANCELLED, saying what was found where.

Death is proven before anything is done, because the server never stops a late engine
(an engine started for a run that is SCHEDULED again, or CRASHED, still runs the flow):
an owner that cannot be judged, a process on another host, a backend that cannot answer
leave the run alone, logged with the reason, never guessed. Every proposal is made on the
state just re-read and carries a transition id derived from that state and the decision,
so agents reconciling at once make one transition (the server REJECTs the same transition
made twice).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

import anyio
from anyio.abc import TaskGroup

from agent.api import ApiError, FlowRun, PrefectClient, StateType, TransientError
from agent.api.models import SetStateStatus, Worker
from agent.backends.base import Backend, BackendError, Handle, Job
from agent.infra import InfraError
from agent.observe.logging import REDACTOR, get_logger
from agent.runtime.jobs import JobBuilder
from agent.runtime.ownership import Owner, Verdict, age_seconds, claim_in, judge, owner_of
from agent.runtime.pools import Pools
from agent.runtime.runner import Runner
from agent.runtime.slots import Slots

__all__ = ["Reconciler", "decision_transition_id"]

log = get_logger("agent.runtime.reconcile")
_PAGE = 200
_UNFINISHED = ["PENDING", "RUNNING", "CANCELLING"]


def decision_transition_id(run: FlowRun, decision: str) -> str:
    """The same for every agent that saw the same state of the run and made the same decision."""
    state_id = run.state.id if run.state else ""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"flow-agent:{run.id}:{state_id}:{decision}"))


class Reconciler:
    def __init__(
        self,
        api: PrefectClient,
        pools: Pools,
        backends: Mapping[str, Backend],
        jobs: JobBuilder,
        runner: Runner,
        slots: Slots,
        me: Owner,
        *,
        interval: float,
        launch_grace: float,
    ) -> None:
        self._api = api
        self._pools = pools
        self._backends = backends
        self._jobs = jobs
        self._runner = runner
        self._slots = slots
        self._me = me
        self._interval = interval
        # a remote launch the dead owner sent may still land this long after its claim
        self._launch_grace = launch_grace
        self.left_alone: dict[str, str] = {}  # run id -> why it is left as it is (for operators)
        # run id -> (the state it was in, the claim its history holds): read once per state
        self._claims: dict[str, tuple[str | None, tuple[Owner, datetime | None] | None]] = {}
        self.passes = 0

    async def run(self, runs: TaskGroup) -> None:
        while True:
            await self.pass_once(runs)
            await anyio.sleep(self._interval * random.uniform(0.9, 1.1))

    async def pass_once(self, runs: TaskGroup) -> int:
        """One look at every unfinished run of our pools; how many were acted on."""
        try:
            candidates = await self._unfinished()
        except TransientError as exc:
            log.warning("could not look for orphaned runs; trying again later", error=str(exc))
            return 0
        workers: dict[str, dict[str, Worker]] = {}
        acted = 0
        for run in candidates:
            if self._runner.watching(run.id):
                continue
            try:
                acted += await self._consider(run, workers, runs)
            except ApiError as exc:  # transient or gone: the next pass looks again
                log.info("could not reconcile run", flow_run_id=run.id, error=str(exc))
            except Exception:  # noqa: BLE001 - one odd run must not stop the reconciler
                log.exception("unexpected error while reconciling a run", flow_run_id=run.id)
        self.passes += 1
        live = {run.id for run in candidates}
        self.left_alone = {k: v for k, v in self.left_alone.items() if k in live}
        self._claims = {k: v for k, v in self._claims.items() if k in live}
        return acted

    async def _unfinished(self) -> list[FlowRun]:
        found: list[FlowRun] = []
        while True:
            body = {
                "flow_runs": {"state": {"type": {"any_": _UNFINISHED}}},
                "work_pools": {"name": {"any_": self._pools.names}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": _PAGE,
                "offset": len(found),
            }
            page = await self._api.read_flow_runs(body)
            found.extend(page)
            if len(page) < _PAGE:
                return found

    async def _consider(self, run: FlowRun, workers: dict[str, dict[str, Worker]], runs: TaskGroup) -> int:
        owner = owner_of(run)
        claimed_at = run.state.timestamp if run.state and run.state.type is StateType.PENDING else None
        if owner is None:
            claim = await self._claim(run)
            if claim is None:
                return await self._unowned(run, runs)
            owner, claimed_at = claim
        pool = run.work_pool_name or ""
        if owner.host != self._me.host and owner.name != self._me.name and pool not in workers:
            workers[pool] = {w.name: w for w in await self._api.read_workers(pool)}
        verdict = judge(owner, self._me, workers=workers.get(pool, {}), claimed_at=claimed_at)
        if not verdict.dead:
            if verdict.liveness.value == "unknown":
                self._leave(run, verdict.reason)
            return 0
        return await self._settle(run, owner, verdict, runs)

    async def _claim(self, run: FlowRun) -> tuple[Owner, datetime | None] | None:
        """The newest claim in the history of a run past PENDING that has no owner's labels."""
        if run.state is None or run.state.type is StateType.PENDING:
            return None  # owner_of read the claim off the state itself
        known = self._claims.get(run.id)
        if known is not None and known[0] == run.state.id:
            return known[1]
        claim = claim_in(await self._api.read_flow_run_states(run.id))
        self._claims[run.id] = (run.state.id, claim)
        return claim

    async def _unowned(self, run: FlowRun, runs: TaskGroup) -> int:
        """A run no flow-agent claimed (Prefect's worker, an older flow-agent): at start only,
        watch it if it is on remote infrastructure, as before ownership existed."""
        if self.passes or not run.infrastructure_pid:
            return 0
        found = await self._workload(run)
        if found is None or not found[0].remote or found[1] is None:
            return 0
        self._adopt(run, found[0], found[1], runs, report_pid=False)
        return 1

    async def _settle(self, run: FlowRun, owner: Owner, verdict: Verdict, runs: TaskGroup) -> int:
        found = await self._workload(run)
        if found is None:
            return 0
        backend, handle = found
        if not backend.remote and owner.host != self._me.host:
            self._leave(
                run,
                f"{verdict.reason}, but its process ran on host {owner.host!r}: only an agent on that "
                "host can tell whether it still runs",
            )
            return 0
        fresh = await self._api.read_flow_run(run.id)
        if fresh.state is None or run.state is None or fresh.state.id != run.state.id:
            return 0  # it moved on while we looked: judge it again next pass
        if handle is not None:
            log.info("adopted an orphaned run", flow_run_id=run.id, reason=verdict.reason, ship=True)
            self._adopt(fresh, backend, handle, runs, report_pid=not run.infrastructure_pid)
            return 1
        return await self._no_workload(fresh, backend, owner, verdict)

    async def _workload(self, run: FlowRun) -> tuple[Backend, Handle | None] | None:
        """The run's backend and its workload (None: proven none); None overall when that
        cannot be told (left alone, with the reason)."""
        try:
            job = await self._job(run)
        except (InfraError, LookupError) as exc:
            self._leave(run, f"cannot rebuild its job to look for its workload: {exc}")
            return None
        backend = self._backends.get(job.kind)
        if backend is None:
            self._leave(run, f"this agent has no {job.kind!r} backend to look for its workload")
            return None
        try:
            if run.infrastructure_pid:
                handle = backend.parse_pid(run.infrastructure_pid, run.id)
            else:
                handle = await backend.find(job)
        except BackendError as exc:
            self._leave(run, f"cannot tell whether its workload exists: {exc}")
            return None
        if handle is not None and handle.runtime is None:
            handle = replace(handle, runtime=job.runtime)
        return backend, handle

    async def _job(self, run: FlowRun) -> Job:
        pool = self._pools.get(run.work_pool_name or "")
        deployment = await self._api.read_deployment(run.deployment_id) if run.deployment_id else None
        return await self._jobs.build(run, pool, deployment)

    def _adopt(
        self, run: FlowRun, backend: Backend, handle: Handle, runs: TaskGroup, *, report_pid: bool
    ) -> None:
        self.left_alone.pop(run.id, None)
        self._slots.take()
        pool = self._pools.get(run.work_pool_name or "")
        release = self._slots.release
        runs.start_soon(
            lambda: self._runner.adopt(run, backend, handle, release, pool=pool, report_pid=report_pid)
        )

    async def _no_workload(self, run: FlowRun, backend: Backend, owner: Owner, verdict: Verdict) -> int:
        state = run.state.type if run.state else None
        where = (
            f"its process on host {owner.host!r} is gone"
            if not backend.remote
            else f"no {backend.kind} workload exists for it"
        )
        if state is StateType.PENDING:
            claimed = run.state.timestamp if run.state else None
            if backend.remote and age_seconds(claimed) < self._launch_grace:
                return 0  # a launch the owner sent just before dying may still appear
            message = (
                f"Rescheduled by {self._me.describe()}: {verdict.reason}, and nothing was launched for "
                "this run; it will be launched once, by whichever agent claims it next."
            )
            return await self._propose(run, StateType.SCHEDULED, message, "reschedule")
        if state is StateType.CANCELLING:
            message = f"Flow run was cancelled: {verdict.reason}; {where}."
            return await self._propose(run, StateType.CANCELLED, message, "cancelled")
        message = f"{verdict.reason}; {where}, and no agent was watching it (found by {self._me.describe()})."
        return await self._propose(run, StateType.CRASHED, message, "crashed")

    async def _propose(self, run: FlowRun, state: StateType, message: str, decision: str) -> int:
        message = REDACTOR.mask_text(message)  # a reason can quote a backend's or a run's words
        result = await self._api.set_state(
            run.id, state, message=message, transition_id=decision_transition_id(run, decision)
        )
        if result.status is not SetStateStatus.ACCEPT:
            return 0  # another agent made this very decision first, or the run moved on
        self.left_alone.pop(run.id, None)
        log.warning(f"orphaned run: {message}", flow_run_id=run.id, state=state.value, ship=True)
        return 1

    def _leave(self, run: FlowRun, reason: str) -> None:
        if self.left_alone.get(run.id) != reason:
            log.info("leaving an unfinished run as it is", flow_run_id=run.id, reason=reason)
        self.left_alone[run.id] = REDACTOR.mask_text(reason)  # shown by /status
