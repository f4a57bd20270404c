"""A run's job as the backend watches it, its pid, and the API calls made about jobs.

Every call goes through the backend's one `SdkCalls`: it runs in a worker thread, its
errors are mapped once (`cluster.api_error`) and throttling or transient errors are
retried with the agent's retry policy.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.backends.base import BackendError, InfrastructureNotFound, LaunchError
from agent.backends.kubernetes.cluster import ApiException, Cluster
from agent.backends.kubernetes.output import JobOutput
from agent.backends.kubernetes.status import newest_pod, outcome_from_pod
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason

__all__ = [
    "JOBS",
    "RUN_LABEL",
    "JobState",
    "JobsApi",
    "killed",
    "name_for",
    "pid_for",
    "run_log",
    "split_pid",
]

JOBS: Final = "/apis/batch/v1/namespaces/{ns}/jobs"
RUN_LABEL: Final = "prefect.io/flow-run-id"  # on every run's job and pod template (the kind sets it)
_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet
log = get_logger("agent.backends.kubernetes")


@dataclass
class JobState:
    """The backend's own part of a watched job (`engine.Watched.state`)."""

    cluster: Cluster
    namespace: str
    name: str
    keep: bool  # finished_job_ttl is set: Kubernetes removes the job, not us
    created_at: float | None = None  # monotonic; None until the API has the job
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last seen copy of each
    problem: str = ""  # why its pod is not running, in Kubernetes' words
    killed: bool = False
    output: JobOutput | None = None  # its pods' log follower, when output is wanted


def run_log(flow_run_id: str) -> Any:
    return get_logger("agent.backends.kubernetes", flow_run_id=flow_run_id, ship=True)


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


def pid_for(cluster: Cluster, namespace: str, name: str) -> str:
    """Prefect 2's `<cluster-uid>:<namespace>:<job>`, or Prefect 3's form without an identity."""
    return f"{namespace}:{name}" if cluster.uid is None else f"{cluster.uid}:{namespace}:{name}"


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
    def __init__(self, calls: SdkCalls) -> None:
        self._calls = calls

    async def call(
        self,
        cluster: Cluster,
        what: str,
        method: str,
        path: str,
        *,
        allow: tuple[int, ...] = (),
        retry: bool = True,
        **kw: Any,
    ) -> Any:
        """One API call; None when the answer's status is in `allow` (404 for an idempotent
        delete). `retry=False`: one attempt, for reads that are only worth a try."""

        def send() -> Any:
            try:
                return cluster.call(method, path, **kw)
            except ApiException as exc:
                if exc.status in allow:
                    return None
                raise

        return await (self._calls(send, what) if retry else self._calls.once(send, what))

    async def create(self, state: JobState, manifest: dict[str, Any], flow_run_id: str) -> None:
        """Create the job; a retry after a lost answer finds our own job (409) and keeps it."""
        path = JOBS.format(ns=state.namespace)
        what = f"creating job {state.name} in namespace {state.namespace}"
        if await self.call(state.cluster, what, "POST", path, body=manifest, allow=(409,)) is not None:
            return
        existing = await self.call(state.cluster, what, "GET", f"{path}/{state.name}")
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(RUN_LABEL) != flow_run_id:
            raise LaunchError(f"{what}: a job named {state.name!r} exists already and belongs to another run")

    async def read(self, cluster: Cluster, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The job as the API has it now; None when it does not exist."""
        path = f"{JOBS.format(ns=namespace)}/{name}"
        return await self.call(cluster, f"reading job {name}", "GET", path, allow=(404,))

    async def of_run(self, cluster: Cluster, namespace: str, flow_run_id: str) -> list[Mapping[str, Any]]:
        """The jobs in a namespace labelled with a flow run's id (a label selector list)."""
        query = {"labelSelector": f"{RUN_LABEL}={flow_run_id}"}
        what = f"looking for the jobs of flow run {flow_run_id} in namespace {namespace}"
        answer = await self.call(cluster, what, "GET", JOBS.format(ns=namespace), query=query)
        return list(answer.get("items") or [])

    async def read_outcome(self, state: JobState, failure: str, flow_run_id: str) -> Outcome:
        """The job's end from its pods, read once (the watch's copy may lag); the cached
        pods when the job and its pods are gone already (a TTL of 0)."""
        pods = dict(state.pods)
        query = {"labelSelector": f"job-name={state.name}"}
        path = f"/api/v1/namespaces/{state.namespace}/pods"
        try:
            listed = await self.call(state.cluster, "reading the job's pods", "GET", path, query=query)
            pods.update({(p.get("metadata") or {}).get("name", ""): p for p in listed.get("items") or []})
        except BackendError as exc:
            run_log(flow_run_id).warning(
                "could not read the job's pods; using the last seen state", error=str(exc)
            )
        return outcome_from_pod(newest_pod(pods.values(), prefer_succeeded=not failure), failure)

    async def events_reason(self, state: JobState) -> str:
        """Why a job has no pod: the job controller's last warning (a ResourceQuota refusal
        is only ever an event: "FailedCreate: pods ... is forbidden: exceeded quota").
        One try: the deadline that asks must not wait out a retry budget."""
        query = {"fieldSelector": f"involvedObject.name={state.name},involvedObject.kind=Job"}
        path = f"/api/v1/namespaces/{state.namespace}/events"
        try:
            events = await self.call(
                state.cluster, "reading the job's events", "GET", path, query=query, retry=False
            )
        except BackendError:
            return ""
        warnings = [e for e in events.get("items") or [] if e.get("type") == "Warning"]
        if not warnings:
            return ""
        last = max(warnings, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return f"{last.get('reason')}: {last.get('message')}"[:400]

    async def delete_pods(self, cluster: Cluster, namespace: str, name: str, grace: float) -> None:
        """Delete a job's pods with the kill's grace period. The garbage collector that a
        cascading job delete hands the pods to never passes the job's gracePeriodSeconds on
        (kubernetes/kubernetes#25055; docs/cloud-behaviour.md): the pods would get their own
        terminationGracePeriodSeconds instead. Pods first: a later delete can only shorten a
        pod's grace. Best effort: a role without `delete` on pods (Prefect's chart grants
        only get/list/watch) leaves the pods to the job delete."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": int(grace)}
        query = {"labelSelector": f"job-name={name}", "gracePeriodSeconds": str(int(grace))}
        path = f"/api/v1/namespaces/{namespace}/pods"
        try:
            what = f"deleting the pods of job {name}"
            await self.call(cluster, what, "DELETE", path, query=query, body=options, allow=(404,))
        except BackendError as exc:
            log.warning("could not delete the job's pods with the kill's grace period", error=str(exc))

    async def delete(self, cluster: Cluster, namespace: str, name: str, grace: float) -> bool:
        """Delete a job and (Foreground) its pods first; False if it was gone already."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground",
                   "gracePeriodSeconds": int(grace)}  # fmt: skip
        query = {"propagationPolicy": "Foreground", "gracePeriodSeconds": str(int(grace))}
        path = f"{JOBS.format(ns=namespace)}/{name}"
        what = f"deleting job {name} in namespace {namespace}"
        answer = await self.call(cluster, what, "DELETE", path, query=query, body=options, allow=(404,))
        return answer is not None
