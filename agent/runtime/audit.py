"""The last check on runs whose infrastructure exited 0: did the flow run ever start?

Exit 0 is normally the engine's business: it has reported the final state itself, or it
exited after an Abort or a Pause where the state belongs to someone else. But a run that
is *still PENDING* after its infrastructure exited 0 was never picked up by any engine
(the command did not run one), and would otherwise stay PENDING forever. Those are
reported CRASHED in batches: one `bulk_set_state` filtered on PENDING covers up to 50
runs, and touches none that moved on.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from agent.api import PrefectClient, StateType, TransientError
from agent.observe.logging import get_logger

__all__ = ["StartAudit"]

log = get_logger("agent.runtime.audit")

NEVER_STARTED = (
    "The infrastructure exited with code 0 but the flow run never started: the command did not "
    "run the Prefect engine. Check the job variable 'command' (left empty, flow-agent runs "
    "'python -m prefect.engine')."
)
_BATCH = 50  # the server's limit for bulk_set_state


_MAX_DEFERRALS = 10


class StartAudit:
    def __init__(
        self, api: PrefectClient, *, interval: float, busy: Callable[[], bool] = lambda: False
    ) -> None:
        self._api = api
        self._interval = interval
        # A bulk state change holds the SQLite write lock for a while; during a claim
        # burst (ours, or other agents' on the same pools) it would slow every claim down.
        # The check waits for a quiet moment; while none comes, it reports one batch every
        # few intervals.
        self._busy = busy
        self._queue: list[str] = []

    def add(self, run_id: str) -> None:
        self._queue.append(run_id)

    async def flush(self, *, batches: int | None = None) -> None:
        """Report the queued runs that are still PENDING: all of them, or `batches` batches."""
        while self._queue and (batches is None or batches > 0):
            batches = None if batches is None else batches - 1
            batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            still_pending = {"id": {"any_": batch}, "state": {"type": {"any_": ["PENDING"]}}}
            try:
                crashed = await self._api.bulk_set_state(
                    still_pending, StateType.CRASHED, message=NEVER_STARTED, limit=_BATCH
                )
            except TransientError as exc:  # only after the persistent retry gave up: keep them
                self._queue[:0] = batch
                log.warning("could not check exited runs; will retry", error=str(exc))
                return
            for run_id in crashed:
                log.warning("flow run never started; reported CRASHED", flow_run_id=run_id, ship=True)

    async def run(self) -> None:
        deferred = 0
        while True:
            await anyio.sleep(self._interval)
            if not self._queue:
                continue
            if not self._busy():
                deferred = 0
                await self.flush()
                continue
            # busy: one batch every few intervals at most, the rest once it is quiet (all of
            # it at once would stall every claim of a long drain for seconds)
            deferred += 1
            if deferred >= _MAX_DEFERRALS:
                deferred = 0
                await self.flush(batches=1)
