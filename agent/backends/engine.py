"""The one watch engine every remote backend uses.

A backend tracks each workload it launched or adopted as a `Watched` record (its handle,
its start deadline, the outcome once known) and hands the engine a `Platform`: how to read
the statuses of a batch of workloads and how to turn one status into an Outcome, what to
do when a workload misses its start deadline, and how to clean up once it has ended.
Everything else is here, once: the one loop per backend that reads every watched workload
each `interval` in batches, backs off with the agent's retry policy while the platform is
unavailable, restarts itself after any error, enforces the deadlines, runs cleanups in a
supervised task group, and lets `aclose` finish cleanups before it stops.

This module is the only place in the agent that creates an asyncio task: backends are
built lazily, deep inside the runner, so the engine owns one root task per backend and
every other task (the loop, cleanups, a backend's own streams) runs in its task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.backends.base import BackendError, Handle
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import Retryable, RetryPolicy, backoff_delay

__all__ = ["Platform", "WatchEngine", "Watched"]

S = TypeVar("S")  # the backend's own state of one workload (its client, cleanup flags, ...)
Status = Any  # whatever the platform answers about one workload

_KEEP_ENDED: Final = 1000  # ended records kept so that a late kill or inspect still finds them
_READS_AT_ONCE: Final = 16  # concurrent batch reads (each is one platform call, often a thread)
_MAX_BACKOFF: Final = 60.0

log = get_logger("agent.backends.engine")


@dataclass(eq=False)
class Watched(Generic[S]):
    """One workload being watched. `state` is the backend's; the rest is the engine's."""

    handle: Handle
    state: S
    start_within: float | None = None  # seconds from tracking to a started workload; None: none
    end_within: float | None = None  # seconds from tracking to the end; None: no limit
    started: bool = False
    tracked_at: float = field(default_factory=time.monotonic)
    ending: bool = False  # the end is decided; its cleanup may be running
    outcome: Outcome | None = None
    misses: int = 0  # consecutive reads that did not find the workload
    deadline_acted: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def pid(self) -> str:
        return self.handle.pid

    @property
    def flow_run_id(self) -> str:
        return self.handle.flow_run_id

    def overdue(self, now: float) -> str | None:
        """Which deadline has passed ("start" or "end"), if one has and was not acted on."""
        if self.ending or self.deadline_acted:
            return None
        age = now - self.tracked_at
        if not self.started and self.start_within and age >= self.start_within:
            return "start"
        if self.end_within and age >= self.end_within:
            return "end"
        return None


class Platform(Protocol[S]):
    """What a backend tells the engine; only what is really its own."""

    batch_size: int  # most workloads one status read may ask about (1: one call each)

    def batch_key(self, watched: Watched[S]) -> Hashable:
        """Workloads with the same key can be read in one call (same client, cluster, ...)."""
        ...

    async def read(self, batch: Sequence[Watched[S]]) -> Mapping[str, Status]:
        """The statuses of a batch, by pid; a pid missing from the answer was not found.
        Raise BackendUnavailable (or any Retryable) when the platform cannot answer now."""
        ...

    def conclude(self, watched: Watched[S], status: Status | None) -> Outcome | None:
        """The outcome once the workload has ended, else None (`status` None: not found).
        Marks `watched.started` when the status shows it started."""
        ...

    async def overdue(self, watched: Watched[S], which: str) -> Outcome | None:
        """A deadline passed ("start" or "end"): act (stop, cancel), and return the outcome
        now, or None when the platform will report the end itself."""
        ...

    async def clean_up(self, watched: Watched[S], outcome: Outcome) -> None:
        """After the end, before the waiter wakes (delete the job, the group, ...)."""
        ...


class WatchEngine(Generic[S]):
    def __init__(
        self,
        name: str,
        platform: Platform[S],
        *,
        interval: float,
        retry: RetryPolicy,
        reads: bool = True,
        close_timeout: float = 120.0,
    ) -> None:
        """`reads=False`: the backend pushes ends itself (`end`), from a stream it runs with
        `spawn`; the loop then only enforces deadlines."""
        self.name = name
        self._platform = platform
        self._interval = interval
        self._retry = retry
        self._reads = reads
        self._close_timeout = close_timeout
        self._active: dict[str, Watched[S]] = {}
        self._ended: dict[str, Watched[S]] = {}
        self._ended_order: deque[str] = deque()
        self._root: asyncio.Task[None] | None = None
        self._send: MemoryObjectSendStream[Callable[[], Awaitable[None]]] | None = None
        self._receive: MemoryObjectReceiveStream[Callable[[], Awaitable[None]]] | None = None
        self._tg: TaskGroup | None = None
        self._wake = anyio.Event()
        self._last_error = ""

    # -- records -----------------------------------------------------------------------------

    def track(self, watched: Watched[S]) -> Watched[S]:
        """Watch a workload (the same pid twice: the first record)."""
        existing = self.get(watched.pid)
        if existing is not None and not existing.done.is_set():
            return existing
        self._ended.pop(watched.pid, None)
        self._active[watched.pid] = watched
        self._start()
        self._wake.set()
        return watched

    def untrack(self, watched: Watched[S]) -> None:
        """Stop watching a workload whose end is not decided (its waiter went away: the agent
        is stopping and leaves it to whoever adopts it next): no more reads, deadlines or
        cleanup touch it. A workload already ending is left to finish its cleanup."""
        if not watched.ending and self._active.get(watched.pid) is watched:
            del self._active[watched.pid]

    def get(self, pid: str) -> Watched[S] | None:
        return self._active.get(pid) or self._ended.get(pid)

    @property
    def active(self) -> list[Watched[S]]:
        return list(self._active.values())

    async def wait(self, watched: Watched[S]) -> Outcome:
        await watched.done.wait()
        assert watched.outcome is not None
        return watched.outcome

    def finish(self, watched: Watched[S], outcome: Outcome) -> None:
        """The end is known and nothing is left to do: wake the waiter. Idempotent."""
        if watched.done.is_set():
            return
        watched.ending = True
        watched.outcome = outcome
        watched.done.set()
        if self._active.get(watched.pid) is watched:
            del self._active[watched.pid]
            self._ended[watched.pid] = watched
            self._ended_order.append(watched.pid)
            while len(self._ended_order) > _KEEP_ENDED:
                pid = self._ended_order.popleft()
                if self._ended.get(pid) is not None and pid not in self._active:
                    self._ended.pop(pid, None)

    def end(
        self,
        watched: Watched[S],
        outcome: Outcome | Callable[[], Awaitable[Outcome]],
        *,
        clean_up: bool = True,
    ) -> None:
        """The end is decided: compute the outcome (it may need more reads), clean up, then
        wake the waiter, in a supervised task. A second call for the same record is ignored."""
        if watched.ending:
            return
        watched.ending = True

        async def run() -> None:
            result = outcome if isinstance(outcome, Outcome) else None
            try:
                if result is None:
                    assert not isinstance(outcome, Outcome)
                    result = await outcome()
                if clean_up:
                    await self._platform.clean_up(watched, result)
            except BackendError as exc:
                log.warning(
                    "could not finish the workload cleanly",
                    backend=self.name,
                    flow_run_id=watched.flow_run_id,
                    infrastructure_pid=watched.pid,
                    error=str(exc),
                )
            finally:
                unread = Outcome(Reason.LOST, detail="the workload's outcome could not be read")
                self.finish(watched, result or unread)

        self.spawn(run)

    # -- tasks -------------------------------------------------------------------------------

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the engine's task group (a cleanup, a backend's own stream)."""
        self._start()
        assert self._send is not None
        self._send.send_nowait(fn)

    def _start(self) -> None:
        if self._root is not None and not self._root.done():
            return
        self._send, self._receive = anyio.create_memory_object_stream[Callable[[], Awaitable[None]]](math.inf)
        self._root = asyncio.get_running_loop().create_task(self._main(self._receive), name=self.name)

    async def _main(self, receive: MemoryObjectReceiveStream[Callable[[], Awaitable[None]]]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._supervised, self._loop)
            async for fn in receive:
                tg.start_soon(self._guarded, fn)

    async def _guarded(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:  # noqa: BLE001 - one task's surprise must not end the others
            log.exception("unexpected error in a watch task", backend=self.name)

    async def _supervised(self, loop: Callable[[], Awaitable[None]]) -> None:
        restarts = 0
        while True:
            try:
                await loop()
                return
            except Exception:  # noqa: BLE001 - the loop watches every run: it must go on
                restarts += 1
                log.exception("the watch loop failed; restarting it", backend=self.name, restarts=restarts)
                await anyio.sleep(self._backoff(restarts))

    def _backoff(self, failures: int) -> float:
        return backoff_delay(
            failures,
            initial=self._interval,
            maximum=max(self._interval, min(_MAX_BACKOFF, self._retry.maximum * 2)),
            jitter=self._retry.jitter,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while True:
            delay = self._backoff(failures) if failures else self._interval
            await anyio.sleep(delay)
            if not self._active:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            try:
                if self._reads:
                    await self._read_all()
                await self._enforce_deadlines()
                failures, self._last_error = 0, ""
            except Retryable as exc:
                failures += 1
                if str(exc) != self._last_error:  # once per distinct problem, not every tick
                    log.warning("cannot read workload states; backing off", backend=self.name, error=str(exc))
                    self._last_error = str(exc)

    async def _read_all(self) -> None:
        groups: dict[Hashable, list[Watched[S]]] = {}
        for watched in self._active.values():
            if not watched.ending:
                groups.setdefault(self._platform.batch_key(watched), []).append(watched)
        size = max(1, self._platform.batch_size)
        batches = [members[i : i + size] for members in groups.values() for i in range(0, len(members), size)]
        limiter = anyio.CapacityLimiter(_READS_AT_ONCE)
        errors: list[BaseException] = []

        async def one(batch: list[Watched[S]]) -> None:
            async with limiter:
                try:
                    answer = await self._platform.read(batch)
                except Retryable as exc:  # the other batches still get their turn
                    errors.append(exc)
                    return
            self._apply(batch, answer)

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(one, batch)
        if errors and len(errors) == len(batches):
            raise errors[0]

    def _apply(self, batch: Sequence[Watched[S]], answer: Mapping[str, Status]) -> None:
        for watched in batch:
            if watched.ending:  # killed while we were reading
                continue
            status = answer.get(watched.pid)
            watched.misses = 0 if status is not None else watched.misses + 1
            outcome = self._platform.conclude(watched, status)
            if outcome is not None:
                self.end(watched, outcome)

    async def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for watched in list(self._active.values()):
            which = watched.overdue(now)
            if which is None:
                continue
            try:
                outcome = await self._platform.overdue(watched, which)
            except BackendError as exc:  # tried again next tick
                log.warning("could not stop an overdue workload", backend=self.name, error=str(exc))
                continue
            watched.deadline_acted = True
            if outcome is not None:
                self.end(watched, outcome)

    # -- shutdown ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Let cleanups in progress finish (a deleted group must not be left half way), then
        stop. Workloads themselves keep running: they are remote."""
        ending = [w for w in self._active.values() if w.ending and not w.done.is_set()]
        with anyio.move_on_after(self._close_timeout):
            for watched in ending:
                await watched.done.wait()
        if self._send is not None:
            self._send.close()
        if self._root is not None:
            self._root.cancel()
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(10),
                contextlib.suppress(asyncio.CancelledError, Exception),
            ):
                await self._root
