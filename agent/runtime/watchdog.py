"""Staying alive and listening: pool heartbeats and cancellation requests.

Cancellation is found by asking the server which of the runs in flight are CANCELLING:
one filter request per interval for all of them, and none at all while nothing runs.
"""

from __future__ import annotations

import random
import time

import anyio
from anyio.abc import TaskGroup

from agent.api import PrefectClient, TransientError
from agent.observe.logging import get_logger
from agent.retry import retry_scope
from agent.runtime.pools import Pools
from agent.runtime.runner import Runner

__all__ = ["Watchdog"]

log = get_logger("agent.runtime.watchdog")


class Watchdog:
    def __init__(
        self,
        api: PrefectClient,
        pools: Pools,
        runner: Runner,
        *,
        worker_name: str,
        heartbeat_interval: float,
        cancel_interval: float,
    ) -> None:
        self._api = api
        self._pools = pools
        self._runner = runner
        self._name = worker_name
        self._heartbeat_interval = heartbeat_interval
        self._cancel_interval = cancel_interval
        self._cancelling: set[str] = set()
        self._check_now = anyio.Event()
        self.last_heartbeat: float | None = None

    def wake(self, run_id: str = "") -> None:
        """Check for cancellations now (an event said a run entered CANCELLING)."""
        if not run_id or run_id in self._runner.in_flight_ids:
            self._check_now.set()

    async def heartbeat_once(self) -> None:
        # retried within one interval at most: the next heartbeat is the retry after that
        beating = True
        with retry_scope(budget=self._heartbeat_interval):
            for name in self._pools.names:  # one pool failing does not silence the others
                try:
                    await self._pools.refresh(name)
                    await self._api.heartbeat(name, self._name, self._heartbeat_interval)
                except TransientError as exc:
                    log.warning("heartbeat failed; trying again next interval", pool=name, error=str(exc))
                    beating = False
        if beating:
            self.last_heartbeat = time.monotonic()

    async def heartbeat_loop(self) -> None:
        """Heartbeat now and every interval. Nothing waits on it: polling goes on whether
        heartbeats succeed or not."""
        while True:
            await self.heartbeat_once()
            await anyio.sleep(self._heartbeat_interval * random.uniform(0.85, 1.0))

    async def cancel_loop(self, tg: TaskGroup) -> None:
        while True:
            with anyio.move_on_after(self._cancel_interval):
                await self._check_now.wait()
            self._check_now = anyio.Event()
            await self.check_cancellations(tg)

    async def check_cancellations(self, tg: TaskGroup) -> None:
        ids = self._runner.in_flight_ids
        if not ids:
            return
        body = {
            "flow_runs": {"id": {"any_": ids}, "state": {"type": {"any_": ["CANCELLING"]}}},
            "limit": len(ids),
        }
        try:
            cancelling = await self._api.read_flow_runs(body)
        except TransientError as exc:
            log.warning("could not check for cancellations", error=str(exc))
            return
        for run in cancelling:
            if run.id in self._cancelling:
                continue
            self._cancelling.add(run.id)
            log.info("cancellation requested", flow_run_id=run.id, ship=True)
            tg.start_soon(self._cancel, run.id)

    async def _cancel(self, run_id: str) -> None:
        try:
            await self._runner.cancel(run_id)
        finally:
            self._cancelling.discard(run_id)
