"""Many agents on one pool: which runs of a polled page this agent claims, and when.

Every agent polls the same page (the server sorts due runs the same way for everyone), so
N agents claiming the page in its order race for the same runs, and N-1 of every N claims
are lost: writes that cost the server as much as a won claim, for nothing. More agents then
drain a pool more slowly than one.

So each run has one owner among the pool's live agents: the agent with the highest
rendezvous hash of (run id, agent name). Every agent works it out alone from the pool's
worker rows (the heartbeats), so the agents agree without talking, and an agent that joins
or leaves moves only its own share. An agent claims its own share at once, in page order,
and polls a page wide enough for its share to fill its free slots.

Fallback: a run of another agent's share is taken over once this agent has seen it wait
`grace` seconds while that agent made no progress (none of its share left our page), so no
run waits long on a dead agent, a full one, or one that serves other queues, and a live
agent working through a long queue on a slow server is not raced for its runs. The owner
that left it is then counted out for `suspend` seconds, so its share is spread among the
others instead of being taken over run by run; twice as long each time it leaves its share
again (up to 32 times: an agent serving other queues of the pool is soon left out for half
an hour), until it is seen winning a claim.

Starting: until this agent has seen its own heartbeat row, others may not count it yet,
nor it them (they all start at once after a deploy). Meanwhile it reads the rows at every
poll, claims at most one batch of `young_batch` runs at a time, and claims the runs of the
page with its highest hash first, which are the runs most likely its own whoever else is
there: blind agents then pick different runs instead of all taking the page's head. A busy
agent (its last page was not empty) reads the rows every `busy_refresh` seconds, so it
counts a newcomer soon and stops claiming the newcomer's share.

Backing off: a lost claim's answer is the run's new state, whose message names the agent
that won it. An agent we did not count (it started after our last look at the worker rows)
is counted in at once, and the runs of the batch that are now its share are left to it.
A winner we cannot name (not a flow-agent, or a stale page) stops the batch: the worker rows
are read again and the pool polled again. Losing a taken-over run means its owner is alive
after all: the rest of its share waits another grace.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.api.models import ScheduledRun, Worker
from agent.observe.logging import get_logger
from agent.runtime.ownership import STALE_HEARTBEATS, SWEEP_SECONDS

__all__ = ["Claim", "Spread", "live_agents", "owner", "score"]

log = get_logger("agent.runtime.claims")

_MAX_DOUBLINGS = 5  # an agent that keeps leaving its share is counted out 32 x `suspend` at most
SERVER_PAGE = 200  # the most runs get_scheduled_flow_runs returns (the server's default limit)


def score(run_id: str, agent: str) -> int:
    """The rendezvous weight of `agent` for `run_id`: stable across processes and hosts."""
    digest = hashlib.blake2b(f"{run_id}\x00{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(run_id: str, agents: Iterable[str]) -> str:
    """The agent whose share `run_id` is in (ties, which need equal hashes, go by name)."""
    return max(agents, key=lambda agent: (score(run_id, agent), agent))


def live_agents(workers: Iterable[Worker], now: datetime) -> set[str]:
    """The names of the worker rows still heartbeating (the same rule as ownership's)."""
    alive = set()
    for worker in workers:
        if worker.last_heartbeat_time is None or (worker.status or "").upper() == "OFFLINE":
            continue
        interval = float(worker.heartbeat_interval_seconds or 30)
        if (now - worker.last_heartbeat_time).total_seconds() <= STALE_HEARTBEATS * interval + SWEEP_SECONDS:
            alive.add(worker.name)
    return alive


@dataclass(frozen=True, slots=True)
class Claim:
    """A run to claim, whose share it is in, and whether claiming it takes it over."""

    item: ScheduledRun
    owner: str
    takeover: bool

    @property
    def run_id(self) -> str:
        return self.item.flow_run.id


@dataclass
class _PoolView:
    peers: frozenset[str] = frozenset()
    read_at: float | None = None  # when the worker rows were last read
    learned: dict[str, float] = field(default_factory=dict)  # winners of lost races -> until
    stale: bool = True  # read them before the next poll
    backing_off: bool = False  # an own-share claim of this batch was lost
    young: bool = True  # our own heartbeat row was not in the last read
    busy: bool = False  # the last page was not empty
    capped: bool = False  # the last plan left some of our share for the next batch
    first_seen: dict[str, float] = field(default_factory=dict)  # others' runs: when we saw them
    owners: dict[str, str] = field(default_factory=dict)  # others' runs: whose share
    progress: dict[str, float] = field(default_factory=dict)  # agent -> a run of its share left
    suspended: dict[str, float] = field(default_factory=dict)  # agent -> counted out until
    strikes: dict[str, int] = field(default_factory=dict)  # agent -> times it left its share


class Spread:
    """The spreading rules for one agent (`me`, its worker name), per pool. No I/O: the
    poller reads the worker rows and hands them in with `saw_workers`."""

    def __init__(
        self,
        me: str,
        *,
        grace: float,
        suspend: float,
        refresh_every: float,
        busy_refresh: float = 1.0,
        young_batch: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self._grace = grace
        self._suspend = suspend
        self._refresh_every = refresh_every
        self._busy_refresh = busy_refresh
        self._young_batch = young_batch
        self._clock = clock
        self._views: dict[str, _PoolView] = {}
        self.lost_races = 0  # claims lost to another agent (or to a stale page), all pools
        self.taken_over = 0  # runs of another agent's share claimed after the grace

    def _view(self, pool: str) -> _PoolView:
        return self._views.setdefault(pool, _PoolView())

    def agents(self, pool: str) -> set[str]:
        """Who shares the pool's runs now: the live peers not counted out, and this agent."""
        view = self._view(pool)
        now = self._clock()
        for timed in (view.suspended, view.learned):
            for name, until in list(timed.items()):
                if until <= now:
                    del timed[name]
        return {name for name in view.peers | view.learned.keys() if name not in view.suspended} | {self.me}

    # -- the worker rows -------------------------------------------------------------------------

    def wants_workers(self, pool: str) -> bool:
        view = self._view(pool)
        if view.stale or view.read_at is None:
            return True
        age = self._clock() - view.read_at
        every = self._busy_refresh if view.young or view.busy else self._refresh_every
        return age >= every

    def saw_workers(self, pool: str, workers: Iterable[Worker], now: datetime | None = None) -> None:
        view = self._view(pool)
        peers = frozenset(live_agents(workers, now or datetime.now(UTC)))
        if peers - {self.me} != view.peers - {self.me}:
            log.debug("agents sharing the pool", pool=pool, agents=sorted(peers | {self.me}))
        view.peers, view.read_at, view.stale = peers, self._clock(), False
        view.young = self.me not in peers

    def no_workers(self, pool: str) -> None:
        """The rows could not be read: claim as if alone until the next try."""
        view = self._view(pool)
        view.read_at, view.stale, view.young = self._clock(), False, False

    # -- a batch ------------------------------------------------------------------------------

    def page_limit(self, pool: str, free: int | None) -> int | None:
        """How many runs to ask for: enough that our share of the page fills our free slots."""
        if free is None:
            return None
        shares = len(self.agents(pool))
        # twice our expected share: a small --limit still finds runs of its own on the page;
        # the server answers 422 to a limit above its page size
        return min(free if shares == 1 else 2 * free * shares, SERVER_PAGE)

    def plan(self, pool: str, page: list[ScheduledRun]) -> list[Claim]:
        """What to claim of `page`, in order: our own share, then the takeovers that are due."""
        view = self._view(pool)
        view.backing_off, view.busy = False, bool(page)
        agents = self.agents(pool)
        now = self._clock()
        seen, owners, mine, others = view.first_seen, view.owners, [], []
        view.first_seen, view.owners = {}, {}
        for item in page:
            run_id = item.flow_run.id
            share = owner(run_id, agents)
            if share == self.me:
                mine.append(Claim(item, share, takeover=False))
                continue
            view.first_seen[run_id] = seen.get(run_id, now)
            view.owners[run_id] = share
            view.progress.setdefault(share, now)  # watched from now on
        for run_id in seen.keys() - view.first_seen.keys():  # claimed since the last page
            view.progress[owners[run_id]] = now
        others = [
            Claim(item, view.owners[item.flow_run.id], takeover=True)
            for item in page
            if item.flow_run.id in view.owners and self._overdue(view, item.flow_run.id, now)
        ]
        view.capped = view.young and len(mine) > self._young_batch
        if view.young:  # blind: our likeliest own runs first, one batch at a time
            mine.sort(key=lambda claim: score(claim.run_id, self.me), reverse=True)
            return mine[: self._young_batch]
        return mine + others

    def still_wanted(self, pool: str, claim: Claim) -> bool:
        """Checked just before each claim: the batch's losses so far may have changed our mind."""
        view = self._view(pool)
        if not claim.takeover:
            return not view.backing_off and owner(claim.run_id, self.agents(pool)) == self.me
        return claim.run_id in view.first_seen and self._overdue(view, claim.run_id, self._clock())

    def _overdue(self, view: _PoolView, run_id: str, now: float) -> bool:
        """Seen waiting a grace, while its owner made no progress for a grace."""
        stalled = now - view.progress.get(view.owners[run_id], now) >= self._grace
        return stalled and now - view.first_seen[run_id] >= self._grace

    def won(self, pool: str, claim: Claim) -> None:
        if not claim.takeover:
            return
        self.taken_over += 1
        view = self._view(pool)
        view.first_seen.pop(claim.run_id, None)
        view.owners.pop(claim.run_id, None)
        if claim.owner in view.suspended:
            return
        # its owner left it for a whole grace: spread its share among the others for a while
        strikes = view.strikes[claim.owner] = view.strikes.get(claim.owner, 0) + 1
        period = self._suspend * 2 ** min(strikes - 1, _MAX_DOUBLINGS)
        view.suspended[claim.owner] = self._clock() + period
        log.info(
            "an agent did not claim its share of the pool's runs in time; sharing it out",
            pool=pool,
            agent=claim.owner,
            waited=f"{self._grace:g} s",
            for_seconds=f"{period:g}",
        )

    def lost(self, pool: str, claim: Claim, winner: str | None = None) -> None:
        """`winner`: the agent that claimed the run, if its claim says so."""
        self.lost_races += 1
        view = self._view(pool)
        if winner is not None:
            # it claims: it serves these runs after all
            view.strikes.pop(winner, None)
            view.suspended.pop(winner, None)
        if winner is not None and winner not in self.agents(pool):
            # an agent we did not count: count it in now (its heartbeat row will follow)
            view.learned[winner] = self._clock() + self._suspend
            view.stale = True
            log.debug("another agent claims from the pool", pool=pool, agent=winner)
        if not claim.takeover:
            if winner is None:  # someone we cannot name claims our share: stop, look again
                view.backing_off = view.stale = True
            return
        # its owner is alive after all: the rest of its share waits another grace
        view.progress[claim.owner] = self._clock()

    def backing_off(self, pool: str) -> bool:
        return self._view(pool).backing_off

    def capped(self, pool: str) -> bool:
        """The last plan kept part of our share for the next batch: poll again soon."""
        return self._view(pool).capped
