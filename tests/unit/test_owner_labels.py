"""The owner's labels: written inline when the server takes them, else by the lane, later
(agent/runtime/labels.py); a fake API that refuses as SQLite does in a burst."""

from __future__ import annotations

import anyio

from agent.api import NotFound, TransientError, WorkPool
from agent.runtime.labels import OwnerLabels
from agent.runtime.ownership import Owner

POOL = WorkPool(id="p-1", name="etl", type="process")
OWNER = Owner("etl", "a1b2c3d4e5f6", "h1", 123, 1.0)


class RefusingApi:
    """Refuses the first `refusals[run_id]` label writes of each run (503), then takes them."""

    def __init__(self, refusals: dict[str, int], gone: tuple[str, ...] = ()) -> None:
        self.refusals = dict(refusals)
        self.gone = gone
        self.attempts: dict[str, int] = {}
        self.written: list[str] = []

    async def set_flow_run_labels(self, run_id: str, labels: dict[str, str]) -> None:
        self.attempts[run_id] = self.attempts.get(run_id, 0) + 1
        if run_id in self.gone:
            raise NotFound("404: no such flow run")
        if self.refusals.get(run_id, 0) > 0:
            self.refusals[run_id] -= 1
            raise TransientError("503: database is locked")
        assert labels == OWNER.labels(POOL)
        self.written.append(run_id)


def _labels(api: RefusingApi, **kwargs: float) -> OwnerLabels:
    return OwnerLabels(api, OWNER, **{"inline_budget": 0.0, "spacing": 0.01, **kwargs})  # type: ignore[arg-type]


def test_labels_the_server_refuses_now_are_written_later_in_order_without_holding_the_caller() -> None:
    api = RefusingApi({"r-1": 5, "r-2": 1})
    labels = _labels(api)

    async def main() -> None:
        for run_id in ("r-0", "r-1", "r-2"):
            await labels.write(run_id, POOL)  # one attempt each: returns at once
        assert api.written == ["r-0"] and labels.pending == 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(labels.run)
            with anyio.fail_after(5):
                while labels.pending or len(api.written) < 3:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert api.written == ["r-0", "r-1", "r-2"] and labels.written_late == 2
    assert api.attempts == {"r-0": 1, "r-1": 6, "r-2": 2}


def test_a_deleted_run_is_dropped_and_the_lane_gives_up_after_its_deadline() -> None:
    api = RefusingApi({"r-forever": 10**6}, gone=("r-gone",))
    labels = _labels(api, give_up_after=0.05)

    async def main() -> None:
        await labels.write("r-gone", POOL)
        await labels.write("r-forever", POOL)
        assert labels.pending == 1  # the deleted run is not queued
        async with anyio.create_task_group() as tg:
            tg.start_soon(labels.run)
            with anyio.fail_after(5):
                while labels.pending:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert api.written == [] and api.attempts["r-gone"] == 1 and api.attempts["r-forever"] > 1


def test_stopping_gives_each_label_still_pending_one_more_try() -> None:
    api = RefusingApi({"r-1": 1, "r-2": 2})
    labels = _labels(api)

    async def main() -> None:
        await labels.write("r-1", POOL)
        await labels.write("r-2", POOL)
        await labels.flush(within=1.0)

    anyio.run(main)
    assert api.written == ["r-1"] and labels.pending == 1
