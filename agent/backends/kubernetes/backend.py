"""Kubernetes Jobs: create, watch (one watch per namespace), find by run, kill, inspect.

`infrastructure_pid` is `<cluster-uid>:<namespace>:<job>` (Prefect 2's format), the
cluster uid being the `kube-system` namespace's uid; where RBAC forbids reading it the pid
is Prefect 3's `<namespace>:<job>`. `parse_pid` takes both; an agent connected to another
cluster refuses to kill or inspect a job whose pid names a different uid.

Every run's job carries the `prefect.io/flow-run-id` label (the kind puts it on the job
and its pod template), so `find` lists the jobs of a run with a label selector: another
agent finds a job whose creator died before it reported the pid.

How a run ends is platform.py's business: the watches push every change, the watch
engine enforces the start deadline (`pod_watch_timeout_seconds` from creation without a
running pod: the run fails with Kubernetes' own reason and the job is deleted) and
`job_watch_timeout_seconds`. Finished jobs are deleted unless `finished_job_ttl` is set,
in which case Kubernetes' TTL controller removes them later.

Output (`stream_output`, on by default as in Prefect, or a job with its own `output` sink):
the pods' flow container logs, followed while the job runs and read to their end before
the outcome is reported and the job deleted (output.py); an adopted run's lines go to its
flow run's log like a launched one's.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio

from agent.backends.base import (
    BackendError,
    BackendOptions,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
    OutputSink,
    output_sink,
)
from agent.backends.engine import Watched, WatchEngine
from agent.backends.kubernetes.cluster import Cluster, api_error, cluster_key, connect
from agent.backends.kubernetes.jobs import JobsApi, JobState, killed, name_for, pid_for, run_log, split_pid
from agent.backends.kubernetes.output import JobOutput
from agent.backends.kubernetes.platform import JobEvents, JobPlatform
from agent.backends.kubernetes.status import job_finished, run_job
from agent.backends.kubernetes.watch import NamespaceWatch
from agent.backends.sdk import SdkCalls
from agent.infra.kubernetes import KubernetesRuntime
from agent.outcome import Outcome, Reason

__all__ = ["KubernetesBackend"]


class KubernetesBackend:
    kind: ClassVar[str] = "kubernetes"
    remote: ClassVar[bool] = True
    runtime_type: ClassVar[type] = KubernetesRuntime

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        self._calls = SdkCalls(options.retry, api_error)
        # watch reads block for minutes: kept off the shared thread pool, tried once each
        self._watch_calls = SdkCalls(options.retry, api_error, limiter=anyio.CapacityLimiter(1000))
        # followed pod logs block for a run's life: their own threads, so they never starve the watches
        self._log_calls = SdkCalls(options.retry, api_error, limiter=anyio.CapacityLimiter(1000))
        self._api = JobsApi(self._calls)
        self._engine: WatchEngine[JobState] = WatchEngine(
            "kubernetes",
            JobPlatform(self._api),
            interval=options.watch_interval,
            retry=options.retry,
            reads=False,
        )
        self._events = JobEvents(self._engine, self._api)
        self._clusters: dict[str, Cluster] = {}
        self._connecting = anyio.Lock()
        self._watches: dict[tuple[str, str], NamespaceWatch] = {}

    # -- clients ---------------------------------------------------------------------------------

    async def _cluster(self, cluster_config: Mapping[str, Any] | None) -> Cluster:
        key = cluster_key(cluster_config)
        async with self._connecting:
            if key not in self._clusters:
                kubeconfig = self._options.kubeconfig
                self._clusters[key] = await self._calls.once(
                    lambda: connect(cluster_config, kubeconfig), "loading the Kubernetes configuration"
                )
            cluster = self._clusters[key]
        if not cluster.identity_checked:
            await self._calls(cluster.load_identity, "reading the cluster's identity")
        return cluster

    async def _locate(self, handle: Handle) -> tuple[Cluster, str, str]:
        """A pid's cluster, namespace and job; refuse a pid from a cluster we are not connected to."""
        uid, namespace, name = split_pid(handle.pid)
        cluster = next((c for c in self._clusters.values() if uid is not None and c.uid == uid), None)
        if cluster is None:
            runtime: KubernetesRuntime | None = handle.runtime  # an adopted run's: its cluster_config
            cluster = await self._cluster(runtime.cluster_config if runtime else None)
        if uid is not None and cluster.uid is not None and cluster.uid != uid:
            raise BackendError(
                f"the job runs on cluster {uid}, but this agent is connected to cluster {cluster.uid}; "
                "only an agent connected to that cluster can stop or inspect it"
            )
        return cluster, namespace, name

    def _ensure_watch(self, cluster: Cluster, namespace: str) -> None:
        if (cluster.key, namespace) in self._watches:
            return
        watch = NamespaceWatch(
            cluster,
            namespace,
            on_event=functools.partial(self._events.on_event, cluster, namespace),
            on_list=functools.partial(self._events.on_list, cluster, namespace),
            interval=self._options.watch_interval,
            calls=self._watch_calls,
        )
        self._watches[(cluster.key, namespace)] = watch
        self._engine.spawn(watch.run)

    # -- launch and find -------------------------------------------------------------------------

    async def launch(self, job: Job[KubernetesRuntime]) -> Handle[KubernetesRuntime]:
        namespace, manifest = str(job.payload["namespace"]), copy.deepcopy(dict(job.payload["job"]))
        runtime = job.runtime
        cluster = await self._cluster(runtime.cluster_config)
        name = name_for(manifest)
        keep = manifest.get("spec", {}).get("ttlSecondsAfterFinished") is not None
        handle = Handle(self.kind, pid_for(cluster, namespace, name), job.flow_run_id, runtime)
        # watched before it exists, so that no event about it can be missed; its deadlines
        # start once the API has it
        watched = self._engine.track(Watched(handle, JobState(cluster, namespace, name, keep)))
        # its output follower too: the pod may run and end, and the job be reported ended,
        # before the create's answer is back; untracked (not created), the follower stops
        if job.output is not None or runtime.stream_output:  # a direct run always wants output
            self._follow_output(watched, output_sink(self.kind, job.flow_run_id, job.output))
        self._ensure_watch(cluster, namespace)
        try:
            await self._api.create(watched.state, manifest, job.flow_run_id)
        except BackendError as exc:
            self._engine.untrack(watched)  # not created (or unknown): nothing of ours to watch
            if isinstance(exc, InfrastructureNotFound):  # at create time: the namespace is missing
                raise LaunchError(f"{exc}; check that namespace {namespace!r} exists") from None
            raise
        watched.state.created_at = watched.tracked_at = time.monotonic()
        watched.start_within = runtime.pod_watch_timeout_seconds
        watched.end_within = runtime.job_watch_timeout_seconds
        run_log(job.flow_run_id).info("created Kubernetes job", namespace=namespace, job=name)
        return handle

    def _follow_output(self, watched: Watched[JobState], emit: OutputSink) -> None:
        """Follow the job's pod logs in the engine's task group (output.py), attached to its
        state at once so that every pod event reaches it; the end waits for the last lines
        before it is reported."""
        state = watched.state
        output = JobOutput(
            self._log_calls,
            state.cluster,
            state.namespace,
            state.name,
            emit,
            watched.flow_run_id,
            interval=self._options.watch_interval,
        )
        state.output = output

        def alive() -> bool:
            return not watched.done.is_set() and self._engine.get(watched.pid) is watched

        self._engine.spawn(lambda: output.run(alive))

    async def find(self, job: Job[KubernetesRuntime]) -> Handle[KubernetesRuntime] | None:
        """The run's job in the payload's namespace, by its `prefect.io/flow-run-id` label."""
        namespace = str(job.payload["namespace"])
        cluster = await self._cluster(job.runtime.cluster_config)
        found = run_job(await self._api.of_run(cluster, namespace, job.flow_run_id))
        if found is None:
            return None
        name = str((found.get("metadata") or {}).get("name"))
        return Handle(self.kind, pid_for(cluster, namespace, name), job.flow_run_id, job.runtime)

    # -- the protocol for handles ----------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        cluster, namespace, name = await self._locate(handle)
        watched = self._engine.get(pid_for(cluster, namespace, name))
        if watched is None:
            watched = await self._adopt(cluster, namespace, name, handle)
        if watched is None:
            return Outcome(Reason.LOST, detail=f"job {namespace}/{name} does not exist")
        try:
            return await self._engine.wait(watched)
        finally:
            if not watched.done.is_set():  # our waiter went away (the agent is stopping): the job
                self._engine.untrack(watched)  # is left to whoever adopts it next

    async def _adopt(
        self, cluster: Cluster, namespace: str, name: str, handle: Handle
    ) -> Watched[JobState] | None:
        """Watch a job this agent did not create (e.g. before a restart)."""
        job = await self._api.read(cluster, namespace, name)
        if job is None:
            return None
        keep = (job.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
        state = JobState(cluster, namespace, name, keep, created_at=time.monotonic())
        pid = pid_for(cluster, namespace, name)
        # no deadlines: they belonged to the agent that created it
        watched = self._engine.track(
            Watched(Handle(self.kind, pid, handle.flow_run_id, handle.runtime), state)
        )
        watched.started = True
        runtime: KubernetesRuntime | None = handle.runtime
        if watched.state is state and (runtime is None or runtime.stream_output):
            self._follow_output(watched, output_sink(self.kind, handle.flow_run_id))  # to its run's log
        self._ensure_watch(cluster, namespace)
        self._events.on_event(cluster, namespace, "jobs", "MODIFIED", dict(job))
        return watched

    async def kill(self, handle: Handle, grace: float) -> None:
        cluster, namespace, name = await self._locate(handle)
        watched = self._engine.get(pid_for(cluster, namespace, name))
        if watched is not None and not watched.ending:
            finished, failure = await self._ended_on_its_own(cluster, namespace, name)
            if finished:  # it ended on its own just before the kill: its end is the truth
                self._events.finished(watched, failure)
                await self._engine.wait(watched)
                return
        if watched is not None:
            watched.state.killed = True
        await self._api.delete_pods(cluster, namespace, name, grace)  # a job delete gives pods no grace
        existed = await self._api.delete(cluster, namespace, name, grace)
        if watched is not None and not existed:
            self._engine.end(watched, killed(), clean_up=False)

    async def _ended_on_its_own(self, cluster: Cluster, namespace: str, name: str) -> tuple[bool, str]:
        """Whether the job has a Complete or Failed condition now (and its failure reason);
        (False, "") when it cannot be read: the kill goes ahead."""
        try:
            return job_finished(await self._api.read(cluster, namespace, name) or {})
        except BackendError:
            return False, ""

    async def inspect(self, handle: Handle) -> Outcome | None:
        cluster, namespace, name = await self._locate(handle)
        watched = self._engine.get(pid_for(cluster, namespace, name))
        if watched is not None and watched.done.is_set():
            return watched.outcome
        job = await self._api.read(cluster, namespace, name)
        if job is None:
            return Outcome(Reason.LOST, detail=f"job {namespace}/{name} does not exist")
        finished, failure = job_finished(job)
        if not finished:
            return None
        probe = JobState(cluster, namespace, name, keep=True)
        return await self._api.read_outcome(probe, failure, handle.flow_run_id)

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        split_pid(pid)
        return Handle(self.kind, pid, flow_run_id)

    async def aclose(self) -> None:
        for watch in self._watches.values():
            watch.stop()
        for cluster in self._clusters.values():
            cluster.close_streams()
        await self._engine.aclose()
        for cluster in self._clusters.values():
            cluster.api.close()
        self._watches.clear()
