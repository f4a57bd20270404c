"""Finding work: wait for a free slot → poll each pool → claim → hand to the runner.

The poll loop never awaits a run; it starts each claimed run in the app's task group and
goes back to polling. A full page is followed by another poll at once, because scheduled
work comes in bursts; otherwise it sleeps a jittered interval.

Polls are their own retry: a failed poll is retried within one interval at most, then the
loop polls again at its interval. Claims retry until answered, never sleeping longer than
one interval, so after an outage the first claim comes within two intervals of the
server's return. A stop ends the retry sleeps of polls and claims at once.

Many agents on one pool share its runs instead of racing for them (agent/runtime/claims.py):
each polls a page wide enough for its share, claims its own share first, takes over another
agent's runs only after a grace, and backs off when it loses a race.

Once per interval the poller also looks at the backlog of each pool (due runs not yet
claimed, and how late the oldest is) for `/metrics`; when due runs wait because this
agent's `--limit` is full, it says so once per episode, in its log and in a metric.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskGroup

from agent.aio import first_completed
from agent.api import ApiError, AuthError, NotFound, PrefectClient, ScheduledRun, TransientError
from agent.api.backlog import read_backlog
from agent.observe.logging import get_logger
from agent.observe.metrics import Metrics
from agent.retry import Interrupted, retry_scope
from agent.runtime.claims import SERVER_PAGE, Claim, Spread
from agent.runtime.ownership import owner_of
from agent.runtime.pools import Pools
from agent.runtime.runner import Runner
from agent.runtime.slots import Slots

__all__ = ["Poller", "crowded"]

log = get_logger("agent.runtime.poller")

_BACKLOG_EVERY = 5.0  # seconds at least between looks at the backlog (two requests per pool)
# Another agent's run is taken over once seen waiting this many poll intervals: its owner
# polls at the same interval (jittered ±10 %), so a live owner has had a poll of its own.
_GRACE_INTERVALS = 2.0
_SUSPEND_SECONDS = 60.0  # an owner that left its share: counted out this long (at least)
_PEERS_EVERY = 10.0  # seconds at least between reads of a pool's worker rows
_SOON = (0.2, 1.0)  # seconds before polling again after a page with nothing to claim, runs due
_SOON_TRIES = 3


def crowded(fruitless_pages: int, due: int) -> bool:
    """Whether to poll a pool again soon: its page had nothing for us to claim while its
    runs are due. On PostgreSQL the server reads a page `FOR UPDATE SKIP LOCKED`, so while
    other agents poll, their pages are left out of ours: we may get none at all, or only
    others' runs while ours are held. Our share would then wait a whole interval (or the
    others' takeover grace). A few times only: runs left to a dead agent, a paused queue or a
    queue's concurrency limit give the same picture, and are not worth more."""
    return 0 < fruitless_pages <= _SOON_TRIES and due > 0


class Poller:
    def __init__(
        self,
        api: PrefectClient,
        pools: Pools,
        slots: Slots,
        runner: Runner,
        *,
        queues: Sequence[str],
        interval: float,
        prefetch: float,
        claim_concurrency: int,
        metrics: Metrics,
        worker_name: str,
        claim_message: str | None = None,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._claim_message = claim_message  # who claims: lands in the PENDING state with the claim
        self._pools = pools
        self._slots = slots
        self._runner = runner
        self._queues = list(queues)
        self._interval = interval
        self._prefetch = prefetch
        self._claims = anyio.CapacityLimiter(claim_concurrency)
        self.spread = Spread(
            worker_name,
            grace=_GRACE_INTERVALS * interval,
            suspend=max(_SUSPEND_SECONDS, 10 * interval),
            refresh_every=max(_PEERS_EVERY, 2 * interval),
            young_batch=claim_concurrency,
        )
        self.last_poll: float | None = None  # monotonic time of the last successful poll
        self.claimed = 0
        self.claiming = False  # a batch of claims is in progress
        self._failing: set[str] = set()  # pools whose last poll failed: said once per outage
        self._wake = anyio.Event()
        self._backlog_at: float | None = None  # monotonic time of the last look at the backlog
        self._due: dict[str, int] = {}  # pool -> due runs at the last look at the backlog
        self._fruitless: dict[str, int] = {}  # pool -> pages in a row with nothing to claim
        self.limit_full = False  # due runs are waiting for this agent's --limit

    def wake(self) -> None:
        """Poll now instead of at the end of the interval (new runs were scheduled)."""
        self._wake.set()

    async def run(self, stop: anyio.Event, runs: TaskGroup) -> None:
        """Poll until `stop` is set; claimed runs are started in `runs`."""
        while not stop.is_set():
            with anyio.move_on_after(self._interval) as waiting_for_slot:
                await first_completed(self._slots.wait_free, stop.wait)
            if stop.is_set():
                return
            if waiting_for_slot.cancelled_caught:
                await self.look_at_backlog(stop)
                continue
            # reset before polling: a wake-up that arrives during the poll means poll again
            self._wake = anyio.Event()
            full = await self.poll_once(stop, runs)
            await self.look_at_backlog(stop)
            if not full:
                pause = self._interval * random.uniform(0.9, 1.1)
                pause = random.uniform(*_SOON) if self._crowded() else pause
                with anyio.move_on_after(pause):
                    await first_completed(stop.wait, self._wake.wait)

    async def poll_once(self, stop: anyio.Event, runs: TaskGroup) -> bool:
        """One pass over every pool; True to poll again at once: a pool returned a full page
        and we claimed from it, or we backed off from a race and should look again."""
        again = False
        for name in self._pools.names:
            free = self._slots.free
            if free == 0 or stop.is_set():
                break
            await self._look_at_peers(name, stop)
            limit = self.spread.page_limit(name, free)
            scheduled = await self._poll_pool(name, limit, stop)
            if scheduled is None:
                continue
            plan = self.spread.plan(name, scheduled)
            self._fruitless[name] = 0 if plan else self._fruitless.get(name, 0) + 1
            won = await self._claim_all(name, plan, stop, runs)
            full = len(scheduled) >= (limit or SERVER_PAGE)
            # a full page of runs all left to others (a dead peer's backlog) is no reason to
            # hurry; a shared page we won from is: on PostgreSQL a page leaves out the runs
            # other agents' polls held at that moment, some of them perhaps ours
            hurry = full or len(plan) < len(scheduled) or self.spread.capped(name)
            again |= self.spread.backing_off(name) or (won > 0 and hurry)
            log.debug("polled", pool=name, page=len(scheduled), planned=len(plan), won=won, again=again)
        return again

    @property
    def draining(self) -> bool:
        """Claims are being made from our pools: by us now, or by anyone while their last
        look at the backlog found runs due (other agents on the pool claim too)."""
        return self.claiming or any(due > 0 for due in self._due.values())

    def _crowded(self) -> bool:
        pools = self._pools.names
        return any(crowded(self._fruitless.get(name, 0), self._due.get(name, 0)) for name in pools)

    async def _look_at_peers(self, name: str, stop: anyio.Event) -> None:
        """Read who else serves the pool (its live worker rows), now and then or when a lost
        race says our view is old. A failed read keeps the view we have."""
        if not self.spread.wants_workers(name):
            return
        try:
            with retry_scope(stop=stop, budget=0):  # the next poll is the retry
                workers = await self._api.read_workers(name)
        except (ApiError, Interrupted) as exc:
            log.debug("could not read the pool's workers", pool=name, error=str(exc))
            self.spread.no_workers(name)
            return
        self.spread.saw_workers(name, workers)

    async def look_at_backlog(self, stop: anyio.Event, *, force: bool = False) -> None:
        """Due runs per pool into the metrics, at most every interval (5 s at least); whether they
        wait for this agent's --limit (said once per episode)."""
        now = time.monotonic()
        every = max(self._interval, _BACKLOG_EVERY)
        if not force and self._backlog_at is not None and now - self._backlog_at < every:
            return
        self._backlog_at = now
        waiting = 0
        for name in self._pools.names:
            at = datetime.now(UTC)
            try:
                with retry_scope(stop=stop, budget=0):  # a look, not worth a retry
                    backlog = await read_backlog(self._api, name, self._queues, at)
            except (ApiError, Interrupted) as exc:
                log.debug("could not read the backlog", pool=name, error=str(exc))
                continue
            self._metrics.set_backlog(name, backlog.due, backlog.oldest_age(at))
            self._due[name] = backlog.due
            waiting += backlog.due
        self._note_limit(waiting)

    def _note_limit(self, waiting: int) -> None:
        full = waiting > 0 and self._slots.free == 0
        if full and not self.limit_full:
            log.warning(
                "--limit is full: due flow runs wait for a free slot",
                limit=self._slots.limit,
                due=waiting,
                fix="raise --limit (FLOW_AGENT_LIMIT) or run another agent on these pools",
            )
        elif self.limit_full and not full:
            log.info("--limit no longer holds runs back", due=waiting)
        self._metrics.set_limit_full(full, new_episode=full and not self.limit_full)
        self.limit_full = full

    async def _poll_pool(self, name: str, limit: int | None, stop: anyio.Event) -> list[ScheduledRun] | None:
        before = datetime.now(UTC) + timedelta(seconds=self._prefetch)
        # The scope covers this pool's requests only: the claims started later must not inherit it.
        with retry_scope(stop=stop, budget=self._interval):
            try:
                found = await self._api.get_scheduled_flow_runs(
                    name, queues=self._queues, scheduled_before=before, limit=limit
                )
            except NotFound as exc:
                log.error("work pool or queue not found; recreating the pool", pool=name, error=exc.detail)
                await self._recreate(name)
                return None
            except (TransientError, Interrupted) as exc:
                level = log.debug if name in self._failing else log.warning
                level("poll failed; polling again every interval", pool=name, error=str(exc))
                self._failing.add(name)
                return None
        if name in self._failing:
            log.info("polling again", pool=name)
            self._failing.discard(name)
        self.last_poll = time.monotonic()
        self._metrics.polled()
        return found

    async def _recreate(self, name: str) -> None:
        try:
            await self._pools.ensure(name)
        except (TransientError, Interrupted) as exc:
            log.warning("could not recreate the pool; trying at the next poll", pool=name, error=str(exc))

    async def _claim_all(self, pool: str, plan: list[Claim], stop: anyio.Event, runs: TaskGroup) -> int:
        """Claim the plan's runs (bounded concurrency); how many we won."""
        before = self.claimed
        self.claiming = bool(plan)
        try:
            async with anyio.create_task_group() as claims:
                for claim in plan:
                    if stop.is_set() or not self._slots.try_take():
                        break
                    claims.start_soon(self._claim, pool, claim, stop, runs)
        finally:
            self.claiming = False
        return self.claimed - before

    async def _claim(self, pool_name: str, claim: Claim, stop: anyio.Event, runs: TaskGroup) -> None:
        item, run = claim.item, claim.item.flow_run
        async with self._claims:
            # stopping: claim nothing more; or a race lost meanwhile changed the plan
            if stop.is_set() or not self.spread.still_wanted(pool_name, claim):
                self._slots.release()
                return
            try:
                with retry_scope(stop=stop, maximum=self._interval):
                    result = await self._api.claim_flow_run(run.id, message=self._claim_message)
            except AuthError:
                self._slots.release()
                raise
            except ApiError as exc:  # e.g. the run was deleted since the poll
                self._slots.release()
                log.warning("could not claim run", flow_run_id=run.id, error=str(exc))
                return
            except Interrupted as exc:
                self._slots.release()
                # A claim the server committed but never answered is a PENDING run that
                # names this agent and has no workload: once this agent is gone, the
                # reconciler of any agent puts it back to SCHEDULED.
                log.warning("stopping: claim given up unanswered", flow_run_id=run.id, error=str(exc))
                return
        if not result.claimed:
            self._slots.release()
            # the answer is the run's new state: the winner's claim message names it
            won_by = run.model_copy(update={"state": result.state, "labels": {}})
            winner = owner_of(won_by) if result.state else None
            self.spread.lost(pool_name, claim, winner=winner.name if winner else None)
            self._metrics.claim_lost(pool_name)
            log.debug("run taken by someone else", flow_run_id=run.id, reason=result.reason)
            return
        self.spread.won(pool_name, claim)
        pool = self._pools.by_id(item.work_pool_id)
        if pool is None:  # cannot happen for runs we polled, but never launch blind
            self._slots.release()
            log.error("claimed a run of an unknown pool", flow_run_id=run.id)
            return
        self.claimed += 1
        self._metrics.claimed(pool.name)
        self._metrics.set_free_slots(self._slots.free)
        log.info("claimed flow run", flow_run_id=run.id, flow_run_name=run.name, pool=pool.name, ship=True)
        runs.start_soon(self._runner.execute, run, pool, self._release)

    def _release(self) -> None:
        self._slots.release()
        self._metrics.set_free_slots(self._slots.free)
