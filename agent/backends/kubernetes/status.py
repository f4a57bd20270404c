"""Reading Kubernetes objects: has the pod started, why not, how did the job end.

Pure functions over the API's JSON, so every rule is testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from agent.infra.kubernetes_manifest import CONTAINER
from agent.outcome import Outcome, Reason

__all__ = [
    "FATAL_WAITING",
    "TIMEOUT_REASON",
    "disruption",
    "job_finished",
    "job_name_of",
    "newest_pod",
    "outcome_from_pod",
    "pod_started",
    "run_job",
    "start_problem",
]

# Waiting reasons that no amount of waiting repairs: fail at once, not at the deadline.
# ImagePullBackOff, ErrImagePull and CreateContainerConfigError can heal (a registry
# hiccup, a secret created late), so they fail only when the start deadline passes.
FATAL_WAITING: Final = frozenset({"InvalidImageName", "ErrImageNeverPull"})
_PROGRESS: Final = frozenset({"ContainerCreating", "PodInitializing"})
_DETAIL_LIMIT: Final = 400
TIMEOUT_REASON: Final = "DeadlineExceeded"  # the Failed condition's reason at activeDeadlineSeconds


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def job_name_of(pod: Mapping[str, Any]) -> str | None:
    """The job that owns a pod: its owner reference, else the job controller's labels."""
    for owner in _meta(pod).get("ownerReferences") or ():
        if owner.get("kind") == "Job":
            return str(owner.get("name"))
    labels = _meta(pod).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def _flow_container(statuses: Iterable[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    statuses = list(statuses or ())
    named = [s for s in statuses if s.get("name") == CONTAINER]
    return (named or statuses or [None])[0]


def pod_started(pod: Mapping[str, Any]) -> bool:
    """The flow container ran (or the pod got past Pending): the start deadline is met."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return True
    container = _flow_container(status.get("containerStatuses"))
    state = (container or {}).get("state") or {}
    return "running" in state or "terminated" in state


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def start_problem(pod: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Why a pending pod is not running, in Kubernetes' words, and whether it is hopeless.

    Init containers first (they run first), then the containers; then the scheduler's
    `PodScheduled=False` condition (Unschedulable: "0/3 nodes are available: ...").
    """
    status = pod.get("status") or {}
    for container in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in _PROGRESS:
            text = f"{reason}: {waiting.get('message')}" if waiting.get("message") else reason
            return _clip(text), reason in FATAL_WAITING
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "Unschedulable"
            text = f"{reason}: {condition.get('message')}" if condition.get("message") else reason
            return _clip(text), False
    return None


def job_finished(job: Mapping[str, Any]) -> tuple[bool, str]:
    """(finished, "Reason: message" of a Failed condition) from the job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return True, ""
        if condition.get("type") == "Failed":
            reason, message = condition.get("reason") or "Failed", condition.get("message")
            return True, _clip(f"{reason}: {message}" if message else reason)
    return False, ""


def run_job(jobs: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Of the jobs labelled with one run (a re-run after a crash can leave an older one kept
    for its TTL), the one that matters: an unfinished one, else the newest."""

    def key(job: Mapping[str, Any]) -> tuple[bool, str, str]:
        meta = _meta(job)
        return not job_finished(job)[0], meta.get("creationTimestamp") or "", meta.get("name") or ""

    return max(jobs, key=key, default=None)


def newest_pod(pods: Iterable[Mapping[str, Any]], *, prefer_succeeded: bool) -> Mapping[str, Any] | None:
    """The pod whose end is the job's end: a succeeded one for a complete job, else the newest."""
    pods = list(pods)
    if prefer_succeeded:
        succeeded = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
        pods = succeeded or pods
    key = lambda p: (_meta(p).get("creationTimestamp") or "", _meta(p).get("name") or "")  # noqa: E731
    return max(pods, key=key, default=None)


def disruption(pod: Mapping[str, Any]) -> str | None:
    """How Kubernetes itself ended a pod, in its words; None when it did not.

    The kubelet's eviction sets `status.reason` Evicted; node shutdown sets reason
    Terminated; API-initiated eviction (drain, autoscaler), preemption, taint-manager and
    pod GC deletions leave a `DisruptionTarget` condition (docs/cloud-behaviour.md,
    "Kubernetes"). Their containers' 137/143 are the platform's kill, not the flow's."""
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return None
    name, message = _meta(pod).get("name", "?"), status.get("message")
    if status.get("reason") == "Evicted":
        return f"pod {name} was evicted: {message or 'Evicted'}"
    if status.get("reason") == "Terminated":
        return f"pod {name} was terminated by its node (Terminated: {message or 'node shutdown'})"
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            why = condition.get("reason") or "DisruptionTarget"
            words = f"{why}: {condition['message']}" if condition.get("message") else why
            return f"pod {name} was disrupted by Kubernetes ({words})"
    return None


def outcome_from_pod(pod: Mapping[str, Any] | None, job_failure: str = "") -> Outcome:
    """The outcome from the flow container's `terminated` state (OOMKilled = OOM), the
    platform's own disruptions and timeouts as such, and the job's failure reason always
    named (alone when no exit status exists)."""
    if job_failure.startswith(TIMEOUT_REASON):
        return _timed_out(pod, job_failure)
    if pod is None:
        return Outcome(
            Reason.LOST, detail=job_failure or "the job has no pods left to read an exit status from"
        )
    status = pod.get("status") or {}
    name = _meta(pod).get("name", "?")
    disrupted = disruption(pod)
    if disrupted is not None:
        detail = disrupted + (f"; job: {job_failure}" if job_failure else "")
        return Outcome(Reason.LOST, detail=_clip(detail))
    for init in status.get("initContainerStatuses") or ():
        terminated = (init.get("state") or {}).get("terminated") or {}
        if terminated.get("reason") == "OOMKilled":
            detail = f"init container {init.get('name')!r} of pod {name} was OOMKilled"
            return Outcome(Reason.OOM, exit_code=terminated.get("exitCode"), detail=detail)
    container = _flow_container(status.get("containerStatuses")) or {}
    terminated = (container.get("state") or {}).get("terminated")
    if not terminated or terminated.get("exitCode") is None:
        return Outcome(Reason.LOST, detail=job_failure or f"pod {name} ended without an exit status")
    return _terminated(name, container, terminated, job_failure)


def _timed_out(pod: Mapping[str, Any] | None, job_failure: str) -> Outcome:
    """The job's activeDeadlineSeconds passed: the job controller stopped its pods, so their
    exit code (137 after SIGKILL, 143) is the stop, never the flow's own end or an OOM."""
    detail = f"the job timed out ({job_failure})"
    if pod is not None:
        container = _flow_container((pod.get("status") or {}).get("containerStatuses")) or {}
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") is not None:
            name = _meta(pod).get("name", "?")
            detail += f"; Kubernetes stopped pod {name} (its container ended {terminated['exitCode']})"
    return Outcome(Reason.EXITED, detail=_clip(detail))


def _terminated(
    name: str, container: Mapping[str, Any], terminated: Mapping[str, Any], job_failure: str
) -> Outcome:
    code, reason = int(terminated["exitCode"]), terminated.get("reason") or ""
    words = f"{reason}: {terminated['message']}" if terminated.get("message") else reason
    ended = f"pod {name} terminated" + (f" ({_clip(words)})" if words else "")
    if reason == "OOMKilled":
        detail = f"OOMKilled: container {container.get('name')!r} of pod {name} exceeded its memory limit"
        detail += f"; job: {job_failure}" if job_failure else ""
        return Outcome(Reason.OOM, exit_code=code, detail=_clip(detail))
    if code == 0:
        return Outcome(Reason.EXITED, exit_code=0)
    detail = ended + (f"; job: {job_failure}" if job_failure else "")
    return Outcome(Reason.EXITED, exit_code=code, detail=_clip(detail))
