"""Kubernetes as the watch engine sees it: ends pushed by the namespace watches.

The engine runs with `reads=False`: every state change arrives as a watch event, so
`JobEvents` turns events into ends (`engine.end`) and `JobPlatform` only says what a
missed deadline means (`pod_watch_timeout_seconds`: the run fails with Kubernetes' own
reason; `job_watch_timeout_seconds`: the job is killed) and what cleanup is (a Foreground
delete). A run ends when its Job has a Complete or Failed condition (so pod retries under
backoffLimit are the Job's business), is deleted, or cannot start.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from agent.backends.engine import Watched, WatchEngine
from agent.backends.kubernetes.cluster import Cluster
from agent.backends.kubernetes.jobs import JobsApi, JobState, killed, pid_for, run_log
from agent.backends.kubernetes.status import job_finished, job_name_of, pod_started, start_problem
from agent.outcome import Outcome, Reason

__all__ = ["JobEvents", "JobPlatform", "start_failure"]


async def start_failure(api: JobsApi, watched: Watched[JobState], *, fatal: bool = False) -> Outcome:
    """Why the pod never ran, in Kubernetes' words (the pod's, else the job's last event)."""
    text = watched.state.problem or await api.events_reason(watched.state)
    waited = f"no pod started within pod_watch_timeout_seconds ({watched.start_within}s)"
    if fatal:
        waited = "the pod cannot start; the job was deleted"
    return Outcome(Reason.START_FAILED, detail=f"{text}; {waited}" if text else waited)


class JobPlatform:
    """The engine's Platform. Statuses are pushed, never read: `read` and `conclude` are
    what the engine would call with `reads=True`, and answer "nothing known"."""

    batch_size = 1

    def __init__(self, api: JobsApi) -> None:
        self._api = api

    def batch_key(self, watched: Watched[JobState]) -> Hashable:
        return (watched.state.cluster.key, watched.state.namespace)

    async def read(self, batch: Sequence[Watched[JobState]]) -> Mapping[str, Any]:
        return {}

    def conclude(self, watched: Watched[JobState], status: Any | None) -> Outcome | None:
        return None

    async def overdue(self, watched: Watched[JobState], which: str) -> Outcome | None:
        if which == "start":
            return await start_failure(self._api, watched)
        watched.state.killed = True
        detail = f"the job did not finish within job_watch_timeout_seconds ({watched.end_within}s)"
        return Outcome(Reason.KILLED, detail=detail)

    async def clean_up(self, watched: Watched[JobState], outcome: Outcome) -> None:
        state = watched.state
        await self._api.delete(state.cluster, state.namespace, state.name, 0)


class JobEvents:
    """What a namespace watch's events mean for the runs the engine watches."""

    def __init__(self, engine: WatchEngine[JobState], api: JobsApi) -> None:
        self._engine = engine
        self._api = api

    def on_event(
        self, cluster: Cluster, namespace: str, resource: str, kind: str, obj: dict[str, Any]
    ) -> None:
        name = job_name_of(obj) if resource == "pods" else (obj.get("metadata") or {}).get("name")
        watched = self._engine.get(pid_for(cluster, namespace, str(name)))
        if watched is None or watched.done.is_set() or watched.state.cluster is not cluster:
            return
        output = watched.state.output
        if resource == "pods" and output is not None:  # after the end is known too: the pods
            output.on_pod(kind, obj)  # stream may lag the jobs stream, and the drain reads them
        if watched.ending:
            return
        if resource == "pods":
            self._on_pod(watched, kind, obj)
        elif kind == "DELETED":
            deleted = Outcome(Reason.LOST, detail="the Kubernetes job was deleted")
            self._engine.end(watched, killed() if watched.state.killed else deleted, clean_up=False)
        else:
            finished, failure = job_finished(obj)
            if finished and not watched.state.killed:
                self.finished(watched, failure)

    def finished(self, watched: Watched[JobState], failure: str) -> None:
        """The job has a Complete or Failed condition: its pods say how it ended."""

        async def outcome() -> Outcome:
            ended = await self._api.read_outcome(watched.state, failure, watched.flow_run_id)
            if watched.state.output is not None:  # the last lines, before the job is deleted
                await watched.state.output.finish()  # and before the waiter hears the end
            return ended

        self._engine.end(watched, outcome, clean_up=not watched.state.keep)

    def _on_pod(self, watched: Watched[JobState], kind: str, pod: dict[str, Any]) -> None:
        state = watched.state
        if kind == "DELETED":
            return
        state.pods[(pod.get("metadata") or {}).get("name", "")] = pod
        if pod_started(pod):
            watched.started = True
            return
        problem = start_problem(pod)
        if problem is None or problem[0] == state.problem:
            return
        state.problem, fatal = problem
        run_log(watched.flow_run_id).warning(f"the job's pod is not running: {state.problem}", job=state.name)
        if fatal:

            async def outcome() -> Outcome:
                return await start_failure(self._api, watched, fatal=True)

            self._engine.end(watched, outcome)

    def on_list(self, cluster: Cluster, namespace: str, resource: str, names: set[str], since: float) -> None:
        """After a relist: a job created before it and missing from it ended unseen."""
        if resource != "jobs":
            return
        for watched in self._engine.active:
            state = watched.state
            if state.cluster is not cluster or state.namespace != namespace or watched.ending:
                continue
            if state.name not in names and state.created_at is not None and state.created_at < since:
                detail = "the Kubernetes job disappeared while the watch was interrupted"
                outcome = killed() if state.killed else Outcome(Reason.LOST, detail=detail)
                self._engine.end(watched, outcome, clean_up=False)
