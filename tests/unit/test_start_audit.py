"""The never-started audit (agent/runtime/audit.py): when it reports, and how much at once."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from agent.api import StateType
from agent.runtime import audit
from agent.runtime.audit import StartAudit


class _Api:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def bulk_set_state(self, flow_runs: dict[str, Any], type: StateType, **_: Any) -> list[str]:
        assert type is StateType.CRASHED
        self.batches.append(list(flow_runs["id"]["any_"]))
        return []


def _audit(busy: Any) -> tuple[StartAudit, _Api]:
    api = _Api()
    start = StartAudit(api, interval=0.0, busy=busy)  # type: ignore[arg-type]
    for n in range(120):
        start.add(f"run-{n}")
    return start, api


def test_while_a_pool_drains_the_audit_reports_one_batch_every_few_intervals_only() -> None:
    ticks = 0

    def busy() -> bool:  # asked once an interval while runs are queued
        nonlocal ticks
        ticks += 1
        return True

    start, api = _audit(busy)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start.run)
            while ticks < 2 * audit._MAX_DEFERRALS + 1:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [len(batch) for batch in api.batches] == [50, 50], "one batch per few intervals, not all at once"


def test_when_quiet_the_audit_reports_every_queued_run_in_batches_of_fifty() -> None:
    start, api = _audit(lambda: False)

    async def main() -> None:
        with anyio.move_on_after(0.05):
            await start.run()

    anyio.run(main)
    assert [len(batch) for batch in api.batches] == [50, 50, 20]
