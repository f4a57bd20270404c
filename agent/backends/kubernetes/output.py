"""A job's output: its pods' flow container logs, followed line by line to the run's sink.

Each pod that started is read with `GET .../pods/{pod}/log?follow=true&timestamps=true`
("read log of the specified Pod", the API reference): the API server keeps the answer
open and streams new lines until the container ends, so lines printed just before the
exit come before the end of the answer. Pods are read one after the other, oldest first
(a pod retried under backoffLimit follows the one that failed). What is known of the pods
comes from the namespace watch (`on_pod`, from before the job is created, and after the
job's end is known too), from one list at the start (an adopted run's pods may have been
shown before it was adopted), and from one list at the end: the watch's pods and jobs are
two streams, so the job's end can arrive before the news that its pod ran or ended, and a
pod that ran must be read all the same.

A followed answer can end early (the API server's or a proxy's timeout, a dropped
connection): the pod is asked again from `sinceTime` (RFC3339, to the second), and the
lines up to the last one emitted are skipped by their timestamps (several lines may share
one: they are counted), so every line is emitted once, in order, and nothing but that
cursor is kept per pod. When the job has ended, `finish` lets the follower read every pod
(as the API lists them then) to its end, bounded, before the outcome is reported and the
job deleted: a completed pod's log is readable until then, however early it ended.

A failed read never touches the run: a container not started yet is asked again later,
a gone pod is done, a transient error waits and asks again; anything else (a role without
`get` on `pods/log`) is said once, with its fix, and output stops for that run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.from_thread

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, OutputSink, sent
from agent.backends.kubernetes.cluster import ApiException, Cluster
from agent.backends.kubernetes.status import pod_started
from agent.backends.sdk import SdkCalls
from agent.infra.kubernetes_manifest import CONTAINER
from agent.observe.logging import REDACTOR, get_logger

__all__ = ["JobOutput", "timestamp_key"]

_QUIET_SECONDS: Final = 300.0  # a followed log silent this long is asked again from where it was
_FINISH_SECONDS: Final = 60.0  # longest the end of a run waits for its last lines
_NOT_STARTED: Final = "not started"


def timestamp_key(stamp: str) -> tuple[str, str] | None:
    """An RFC3339Nano UTC time as a sortable key (Go drops a fraction's trailing zeros, so
    the strings themselves do not sort); None when it is not one."""
    if len(stamp) < 20 or stamp[4] != "-" or stamp[10] != "T" or not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    return whole, fraction.ljust(9, "0")


@dataclass
class _Cursor:
    """How far one pod's log has been emitted."""

    last: tuple[str, str] | None = None  # the timestamp of the last line emitted
    at_last: int = 0  # how many emitted lines had that timestamp
    done: bool = False


class JobOutput:
    """One job's output follower (`JobState.output`)."""

    def __init__(
        self,
        calls: SdkCalls,
        cluster: Cluster,
        namespace: str,
        job: str,
        emit: OutputSink,
        flow_run_id: str,
        *,
        interval: float,
    ) -> None:
        self._calls = calls  # the backend's calls for long reads (their own thread limiter)
        self._cluster, self._namespace, self._job = cluster, namespace, job
        self._emit = emit
        self._flow_run_id = flow_run_id
        self._interval = interval
        self._pods: dict[str, Mapping[str, Any]] = {}  # the last copy of each pod (gone: removed)
        self._cursors: dict[str, _Cursor] = {}
        self._changed = anyio.Event()
        self._ending = False  # the job has ended: read each pod to its end, then stop
        self._stopped = anyio.Event()
        self.closed = False  # given up after a read that cannot succeed

    # -- what the watch and the backend tell it ---------------------------------------------------

    def on_pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name") or "")
        if kind == "DELETED":
            self._pods.pop(name, None)
            self._cursors.setdefault(name, _Cursor()).done = True
        else:
            self._pods[name] = pod
        self._changed.set()

    async def finish(self) -> None:
        """The job has ended: wait (bounded) until every pod's log is read to its end."""
        self._ending = True
        self._changed.set()
        with anyio.move_on_after(_FINISH_SECONDS) as scope:
            await self._stopped.wait()
        if scope.cancelled_caught:
            self._say(f"output may be incomplete: reading it took over {_FINISH_SECONDS:.0f}s")

    # -- the follower -----------------------------------------------------------------------------

    async def run(self, alive: Callable[[], bool]) -> None:
        """Follow the pods while `alive()` (the job is watched), until the job has ended."""
        try:
            await self._list(at_end=False)
            listed_at_end = False
            while not self.closed and alive():
                pod = self._next()
                if pod is not None:
                    await self._follow(pod)
                elif self._ending and not listed_at_end:
                    listed_at_end = True  # the watch may lag: what the API has now, once
                    await self._list(at_end=True)
                elif self._ending:
                    return
                else:
                    with anyio.move_on_after(self._interval):
                        await self._changed.wait()
                    self._changed = anyio.Event()
        finally:
            self._stopped.set()

    async def _list(self, *, at_end: bool) -> None:
        """The job's pods as the API has them now. At the start, only pods the watch has not
        shown (an adopted job's were shown before it was watched); at the end, every pod not
        read to its end, newer than the watch's copy, and worth the retry policy."""
        path = f"/api/v1/namespaces/{self._namespace}/pods"
        query = {"labelSelector": f"job-name={self._job}"}
        call = lambda: self._cluster.call("GET", path, query=query)  # noqa: E731
        try:
            listed = await (self._calls if at_end else self._calls.once)(call, "listing the job's pods")
        except BackendError as exc:
            if at_end:  # what the watch showed is all there is to read
                self._say(f"output may be incomplete: {exc}")
            return  # at the start, the watch will tell
        for pod in listed.get("items") or []:
            name = str((pod.get("metadata") or {}).get("name") or "")
            if self._cursors.get(name, _Cursor()).done or (name in self._pods and not at_end):
                continue
            self._pods[name] = pod

    def _next(self) -> Mapping[str, Any] | None:
        """The oldest started pod whose log is not read to its end."""
        ready = [
            pod
            for name, pod in self._pods.items()
            if pod_started(pod) and not self._cursors.get(name, _Cursor()).done
        ]
        key = lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", p["metadata"]["name"])  # noqa: E731
        return min(ready, key=key, default=None)

    async def _follow(self, pod: Mapping[str, Any]) -> None:
        name = str(pod["metadata"]["name"])
        cursor = self._cursors.setdefault(name, _Cursor())
        query = {"container": _container(pod), "follow": "true", "timestamps": "true"}
        if cursor.last is not None:
            query["sinceTime"] = cursor.last[0] + "Z"  # to the second; the cursor skips the rest
        path = f"/api/v1/namespaces/{self._namespace}/pods/{name}/log"
        # an answer ends when the container does, or when it is cut (a timeout, a dropped
        # connection): only one asked for after the end was known is surely the whole rest
        complete = self._ending or _terminated(self._pods.get(name))
        try:
            answer = await self._calls.once(
                lambda: self._read(path, query, cursor), f"reading the log of pod {name}"
            )
        except InfrastructureNotFound:
            cursor.done = True  # the pod is gone, and its log with it
            return
        except BackendUnavailable:
            answer = ""  # asked again after a pause
        except BackendError as exc:
            denied = " 403 " in f" {exc} "
            fix = (
                f"; allow the agent's service account to get pods/log in namespace {self._namespace!r} "
                '(an RBAC rule with resources ["pods/log"] and verbs ["get"])'
            )
            self._give_up(f"{exc}{fix if denied else ''}")
            return
        if answer == "ended" and complete:
            cursor.done = True
            return
        if answer == "ended" and _terminated(self._pods.get(name)):
            return  # ended meanwhile: ask once more, for anything a cut answer left out
        if answer == _NOT_STARTED and self._ending:
            cursor.done = True  # the job ended before this container ever ran
            return
        with anyio.move_on_after(self._interval):  # the watch may not have shown the end yet
            await self._changed.wait()
        self._changed = anyio.Event()

    def _read(self, path: str, query: Mapping[str, str], cursor: _Cursor) -> str:
        """In a worker thread: emit the new lines of one answer; "ended" when it ended."""
        equal = 0  # lines of this answer stamped with the cursor's last time
        try:
            for raw in self._cluster.lines(path, query, _QUIET_SECONDS):
                stamp, _, text = raw.partition(" ")
                key = timestamp_key(stamp)
                if key is None:  # no time (not asked for, or an unknown server): as it is
                    anyio.from_thread.run_sync(self._emit_text, raw)
                    continue
                if cursor.last is not None and key <= cursor.last:
                    if key < cursor.last:
                        continue
                    equal += 1
                    if equal <= cursor.at_last:
                        continue
                    cursor.at_last += 1
                else:
                    cursor.last, cursor.at_last, equal = key, 1, 1
                anyio.from_thread.run_sync(self._emit_text, text)
        except ApiException as exc:
            if exc.status == 400 and "waiting to start" in str(exc.body or ""):
                return _NOT_STARTED
            raise
        return "ended"

    def _emit_text(self, text: str) -> None:
        # masked first, then stripped: a secret must match before any cut
        line = REDACTOR.mask_text(text).rstrip()
        if line and not self.closed and not sent(self._emit, line, "kubernetes", self._flow_run_id):
            self.closed = True  # the sink failed: no more output, the watch goes on

    def _give_up(self, why: str) -> None:
        self.closed = True
        self._say(f"the job's output is unavailable: {why}")

    def _say(self, text: str) -> None:
        log = get_logger("agent.backends.kubernetes", flow_run_id=self._flow_run_id, ship=True)
        log.warning(REDACTOR.mask_text(text), job=self._job)


def _container(pod: Mapping[str, Any]) -> str:
    """The flow's container: the kind's, else the pod's first (as status.py reads exits)."""
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    return CONTAINER if CONTAINER in names or not names else names[0]


def _terminated(pod: Mapping[str, Any] | None) -> bool:
    """The pod's flow container has ended (or the pod is gone): its log is complete."""
    if pod is None:
        return True
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    name = _container(pod)
    for container in status.get("containerStatuses") or []:
        if container.get("name") == name:
            return "terminated" in (container.get("state") or {})
    return False
