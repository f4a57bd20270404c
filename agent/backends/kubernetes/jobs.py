"""A run's job as the backend tracks it, its pid, and the API calls made about one job.

Every call runs in a worker thread and is retried with the agent's one policy on
throttling and transient errors (`BackendUnavailable`); other errors are mapped once, in
`cluster.api_error`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.to_thread

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError
from agent.backends.kubernetes.cluster import ApiException, Cluster, api_error
from agent.backends.kubernetes.status import newest_pod, outcome_from_pod
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import RetryPolicy

__all__ = ["JOBS", "JobsApi", "Tracked", "killed", "name_for", "split_pid"]

JOBS: Final = "/apis/batch/v1/namespaces/{ns}/jobs"
_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


@dataclass
class Tracked:
    cluster: Cluster
    namespace: str
    name: str
    flow_run_id: str
    start_timeout: int | None
    run_timeout: int | None
    keep: bool  # finished_job_ttl is set: Kubernetes removes the job, not us
    created_at: float | None = None  # monotonic; None until the API has the job
    started: bool = False
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str = ""
    killed: bool = False
    ending: bool = False
    outcome: Outcome | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cluster.key, self.namespace, self.name)

    @property
    def log(self) -> Any:
        return get_logger("agent.backends.kubernetes", flow_run_id=self.flow_run_id, ship=True)


def split_pid(pid: str) -> tuple[str | None, str, str]:
    parts = pid.split(":")
    if len(parts) == 2 and all(parts):
        return None, parts[0], parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise InfrastructureNotFound(
        f"not a Kubernetes job pid: {pid!r}; "
        "expected '<namespace>:<job>' or '<cluster-uid>:<namespace>:<job>'"
    )


def killed() -> Outcome:
    return Outcome(Reason.KILLED, detail="the Kubernetes job was deleted by flow-agent")


def name_for(manifest: dict[str, Any]) -> str:
    """A name chosen here, as the API server would from generateName, so that a create
    retried after a lost answer cannot make a second job for the same run."""
    metadata = manifest.setdefault("metadata", {})
    if not metadata.get("name"):
        prefix = str(metadata.pop("generateName", None) or "prefect-job-")[:58]
        metadata["name"] = prefix + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return str(metadata["name"])


class JobsApi:
    def __init__(self, retry: RetryPolicy) -> None:
        self._retry = retry

    async def request(
        self, cluster: Cluster, what: str, method: str, path: str, *, allow: tuple[int, ...] = (), **kw: Any
    ) -> Any:
        """One API call in a worker thread, retried on throttling and transient errors;
        None when the answer's status is in `allow` (404 for an idempotent delete)."""

        def call() -> Any:
            try:
                return cluster.request(method, path, **kw)
            except ApiException as exc:
                if exc.status in allow:
                    return None
                raise api_error(exc, what) from None
            except Exception as exc:  # noqa: BLE001 - mapped in one place
                raise api_error(exc, what) from None

        async def attempt() -> Any:
            return await anyio.to_thread.run_sync(call)

        return await self._retry.call(attempt, retry_on=(BackendUnavailable,))

    async def create(self, tracked: Tracked, manifest: dict[str, Any]) -> None:
        """Create the job; a retry after a lost answer finds our own job (409) and keeps it."""
        path = JOBS.format(ns=tracked.namespace)
        what = f"creating job {tracked.name} in namespace {tracked.namespace}"
        if await self.request(tracked.cluster, what, "POST", path, body=manifest, allow=(409,)) is not None:
            return
        existing = await self.request(tracked.cluster, what, "GET", f"{path}/{tracked.name}")
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get("prefect.io/flow-run-id") != tracked.flow_run_id:
            raise LaunchError(
                f"{what}: a job named {tracked.name!r} exists already and belongs to another run"
            )

    async def read_outcome(self, tracked: Tracked, failure: str) -> Outcome:
        """The job's end from its pods, read once (the watch's copy may lag); the cached
        pods when the job and its pods are gone already (a TTL of 0)."""
        pods = dict(tracked.pods)
        query = {"labelSelector": f"job-name={tracked.name}"}
        path = f"/api/v1/namespaces/{tracked.namespace}/pods"
        try:
            listed = await self.request(tracked.cluster, "reading the job's pods", "GET", path, query=query)
            pods.update({(p.get("metadata") or {}).get("name", ""): p for p in listed.get("items") or []})
        except BackendError as exc:
            tracked.log.warning("could not read the job's pods; using the last seen state", error=str(exc))
        return outcome_from_pod(newest_pod(pods.values(), prefer_succeeded=not failure), failure)

    async def events_reason(self, tracked: Tracked) -> str:
        """Why a job has no pod: the job controller's last warning (a ResourceQuota refusal
        is only ever an event: "FailedCreate: pods ... is forbidden: exceeded quota")."""
        query = {"fieldSelector": f"involvedObject.name={tracked.name},involvedObject.kind=Job"}
        path = f"/api/v1/namespaces/{tracked.namespace}/events"
        try:
            events = await self.request(tracked.cluster, "reading the job's events", "GET", path, query=query)
        except BackendError:
            return ""
        warnings = [e for e in events.get("items") or [] if e.get("type") == "Warning"]
        if not warnings:
            return ""
        last = max(warnings, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return f"{last.get('reason')}: {last.get('message')}"[:400]

    async def delete(self, cluster: Cluster, namespace: str, name: str, grace: float) -> bool:
        """Delete a job and (Foreground) its pods first; False if it was gone already."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground",
                   "gracePeriodSeconds": int(grace)}  # fmt: skip
        query = {"propagationPolicy": "Foreground", "gracePeriodSeconds": str(int(grace))}
        path = f"{JOBS.format(ns=namespace)}/{name}"
        what = f"deleting job {name} in namespace {namespace}"
        answer = await self.request(cluster, what, "DELETE", path, query=query, body=options, allow=(404,))
        return answer is not None
