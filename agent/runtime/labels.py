"""The owner's labels on every run this agent takes, written until the server takes them.

Prefect 3.8.8 merges a run's labels by reading the run and then writing it, in one
transaction (`PATCH /flow_runs/{id}/labels`). On SQLite that write fails at once, with a
503, whenever another write committed since the read: in a burst of claims nearly every
attempt fails, for as long as the burst lasts. Neither the run's pid report nor the agent's
next claim may wait for that, and no run may be left without its owner's labels, so each
run gets one short attempt inline, and what it could not write goes to one lane that
writes the rest oldest first, one at a time, spacing its attempts while they fail, until
each is taken, its run is gone, or `give_up_after` has passed.

The claim's own message names the owner atomically with the claim, so a run whose labels
are not written yet is never without an owner (reconcile.py reads it back from the run's
state history).
"""

from __future__ import annotations

import time
from collections import deque

import anyio

from agent.api import ApiError, NotFound, PrefectClient, WorkPool
from agent.observe.logging import get_logger
from agent.retry import backoff_delay, retry_scope
from agent.runtime.ownership import Owner

__all__ = ["OwnerLabels"]

log = get_logger("agent.runtime.labels")


class OwnerLabels:
    def __init__(
        self,
        api: PrefectClient,
        owner: Owner,
        *,
        inline_budget: float = 1.0,
        give_up_after: float = 3600.0,
        spacing: float = 5.0,
    ) -> None:
        self._api = api
        self._owner = owner
        self._inline_budget = inline_budget
        self._give_up_after = give_up_after
        self._spacing = spacing  # the longest pause between two failed attempts
        self._later: deque[tuple[str, dict[str, str], float]] = deque()
        self._queued = anyio.Event()
        self.written_late = 0  # what the lane wrote (the tests read it)

    @property
    def pending(self) -> int:
        return len(self._later)

    async def write(self, run_id: str, pool: WorkPool) -> None:
        """Label the run with its owner: at once if the server takes it within the inline
        budget, else later, by the lane. Never raises an API error."""
        labels = self._owner.labels(pool)
        try:
            with retry_scope(budget=self._inline_budget, maximum=0.5):
                await self._api.set_flow_run_labels(run_id, labels)
        except NotFound:
            return  # deleted meanwhile: nothing to label
        except ApiError as exc:
            log.debug("owner labels deferred", flow_run_id=run_id, error=str(exc))
            self._later.append((run_id, labels, time.monotonic() + self._give_up_after))
            self._queued.set()

    async def run(self) -> None:
        """The lane: write what `write` could not, oldest first; runs until cancelled."""
        failures = 0
        while True:
            if not self._later:
                self._queued = anyio.Event()
                await self._queued.wait()
                continue
            run_id, labels, deadline = item = self._later.popleft()
            if time.monotonic() > deadline:
                log.warning(
                    "could not label the run with its owner; the server refused every attempt",
                    flow_run_id=run_id,
                )
                continue
            if await self._attempt(run_id, labels):
                failures = 0
                continue
            self._later.appendleft(item)
            failures += 1
            await anyio.sleep(backoff_delay(failures, initial=0.25, maximum=self._spacing, jitter=0.25))

    async def flush(self, within: float = 5.0) -> None:
        """When the agent stops: one more try for each label still to write, for at most
        `within` seconds in all."""
        with anyio.move_on_after(within):
            for _ in range(len(self._later)):
                item = self._later.popleft()
                done = False
                try:
                    done = await self._attempt(item[0], item[1])
                finally:
                    if not done:
                        self._later.append(item)
        if self._later:
            log.warning("stopping with runs not yet labelled with their owner", count=len(self._later))

    async def _attempt(self, run_id: str, labels: dict[str, str]) -> bool:
        """One try (no retries of its own: the lane spaces them). True when done with it."""
        try:
            with retry_scope(budget=0.0):
                await self._api.set_flow_run_labels(run_id, labels)
        except NotFound:
            return True
        except ApiError:
            return False
        except Exception as exc:  # noqa: BLE001 - one run's labels must never stop the agent
            log.warning("could not label the run with its owner", flow_run_id=run_id, error=repr(exc))
            return True
        self.written_late += 1
        return True
