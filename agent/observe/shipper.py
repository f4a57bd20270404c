"""Batched shipping of the agent's own lines about a run to `POST /logs/`.

Lines show up in the run's log tab in the Prefect UI, next to the engine's own. One
request per flush interval carries the lines of every run, so the cost per run stays
well under one request.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from agent.observe.logging import REDACTOR

__all__ = ["LogShipper"]

_MAX_BUFFER = 10_000  # lines kept while the server is unreachable; older ones are dropped
_MAX_BATCH = 500


class _LogApi(Protocol):
    async def create_logs(self, entries: list[dict[str, Any]]) -> None: ...


class LogShipper:
    def __init__(
        self,
        api: _LogApi,
        *,
        interval: float = 1.0,
        logger_name: str = "flow_agent",
        redact: Callable[[str], str] = REDACTOR.mask_text,
    ) -> None:
        self._api = api
        self._redact = redact
        self._interval = interval
        self._name = logger_name
        self._buffer: deque[dict[str, Any]] = deque(maxlen=_MAX_BUFFER)
        self._dropped_batches = 0

    def add(self, flow_run_id: str, level: int, message: str, timestamp: str) -> None:
        self._buffer.append(
            {
                "name": self._name,
                "level": level,
                # the boundary: whoever called, the server never receives a secret
                "message": self._redact(message),
                "timestamp": timestamp,
                "flow_run_id": flow_run_id,
                "task_run_id": None,
            }
        )

    async def flush(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), _MAX_BATCH))]
            try:
                await self._api.create_logs(batch)
            except Exception as exc:  # noqa: BLE001 - logs must never take the agent down
                self._dropped_batches += 1
                # not through structlog: a failing shipper must not feed itself
                logging.getLogger("agent.observe").warning("dropped %d log lines: %s", len(batch), exc)
                return

    async def run(self) -> None:
        """Flush forever; cancel the task to stop (call `flush()` once more afterwards)."""
        while True:
            await anyio.sleep(self._interval)
            await self.flush()
