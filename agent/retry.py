"""The one retry policy: jittered exponential backoff that honours Retry-After.

Every call to the server, and every call a backend makes to its platform, goes through
`RetryPolicy.call`; what is worth retrying is said by the error itself (`Retryable`,
which the API's `TransientError` and the backends' `BackendUnavailable` are), classified
once at each boundary. Polls use a bounded budget
(the next poll will come anyway); state reports and claims use `persistent=True` and
retry until they get an answer, because giving up would leave a run in a lie.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
)

__all__ = ["Retryable", "RetryPolicy", "backoff_delay"]

T = TypeVar("T")
log = structlog.get_logger("agent.retry")


class Retryable(Exception):
    """An error worth retrying: the same call may succeed later. `retry_after` (seconds) is
    the other side's own advice, a floor for the next wait."""

    retry_after: float | None = None


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

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return backoff_delay(
            state.attempt_number,
            initial=self.initial,
            maximum=self.maximum,
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
        anything else propagates at once."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(retry_on),
            wait=self._wait,
            stop=stop_never if persistent else stop_after_delay(self.budget),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return await retrying(op)
