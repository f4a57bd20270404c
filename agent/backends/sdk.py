"""One way to call a blocking cloud SDK: in a worker thread, errors classified, retried.

Every backend maps its SDK's exceptions to the backend errors once, in its own boundary
module (`to_backend_error`-style), and calls the SDK only through `SdkCalls`: the call runs
in a thread, a failure leaves as a `BackendError`, and a `BackendUnavailable` is retried
with the agent's one retry policy (the user's `FLOW_AGENT_RETRY_*`, from BackendOptions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from agent.backends.base import BackendError, BackendUnavailable
from agent.retry import RetryPolicy

__all__ = ["Classify", "SdkCalls"]

T = TypeVar("T")
Classify = Callable[[Exception, str], BackendError]  # (SDK exception, what we were doing)


class SdkCalls:
    def __init__(
        self,
        retry: RetryPolicy,
        classify: Classify,
        *,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.retry = retry
        self._classify = classify
        self._limiter = limiter

    async def once(self, fn: Callable[[], T], what: str) -> T:
        """`fn` in a worker thread, its errors classified; no retry (a watch tick retries)."""
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified at the one boundary
            raise self._classify(exc, what) from None

    async def __call__(self, fn: Callable[[], T], what: str) -> T:
        """As `once`, with transient failures retried by the policy (its time budget)."""

        async def attempt() -> T:
            return await self.once(fn, what)

        return await self.retry.call(attempt, retry_on=(BackendUnavailable,))
