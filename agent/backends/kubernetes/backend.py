"""Kubernetes Jobs: create, watch (one watch per namespace), start deadline, kill, clean up.

`infrastructure_pid` is `<cluster-uid>:<namespace>:<job>` (Prefect 2's format), the
cluster uid being the `kube-system` namespace's uid; where RBAC forbids reading it the pid
is Prefect 3's `<namespace>:<job>`. `parse_pid` takes both; an agent connected to another
cluster refuses to kill or inspect a job whose pid names a different uid.

A run ends when its Job has a Complete or Failed condition (so pod retries under
backoffLimit are the Job's business), is deleted, or misses its start deadline
(`pod_watch_timeout_seconds` from creation without a running pod: the run fails with
Kubernetes' own reason and the job is deleted). Finished jobs are deleted unless
`finished_job_ttl` is set, in which case Kubernetes' TTL controller removes them later.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar

import anyio
import anyio.to_thread

from agent.backends import BackendOptions
from agent.backends.base import (
    BackendError,
    BackendUnavailable,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
)
from agent.backends.kubernetes.cluster import Cluster, cluster_key, connect
from agent.backends.kubernetes.jobs import JOBS, JobsApi, Tracked, killed, name_for, split_pid
from agent.backends.kubernetes.status import (
    job_finished,
    job_name_of,
    pod_started,
    start_problem,
)
from agent.backends.kubernetes.watch import NamespaceWatch
from agent.outcome import Outcome, Reason
from agent.retry import RetryPolicy

__all__ = ["KubernetesBackend"]


class KubernetesBackend:
    kind: ClassVar[str] = "kubernetes"
    remote: ClassVar[bool] = True

    def __init__(self, options: BackendOptions | None = None) -> None:
        self._options = options or BackendOptions()
        self._interval = self._options.watch_interval
        self._retry = RetryPolicy()
        self._api = JobsApi(self._retry)
        self._clusters: dict[str, Cluster] = {}
        self._connecting = anyio.Lock()
        self._watches: dict[tuple[str, str], NamespaceWatch] = {}
        self._jobs: dict[tuple[str, str, str], Tracked] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._watch_threads = anyio.CapacityLimiter(1000)  # long reads: kept off the shared pool

    # -- clients ---------------------------------------------------------------------------------

    async def _cluster(self, cluster_config: Any) -> Cluster:
        key = cluster_key(cluster_config)
        async with self._connecting:
            if key not in self._clusters:
                kubeconfig = self._options.kubeconfig
                self._clusters[key] = await anyio.to_thread.run_sync(connect, cluster_config, kubeconfig)
            cluster = self._clusters[key]
        if not cluster.identity_checked:

            async def identify() -> None:
                await anyio.to_thread.run_sync(cluster.load_identity)

            await self._retry.call(identify, retry_on=(BackendUnavailable,))
        return cluster

    async def _cluster_for(self, uid: str | None) -> Cluster:
        """The client for a pid's cluster; refuse a pid from a cluster we are not connected to."""
        for cluster in self._clusters.values():
            if uid is not None and cluster.uid == uid:
                return cluster
        cluster = await self._cluster(None)
        if uid is not None and cluster.uid is not None and cluster.uid != uid:
            raise BackendError(
                f"the job runs on cluster {uid}, but this agent is connected to cluster {cluster.uid}; "
                "only an agent connected to that cluster can stop or inspect it"
            )
        return cluster

    # -- launch ----------------------------------------------------------------------------------

    async def launch(self, job: Job) -> Handle:
        namespace, manifest = str(job.payload["namespace"]), copy.deepcopy(dict(job.payload["job"]))
        config = job.config
        cluster = await self._cluster(getattr(config, "cluster_config", None))
        name = name_for(manifest)
        tracked = Tracked(
            cluster,
            namespace,
            name,
            job.flow_run_id,
            start_timeout=getattr(config, "pod_watch_timeout_seconds", 60),
            run_timeout=getattr(config, "job_watch_timeout_seconds", None),
            keep=manifest.get("spec", {}).get("ttlSecondsAfterFinished") is not None,
        )
        # tracked before it exists, so that no event about it can be missed
        self._jobs[tracked.key] = tracked
        self._ensure_watch(cluster, namespace)
        try:
            await self._api.create(tracked, manifest)
        except BackendError as exc:
            self._jobs.pop(tracked.key, None)
            if isinstance(exc, InfrastructureNotFound):  # at create time: the namespace is missing
                raise LaunchError(f"{exc}; check that namespace {namespace!r} exists") from None
            raise
        tracked.created_at = time.monotonic()
        pid = f"{namespace}:{name}" if cluster.uid is None else f"{cluster.uid}:{namespace}:{name}"
        tracked.log.info("created Kubernetes job", namespace=namespace, job=name)
        return Handle(self.kind, pid, job.flow_run_id)

    # -- watching --------------------------------------------------------------------------------

    def _ensure_watch(self, cluster: Cluster, namespace: str) -> None:
        if (cluster.key, namespace) not in self._watches:
            watch = NamespaceWatch(
                cluster,
                namespace,
                on_event=lambda resource, kind, obj: self._on_event(
                    cluster.key, namespace, resource, kind, obj
                ),
                on_list=lambda resource, names, since: self._on_list(
                    cluster.key, namespace, resource, names, since
                ),
                interval=self._interval,
                limiter=self._watch_threads,
            )
            self._watches[(cluster.key, namespace)] = watch
            watch.start()
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _on_event(self, key: str, namespace: str, resource: str, kind: str, obj: dict[str, Any]) -> None:
        name = job_name_of(obj) if resource == "pods" else (obj.get("metadata") or {}).get("name")
        tracked = self._jobs.get((key, namespace, str(name)))
        if tracked is None or tracked.ending:
            return
        if resource == "pods":
            self._on_pod(tracked, kind, obj)
        elif kind == "DELETED":
            outcome = (
                killed() if tracked.killed else Outcome(Reason.LOST, detail="the Kubernetes job was deleted")
            )
            self._end(tracked, outcome, delete=False)
        else:
            finished, failure = job_finished(obj)
            if finished and not tracked.killed:
                self._end(tracked, None, delete=not tracked.keep, failure=failure)

    def _on_pod(self, tracked: Tracked, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        tracked.pods[(pod.get("metadata") or {}).get("name", "")] = pod
        if pod_started(pod):
            tracked.started = True
            return
        problem = start_problem(pod)
        if problem is None or problem[0] == tracked.problem:
            return
        tracked.problem, fatal = problem
        tracked.log.warning(f"the job's pod is not running: {tracked.problem}", job=tracked.name)
        if fatal:
            self._start_failed(tracked, fatal=True)

    def _on_list(self, key: str, namespace: str, resource: str, names: set[str], since: float) -> None:
        """After a relist: a job created before it and missing from it ended unseen."""
        if resource != "jobs":
            return
        for tracked in list(self._jobs.values()):
            if tracked.key[:2] != (key, namespace) or tracked.ending or tracked.name in names:
                continue
            if tracked.created_at is not None and tracked.created_at < since:
                detail = "the Kubernetes job disappeared while the watch was interrupted"
                self._end(
                    tracked,
                    killed() if tracked.killed else Outcome(Reason.LOST, detail=detail),
                    delete=False,
                )

    async def _tick(self) -> None:
        """The deadlines of every watched job, one loop for all."""
        while True:
            await anyio.sleep(self._interval)
            now = time.monotonic()
            for tracked in list(self._jobs.values()):
                if tracked.ending or tracked.created_at is None:
                    continue
                age = now - tracked.created_at
                if not tracked.started and tracked.start_timeout and age >= tracked.start_timeout:
                    self._start_failed(tracked)
                elif tracked.run_timeout and age >= tracked.run_timeout:
                    detail = (
                        f"the job did not finish within job_watch_timeout_seconds ({tracked.run_timeout}s)"
                    )
                    tracked.killed = True
                    self._end(tracked, Outcome(Reason.KILLED, detail=detail), delete=True)

    # -- ending ----------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _end(self, tracked: Tracked, outcome: Outcome | None, *, delete: bool, failure: str = "") -> None:
        async def read() -> Outcome:
            return outcome if outcome is not None else await self._api.read_outcome(tracked, failure)

        self._finish(tracked, read, delete=delete)

    def _start_failed(self, tracked: Tracked, *, fatal: bool = False) -> None:
        async def reason() -> Outcome:
            text = tracked.problem or await self._api.events_reason(tracked)
            waited = f"no pod started within pod_watch_timeout_seconds ({tracked.start_timeout}s)"
            if fatal:
                waited = "the pod cannot start; the job was deleted"
            return Outcome(Reason.START_FAILED, detail=f"{text}; {waited}" if text else waited)

        self._finish(tracked, reason, delete=True)

    def _finish(self, tracked: Tracked, outcome: Callable[[], Awaitable[Outcome]], *, delete: bool) -> None:
        if tracked.ending:
            return
        tracked.ending = True

        async def run() -> None:
            result = Outcome(Reason.LOST, detail="the job's outcome could not be read")
            try:
                result = await outcome()
                if delete:
                    await self._api.delete(tracked.cluster, tracked.namespace, tracked.name, 0)
            except BackendError as exc:
                tracked.log.warning("could not finish the Kubernetes job cleanly", error=str(exc))
            finally:
                tracked.outcome = result
                tracked.done.set()

        self._spawn(run())

    # -- the protocol for handles -------------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        uid, namespace, name = split_pid(handle.pid)
        cluster = await self._cluster_for(uid)
        tracked = self._jobs.get((cluster.key, namespace, name)) or await self._adopt(
            cluster, namespace, name, handle
        )
        if tracked is None:
            return Outcome(Reason.LOST, detail=f"job {namespace}/{name} does not exist")
        await tracked.done.wait()
        self._jobs.pop(tracked.key, None)
        assert tracked.outcome is not None
        return tracked.outcome

    async def _adopt(self, cluster: Cluster, namespace: str, name: str, handle: Handle) -> Tracked | None:
        """Watch a job this agent did not create (e.g. before a restart)."""
        path = f"{JOBS.format(ns=namespace)}/{name}"
        job = await self._api.request(cluster, f"reading job {name}", "GET", path, allow=(404,))
        if job is None:
            return None
        keep = (job.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
        tracked = Tracked(cluster, namespace, name, handle.flow_run_id, None, None, keep, time.monotonic())
        tracked.started = True  # its start deadline belonged to the agent that created it
        self._jobs[tracked.key] = tracked
        self._ensure_watch(cluster, namespace)
        self._on_event(cluster.key, namespace, "jobs", "MODIFIED", job)
        return tracked

    async def kill(self, handle: Handle, grace: float) -> None:
        uid, namespace, name = split_pid(handle.pid)
        cluster = await self._cluster_for(uid)
        tracked = self._jobs.get((cluster.key, namespace, name))
        if tracked is not None:
            tracked.killed = True
        existed = await self._api.delete(cluster, namespace, name, grace)
        if tracked is not None and not existed:
            self._end(tracked, killed(), delete=False)

    async def inspect(self, handle: Handle) -> Outcome | None:
        uid, namespace, name = split_pid(handle.pid)
        cluster = await self._cluster_for(uid)
        path = f"{JOBS.format(ns=namespace)}/{name}"
        job = await self._api.request(cluster, f"reading job {name}", "GET", path, allow=(404,))
        if job is None:
            return Outcome(Reason.LOST, detail=f"job {namespace}/{name} does not exist")
        finished, failure = job_finished(job)
        if not finished:
            return None
        probe = Tracked(cluster, namespace, name, handle.flow_run_id, None, None, True)
        return await self._api.read_outcome(probe, failure)

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        split_pid(pid)
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for watch in self._watches.values():
            watch.stop()
        for cluster in self._clusters.values():
            cluster.close_streams()
        for watch in self._watches.values():
            await watch.aclose()
        for task in list(self._tasks):
            task.cancel()
        for cluster in self._clusters.values():
            cluster.api.close()
        self._watches.clear()
