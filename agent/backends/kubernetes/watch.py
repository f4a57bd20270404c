"""One watch per namespace for all of the agent's jobs and pods there.

Two streams (pods, jobs) selected by the `prefect.io/flow-run-id` label every run's job
and pod template carry; the backend picks out its own jobs by name. Each stream lists
once, then watches from the list's resourceVersion and resumes from the last one it saw;
a 410 Gone (the version was compacted away) means "list again", and the list is replayed
as ADDED events so nothing that happened in between is missed. The blocking reads run in
worker threads; events come back to the event loop in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from agent.backends.kubernetes.cluster import Cluster, Gone, api_error
from agent.observe.logging import get_logger
from agent.retry import backoff_delay

__all__ = ["SELECTOR", "NamespaceWatch"]

SELECTOR: Final = "prefect.io/flow-run-id"
_WATCH_SECONDS: Final = 240  # the server ends a watch after this; we resume from where it was
_PATHS: Final = {"pods": "/api/v1/namespaces/{ns}/pods", "jobs": "/apis/batch/v1/namespaces/{ns}/jobs"}

EventHandler = Callable[[str, str, dict[str, Any]], None]  # (resource, event type, object)
ListHandler = Callable[[str, set[str], float], None]  # (resource, names listed, list start time)

log = get_logger("agent.backends.kubernetes")


class NamespaceWatch:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        *,
        on_event: EventHandler,
        on_list: ListHandler,
        interval: float,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        self.cluster, self.namespace = cluster, namespace
        self._on_event, self._on_list = on_event, on_list
        self._interval = interval
        self._limiter = limiter
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.lists = 0  # how many times a stream listed (tests and metrics)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow, "pods")
            tg.start_soon(self._follow, "jobs")

    async def _follow(self, resource: str) -> None:
        version: str | None = None
        failures = 0
        while not self._closed:
            try:
                if version is None:
                    version = await self._list(resource)
                version = await anyio.to_thread.run_sync(
                    self._stream, resource, version, limiter=self._limiter, abandon_on_cancel=True
                )
                failures = 0
            except Gone:
                log.info(
                    "watch expired (410 Gone); listing again", namespace=self.namespace, resource=resource
                )
                version = None
            except Exception as exc:  # noqa: BLE001 - a watch must outlive any one failure
                failures += 1
                error = str(api_error(exc, f"watching {resource} in {self.namespace}"))
                log.warning("watch failed; retrying", error=error, attempt=failures)
                delay = backoff_delay(failures, initial=self._interval, maximum=30.0, jitter=0.2)
                await anyio.sleep(delay)

    async def _list(self, resource: str) -> str:
        started = time.monotonic()
        path = _PATHS[resource].format(ns=self.namespace)
        body = await anyio.to_thread.run_sync(
            lambda: self.cluster.request("GET", path, query={"labelSelector": SELECTOR}),
            limiter=self._limiter,
            abandon_on_cancel=True,
        )
        self.lists += 1
        items = body.get("items") or []
        for item in items:
            self._on_event(resource, "ADDED", item)
        self._on_list(resource, {(i.get("metadata") or {}).get("name", "") for i in items}, started)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _stream(self, resource: str, version: str) -> str:
        """In a worker thread: one watch request, until the server ends it."""
        query = {
            "labelSelector": SELECTOR,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(_WATCH_SECONDS),
        }
        path = _PATHS[resource].format(ns=self.namespace)
        for event in self.cluster.stream(path, query, _WATCH_SECONDS):
            if self._closed:
                break
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event.get("type") != "BOOKMARK":
                anyio.from_thread.run_sync(self._on_event, resource, str(event.get("type")), obj)
        return version

    def stop(self) -> None:
        """No more events: a stream thread stops at its next line."""
        self._closed = True

    async def aclose(self) -> None:
        self.stop()
        if self._task is not None:
            self._task.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
