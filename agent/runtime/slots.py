"""The agent's own concurrency limit (`--limit`).

A slot is taken before a claim and given back if the claim is lost or when the run's
infrastructure has ended, so the agent never claims more runs than it can launch.
"""

from __future__ import annotations

import anyio

__all__ = ["Slots"]


class Slots:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_use = 0
        self._changed = anyio.Event()

    @property
    def free(self) -> int | None:
        """Free slots, or None when unlimited."""
        if self.limit is None:
            return None
        return max(0, self.limit - self.in_use)

    def try_take(self) -> bool:
        if self.limit is not None and self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def take(self) -> None:
        """Take a slot even beyond the limit (runs adopted at start already exist)."""
        self.in_use += 1

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("slot released more often than taken")
        self.in_use -= 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_free(self) -> None:
        """Return as soon as at least one slot is free."""
        while self.free == 0:
            await self._changed.wait()
