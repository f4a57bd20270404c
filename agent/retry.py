"""The one retry policy: jittered exponential backoff that honours Retry-After.

Every call to the server, and every call a backend makes to its platform, goes through
`RetryPolicy.call`; what is worth retrying is said by the error itself (`Retryable`,
which the API's `TransientError` and the backends' `BackendUnavailable` are), classified
once at each boundary. Bounded calls give up before their budget would be exceeded;
state reports and claims use `persistent=True` and retry until they get an answer,
because giving up would leave a run in a lie.

The caller of a block of calls can narrow the policy for that block with `retry_scope`:
the poll loop, which polls again at its interval anyway, gives a poll no longer than one
interval; work not yet claimed gives up at once when the agent is told to stop; while
waiting for a server that is down, no sleep grows past the poll interval, so the agent
is back within one interval of the server.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import anyio
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    stop_never,
)

__all__ = ["Interrupted", "Retryable", "RetryPolicy", "RetryScope", "backoff_delay", "retry_scope"]

T = TypeVar("T")
log = structlog.get_logger("agent.retry")


class Retryable(Exception):
    """An error worth retrying: the same call may succeed later. `retry_after` (seconds) is
    the other side's own advice, a floor for the next wait."""

    retry_after: float | None = None


class Interrupted(Exception):
    """The scope's stop event ended a retry sleep: the call was given up, not answered.
    Whatever was sent before may or may not have taken effect."""

    def __init__(self, last: BaseException | None) -> None:
        super().__init__(f"stopped while retrying{f' after: {last}' if last else ''}")
        self.last = last


@dataclass(frozen=True)
class RetryScope:
    """What the caller of a block of calls allows their retries (None: the policy's own)."""

    stop: anyio.Event | None = None  # once set, a retry sleep ends and the call raises Interrupted
    budget: float | None = None  # bounded calls give up sooner than the policy's budget
    persistent: bool = False  # bounded calls, too, retry until answered (or stopped)
    maximum: float | None = None  # no sleep between attempts longer than this
    # told (attempt, error, seconds until the next try) before each retry sleep: a command
    # line shows that it is retrying instead of waiting in silence
    on_retry: Callable[[int, BaseException | None, float], None] | None = None


_UNSCOPED = RetryScope()
_SCOPE: ContextVar[RetryScope] = ContextVar("flow_agent_retry_scope", default=_UNSCOPED)


@contextmanager
def retry_scope(
    *,
    stop: anyio.Event | None = None,
    budget: float | None = None,
    persistent: bool = False,
    maximum: float | None = None,
    on_retry: Callable[[int, BaseException | None, float], None] | None = None,
) -> Iterator[None]:
    """Narrow the retry policy for the calls this task makes inside the block; the scope
    replaces any outer one, so `retry_scope()` lifts them (a step that must finish even
    when stopping). Tasks started inside the block inherit it (their context is copied
    when they start): keep the block around the calls it is meant for."""
    token = _SCOPE.set(RetryScope(stop, budget, persistent, maximum, on_retry))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    jitter: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to sleep before retry number `attempt` (1-based).

    Exponential from `initial`, capped at `maximum`, then spread by +/- `jitter` (a
    fraction) so agents that failed together do not retry together. A server's
    Retry-After is a floor: jitter only lengthens it.
    """
    base = min(maximum, initial * (2 ** (attempt - 1)))
    spread = base * jitter * (2 * rng() - 1)
    delay = max(0.0, base + spread)
    if retry_after is not None:
        delay = max(delay, retry_after * (1 + jitter * rng()))
    return delay


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2
    budget: float = 60.0  # seconds of retrying for bounded calls

    def _wait(self, state: RetryCallState, maximum: float) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return backoff_delay(
            state.attempt_number,
            initial=min(self.initial, maximum),
            maximum=maximum,
            jitter=self.jitter,
            retry_after=retry_after,
        )

    @staticmethod
    def _before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "retrying after a transient error",
            attempt=state.attempt_number,
            error=str(exc),
            sleep=round(state.upcoming_sleep, 2),
        )

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        persistent: bool = False,
        retry_on: tuple[type[BaseException], ...] = (Retryable,),
    ) -> T:
        """Run `op`, retrying `retry_on` errors (a `retry_after` attribute is honoured);
        anything else propagates at once. The current `retry_scope` narrows this."""
        scope = _SCOPE.get()
        budget = self.budget if scope.budget is None else min(self.budget, scope.budget)
        maximum = self.maximum if scope.maximum is None else min(self.maximum, scope.maximum)
        last: list[BaseException | None] = [None]

        def before_sleep(state: RetryCallState) -> None:
            last[0] = state.outcome.exception() if state.outcome else None
            self._before_sleep(state)
            if scope.on_retry is not None:
                scope.on_retry(state.attempt_number, last[0], state.upcoming_sleep)

        async def sleep(seconds: float) -> None:
            if scope.stop is None:
                await anyio.sleep(seconds)
                return
            with anyio.move_on_after(seconds):
                await scope.stop.wait()
            if scope.stop.is_set():
                raise Interrupted(last[0])

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(retry_on),
            wait=lambda state: self._wait(state, maximum),
            stop=stop_never if persistent or scope.persistent else stop_before_delay(budget),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(op)
