"""Deployments read once per burst, not once per run.

A poll that returns 200 runs of one deployment costs one `GET /deployments/{id}`. The
copy lives for a couple of seconds, so an edited deployment is seen by the next poll.
"""

from __future__ import annotations

import time

import anyio

from agent.api import Deployment, NotFound, PrefectClient

__all__ = ["DeploymentCache"]


class DeploymentCache:
    def __init__(self, api: PrefectClient, *, ttl: float = 2.0) -> None:
        self._api = api
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Deployment | None]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, deployment_id: str | None) -> Deployment | None:
        """The deployment, or None for runs without one (or whose deployment was deleted)."""
        if not deployment_id:
            return None
        lock = self._locks.setdefault(deployment_id, anyio.Lock())
        async with lock:  # concurrent runs of one deployment share a single request
            cached = self._entries.get(deployment_id)
            if cached and time.monotonic() - cached[0] < self._ttl:
                return cached[1]
            try:
                deployment: Deployment | None = await self._api.read_deployment(deployment_id)
            except NotFound:
                deployment = None
            self._entries[deployment_id] = (time.monotonic(), deployment)
            return deployment
