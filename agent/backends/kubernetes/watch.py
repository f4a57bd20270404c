"""One watch per namespace for all of the agent's jobs and pods there.

Two streams (pods, jobs) selected by the `prefect.io/flow-run-id` label every run's job
and pod template carry; the backend picks out its own jobs by name. Each stream lists
once, then watches from the list's resourceVersion and resumes from the last one it saw;
a 410 Gone (the version was compacted away) means "list again", and the list is replayed
as ADDED events so nothing that happened in between is missed. The blocking reads run in
worker threads (the backend's SdkCalls for watches); events come back to the event loop
in order. The watch engine runs `run` in its task group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.from_thread

from agent.backends.base import BackendError
from agent.backends.kubernetes.cluster import Cluster, Gone
from agent.backends.kubernetes.jobs import RUN_LABEL
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger
from agent.retry import backoff_delay

__all__ = ["NamespaceWatch"]

_WATCH_SECONDS: Final = 240  # the server ends a watch after this; we resume from where it was
_MAX_BACKOFF: Final = 30.0
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
        calls: SdkCalls,
    ) -> None:
        self.cluster, self.namespace = cluster, namespace
        self._on_event, self._on_list = on_event, on_list
        self._interval = interval
        self._calls = calls  # one attempt per call: `_follow` decides when to try again
        self._closed = False
        self.lists = 0  # how many times a stream listed (tests and metrics)

    async def run(self) -> None:
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
                version = await self._calls.once(
                    lambda v=version: self._stream(resource, v), f"watching {resource} in {self.namespace}"
                )
                failures = 0
                if version is None:
                    log.info(
                        "watch expired (410 Gone); listing again", namespace=self.namespace, resource=resource
                    )
            except Exception as exc:  # noqa: BLE001 - a watch must outlive any one failure
                if self._closed:
                    return
                failures += 1
                error = str(exc) if isinstance(exc, BackendError) else f"unexpected {type(exc).__name__}"
                log.warning("watch failed; retrying", error=error, attempt=failures)
                retry = self._calls.retry
                await anyio.sleep(
                    backoff_delay(failures, initial=self._interval, maximum=_MAX_BACKOFF, jitter=retry.jitter)
                )

    async def _list(self, resource: str) -> str:
        started = time.monotonic()
        path = _PATHS[resource].format(ns=self.namespace)
        body = await self._calls.once(
            lambda: self.cluster.call("GET", path, query={"labelSelector": RUN_LABEL}),
            f"listing {resource} in {self.namespace}",
        )
        self.lists += 1
        items = body.get("items") or []
        for item in items:
            self._on_event(resource, "ADDED", item)
        self._on_list(resource, {(i.get("metadata") or {}).get("name", "") for i in items}, started)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _stream(self, resource: str, version: str) -> str | None:
        """In a worker thread: one watch request, until the server ends it; the version to
        resume from, or None when it expired (410 Gone: list again)."""
        query = {
            "labelSelector": RUN_LABEL,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(_WATCH_SECONDS),
        }
        path = _PATHS[resource].format(ns=self.namespace)
        try:
            for event in self.cluster.stream(path, query, _WATCH_SECONDS):
                if self._closed:
                    break
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") != "BOOKMARK":
                    anyio.from_thread.run_sync(self._on_event, resource, str(event.get("type")), obj)
        except Gone:
            return None
        return version

    def stop(self) -> None:
        """No more events: a stream thread stops at its next line, no stream starts again."""
        self._closed = True
