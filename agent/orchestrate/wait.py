"""Watching a flow run: poll it to a final state (`wait_for_flow_run`), and keep the parent's
placeholder task run in step with a child run (`PlaceholderSync`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog

from agent.api.client import PrefectClient
from agent.api.errors import ApiError, TransientError
from agent.api.flow_runs import read_flow_run
from agent.api.models import RunInfo, StateType
from agent.api.task_runs import set_task_run_state

__all__ = ["OnUpdate", "PlaceholderSync", "wait_for_flow_run"]

log = structlog.get_logger("agent.orchestrate")

OnUpdate = Callable[[RunInfo], None]


async def wait_for_flow_run(
    client: PrefectClient,
    run_id: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - Prefect's run_deployment API
    poll_interval: float = 5.0,
    on_update: OnUpdate | None = None,
    last: RunInfo | None = None,
    after_poll: Callable[[RunInfo], Awaitable[None]] | None = None,
) -> RunInfo:
    """Poll the run until it is final, or until `timeout` seconds passed (None: no limit);
    return it as last seen. Transient errors only skip a poll."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout cannot be negative")
    interval = max(float(poll_interval), 0.05)
    with anyio.move_on_after(timeout):
        while True:
            try:
                run = await read_flow_run(client, run_id)
            except TransientError as exc:
                log.info("could not read the flow run, polling again", flow_run_id=run_id, error=str(exc))
            else:
                last = run
                if on_update is not None:
                    on_update(run)
                if after_poll is not None:
                    await after_poll(run)
                if run.is_final:
                    return run
            await anyio.sleep(interval)
    if last is None:  # timed out before the first answer
        last = await read_flow_run(client, run_id)
    return last


_MIRROR = {
    StateType.RUNNING: StateType.RUNNING,
    StateType.COMPLETED: StateType.COMPLETED,
    StateType.FAILED: StateType.FAILED,
    StateType.CRASHED: StateType.FAILED,
    StateType.CANCELLED: StateType.CANCELLED,
}


class PlaceholderSync:
    """Keeps the parent's placeholder task run in step with the child (best effort)."""

    def __init__(self, client: PrefectClient, task_run_id: str) -> None:
        self.client = client
        self.task_run_id = task_run_id
        self.sent: StateType | None = None

    async def flush(self, run: RunInfo) -> None:
        wanted = _MIRROR.get(run.current_type) if run.current_type else None
        if wanted is None or wanted == self.sent:
            return
        message = f"flow run {run.name!r} ({run.id}) is {run.state_label}"
        try:
            await set_task_run_state(self.client, self.task_run_id, wanted, message=message)
            self.sent = wanted
        except ApiError as exc:
            log.info("could not update the parent's task run", task_run_id=self.task_run_id, error=str(exc))
