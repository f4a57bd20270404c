"""A small stateful Kubernetes API server for tests, over real HTTP (stdlib only).

Enough of the API for the Kubernetes backend: batch/v1 jobs (create with generateName,
get, list with labelSelector, delete with propagationPolicy), v1 pods (get, list, watch
with labelSelector and resourceVersion; watch events are JSON lines; a resourceVersion
older than the last compaction answers an ERROR event with 410 Gone), v1 events (list
with fieldSelector) and the kube-system namespace (the cluster's identity).

The fake plays job controller and kubelet: creating a job creates its pod (Pending,
ContainerCreating, or Running at once with `auto_start`), and the hooks drive pod status;
a pod that ends updates the job's status and conditions as the job controller would
(a failed pod under backoffLimit gets a replacement). Pods print with `write_output`,
read back through the pod log endpoint (kubernetes_logs.py). Point a client at it with
`write_kubeconfig(path)`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient

from fakes.kubernetes_http import Handler, match_labels, status_body
from fakes.kubernetes_logs import PodLogs

__all__ = ["KubernetesFake"]

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_CONTAINER = "prefect-job"


_MODELS = ApiClient()  # the client's own models: what the API server keeps of a body


def _as_stored(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A created object as the API server keeps it: fields its schema does not know are
    dropped (Prefect's template puts `completions` in the pod spec; the server drops it and
    warns); a missing required field is a ValueError (the server answers 422)."""
    parsed = _MODELS.deserialize(json.dumps(body), model, "application/json")
    return dict(_MODELS.sanitize_for_serialization(parsed))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubernetesFake:
    def __init__(self, namespaces: tuple[str, ...] = ("default",)) -> None:
        self.namespaces = {"kube-system", *namespaces}
        self.cluster_uid = str(uuid.uuid4())
        self.auto_start = False
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, ns, name)
        self.history: list[tuple[int, str, str, str, dict[str, Any]]] = []  # rv, resource, ns, type, obj
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.deletions: list[dict[str, Any]] = []
        # every pod deletion: by a client (its gracePeriodSeconds) or by the garbage collector
        # of a cascading job delete, which passes no grace period (kubernetes/kubernetes#25055)
        self.pod_deletions: list[dict[str, Any]] = []
        self.forbid_pod_delete = False  # a role without `delete` on pods: 403
        # runs in the server's thread once a job and its pod exist, before the create's answer
        # (a test drives the pod while the client still waits on its create)
        self.during_create: Callable[[str], None] | None = None
        # resources whose watch streams deliver nothing for now: a namespace's pods and jobs
        # are two streams, so a client may see a job's end before its pod's news
        self.lagging: set[str] = set()
        self._rv = 0
        self._compacted = 0
        self._generation = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.logs = PodLogs(self, self._cond)  # the pods' output (kubernetes_logs.py)

    # -- server -----------------------------------------------------------------------------------

    def start(self) -> KubernetesFake:
        handler = type("BoundHandler", (Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }  # fmt: skip
        path.write_text(json.dumps(config))
        return path

    # -- state ------------------------------------------------------------------------------------

    def _emit(self, resource: str, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        """Store (or drop) an object under a new resourceVersion and wake the watches."""
        with self._cond:
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            key = (resource, namespace, obj["metadata"]["name"])
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.history.append((self._rv, resource, namespace, kind, copy.deepcopy(obj)))
            self._cond.notify_all()

    def _items(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in self.objects.items()
                if r == resource and ns == namespace
            ]

    def _job(self, name: str) -> dict[str, Any]:
        with self._cond:
            for (resource, _, job_name), obj in self.objects.items():
                if resource == "jobs" and job_name == name:
                    return obj
        raise KeyError(f"no job {name!r}")

    def pods_of(self, job: str) -> list[dict[str, Any]]:
        with self._cond:
            pods = [o for (r, _, _), o in self.objects.items() if r == "pods"]
            return [p for p in pods if p["metadata"]["labels"].get("job-name") == job]

    def _pod(self, job: str) -> dict[str, Any]:
        pods = self.pods_of(job)
        if not pods:
            raise KeyError(f"job {job!r} has no pod")
        return max(pods, key=lambda p: int(p["metadata"]["resourceVersion"]))

    def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (in the caller's thread) until `condition()` holds after some change; False
        when `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(condition, timeout)

    def list_jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        return self._items("jobs", namespace)

    def leftovers(self, namespace: str, job: str) -> list[str]:
        jobs = [f"job {job}" for j in self.list_jobs(namespace) if j["metadata"]["name"] == job]
        return jobs + [f"pod {p['metadata']['name']}" for p in self.pods_of(job)]

    # -- the job controller -----------------------------------------------------------------------

    def create_job(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if namespace not in self.namespaces:
            return 404, status_body(404, "NotFound", f'namespaces "{namespace}" not found')
        try:
            job = _as_stored(body, "V1Job")
        except ValueError as exc:
            return 422, status_body(422, "Invalid", f"Job.batch is invalid: {exc}")
        meta = job.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = meta.pop("generateName", "job-") + "".join(
                secrets.choice(_ALPHABET) for _ in range(5)
            )
        if ("jobs", namespace, meta["name"]) in self.objects:
            return 409, status_body(409, "AlreadyExists", f'jobs.batch "{meta["name"]}" already exists')
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        job["status"] = {}
        self._emit("jobs", namespace, "ADDED", job)
        self._new_pod(job)
        if self.during_create is not None:
            self.during_create(meta["name"])
        return 201, copy.deepcopy(job)

    def _new_pod(self, job: dict[str, Any]) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"]}  # fmt: skip
        name = f"{meta['name']}-{''.join(secrets.choice(_ALPHABET) for _ in range(5))}"
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "uid": str(uuid.uuid4()),
                         "labels": labels, "ownerReferences": [owner], "creationTimestamp": _now()},
            "spec": copy.deepcopy(template.get("spec") or {}),
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "startTime": _now(),
                       "containerStatuses": [self._container({"waiting": {"reason": "ContainerCreating"}})]},
        }  # fmt: skip
        self._emit("pods", meta["namespace"], "ADDED", pod)
        if self.auto_start:
            self.set_pod_phase(meta["name"], "Running")

    @staticmethod
    def _container(state: dict[str, Any]) -> dict[str, Any]:
        return {"name": _CONTAINER, "image": "image", "imageID": "", "ready": "running" in state,
                "restartCount": 0, "state": state}  # fmt: skip

    def _pod_ended(self, job_name: str, phase: str) -> None:
        """The job controller: count the pod, finish the job or start a replacement."""
        job = copy.deepcopy(self._job(job_name))
        status = job.setdefault("status", {})
        status["active"] = 0
        if phase == "Succeeded":
            status.update(succeeded=1, completionTime=_now())
            status["conditions"] = [{"type": "SuccessCriteriaMet", "status": "True"},
                                    {"type": "Complete", "status": "True"}]  # fmt: skip
            self._emit("jobs", job["metadata"]["namespace"], "MODIFIED", job)
            return
        status["failed"] = status.get("failed", 0) + 1
        limit = job["spec"].get("backoffLimit")
        if status["failed"] > (6 if limit is None else limit):
            message = "Job has reached the specified backoff limit"
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": message}]  # fmt: skip
            self._emit("jobs", job["metadata"]["namespace"], "MODIFIED", job)
        else:
            self._emit("jobs", job["metadata"]["namespace"], "MODIFIED", job)
            self._new_pod(job)

    def delete_job(self, namespace: str, name: str, policy: str, grace: Any) -> tuple[int, dict[str, Any]]:
        self.deletions.append({"namespace": namespace, "name": name, "propagationPolicy": policy,
                               "gracePeriodSeconds": grace})  # fmt: skip
        job = self.objects.get(("jobs", namespace, name))
        if job is None:
            return 404, status_body(404, "NotFound", f'jobs.batch "{name}" not found')
        job = copy.deepcopy(job)
        if policy == "Foreground":  # the job stays, marked, until its pods are gone
            job["metadata"].update(deletionTimestamp=_now(), finalizers=["foregroundDeletion"])
            self._emit("jobs", namespace, "MODIFIED", job)
        if policy != "Orphan":
            for pod in self.pods_of(name):
                self.pod_deletions.append({"name": pod["metadata"]["name"], "gracePeriodSeconds": None,
                                           "by": "garbage collector"})  # fmt: skip
                self._emit("pods", namespace, "DELETED", copy.deepcopy(pod))
        self._emit("jobs", namespace, "DELETED", copy.deepcopy(job))
        return 200, job

    def delete_pods(self, namespace: str, selector: str, grace: Any) -> list[dict[str, Any]]:
        """DELETE on the pods collection with a label selector (deletecollection)."""
        pods = [p for p in self._items("pods", namespace) if match_labels(p["metadata"]["labels"], selector)]
        for pod in pods:
            self.pod_deletions.append({"name": pod["metadata"]["name"], "gracePeriodSeconds": grace,
                                       "by": "client"})  # fmt: skip
            self._emit("pods", namespace, "DELETED", copy.deepcopy(pod))
        return pods

    # -- hooks that drive pod status -----------------------------------------------------------------

    def write_output(self, job: str, *lines: str, same_time: bool = False) -> None:
        """The job's newest pod prints `lines` (read back through the pod log endpoint)."""
        self.logs.write(self._pod(job)["metadata"]["name"], lines, same_time=same_time)

    def _update_pod(self, job: str, status: dict[str, Any]) -> dict[str, Any]:
        """A new status for the job's newest pod. The kubelet's `startTime` (set when it
        acknowledged the pod, before any image pull) stays; an unscheduled pod has none."""
        pod = copy.deepcopy(self._pod(job))
        scheduled = not any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in status.get("conditions") or ()
        )
        if scheduled:
            status = {"startTime": pod["status"].get("startTime") or _now(), **status}
        pod["status"] = status
        self._emit("pods", pod["metadata"]["namespace"], "MODIFIED", pod)
        return pod

    def set_pod_phase(self, job: str, phase: str, container_state: dict[str, Any] | None = None) -> None:
        """Running, Succeeded (exit 0 unless `container_state` says otherwise) or Failed (exit 1)."""
        if phase == "Running":
            state = container_state or {"running": {"startedAt": _now()}}
        elif phase == "Succeeded":
            state = container_state or {"terminated": {"exitCode": 0, "reason": "Completed"}}
        else:
            state = container_state or {"terminated": {"exitCode": 1, "reason": "Error"}}
        conditions = [{"type": "PodScheduled", "status": "True"}]
        self._update_pod(
            job, {"phase": phase, "conditions": conditions, "containerStatuses": [self._container(state)]}
        )
        if phase in ("Succeeded", "Failed"):
            self._pod_ended(job, phase)

    def waiting(
        self, job: str, reason: str = "ImagePullBackOff", message: str = "Back-off pulling image"
    ) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        conditions = [{"type": "PodScheduled", "status": "True"}]
        self._update_pod(
            job, {"phase": "Pending", "conditions": conditions, "containerStatuses": [self._container(state)]}
        )

    def unschedulable(self, job: str, message: str = "0/3 nodes are available: 3 Insufficient cpu.") -> None:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        self._update_pod(job, {"phase": "Pending", "conditions": [condition]})

    def evict(self, job: str, message: str = "The node was low on resource: memory.") -> None:
        state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}
        status = {"phase": "Failed", "reason": "Evicted", "message": message,
                  "containerStatuses": [self._container(state)]}  # fmt: skip
        self._update_pod(job, status)
        self._pod_ended(job, "Failed")

    def disrupt(self, job: str, reason: str, message: str, *, pod_reason: str | None = None) -> None:
        """Kubernetes ends the running pod itself: a `DisruptionTarget` condition (reason
        EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager, DeletionByPodGC,
        TerminationByKubelet), the container SIGTERMed (143), the pod Failed; node shutdown
        also sets the pod's reason Terminated (`pod_reason`)."""
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                     "lastTransitionTime": _now()}  # fmt: skip
        state = {
            "terminated": {"exitCode": 143, "reason": "Error", "startedAt": _now(), "finishedAt": _now()}
        }
        status = {"phase": "Failed", "conditions": [{"type": "PodScheduled", "status": "True"}, condition],
                  "containerStatuses": [self._container(state)]}  # fmt: skip
        if pod_reason:
            status.update(reason=pod_reason, message=message)
        self._update_pod(job, status)
        self._pod_ended(job, "Failed")

    def deadline_exceeded(self, job: str) -> None:
        """The job's activeDeadlineSeconds passed: the job controller terminates its active
        pods (the container, sent SIGTERM then SIGKILL, ends 137; the pod goes) and marks the
        job Failed with reason DeadlineExceeded, as the Job API documents."""
        namespace = self._job(job)["metadata"]["namespace"]
        state = {
            "terminated": {"exitCode": 137, "reason": "Error", "startedAt": _now(), "finishedAt": _now()}
        }
        status = {
            **self._pod(job)["status"],
            "phase": "Failed",
            "containerStatuses": [self._container(state)],
        }
        self._emit("pods", namespace, "DELETED", self._update_pod(job, status))
        failed = copy.deepcopy(self._job(job))
        status = failed.setdefault("status", {})
        status.update(active=0, failed=status.get("failed", 0) + 1)
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                 "message": "Job was active longer than specified deadline",
                                 "lastProbeTime": _now(), "lastTransitionTime": _now()}]  # fmt: skip
        self._emit("jobs", namespace, "MODIFIED", failed)

    def quota_exceeded(
        self, job: str, message: str = "exceeded quota: compute, requested: cpu=2, limited: cpu=1"
    ) -> None:
        """The job controller cannot create the pod: the pod goes, an event says why."""
        namespace = self._job(job)["metadata"]["namespace"]
        for pod in self.pods_of(job):
            self._emit("pods", namespace, "DELETED", copy.deepcopy(pod))
        event = {
            "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": "FailedCreate",
            "message": f'Error creating: pods "{job}-xxxxx" is forbidden: {message}', "lastTimestamp": _now(),
            "metadata": {"name": f"{job}.{secrets.token_hex(4)}", "namespace": namespace},
            "involvedObject": {"kind": "Job", "name": job, "namespace": namespace},
        }  # fmt: skip
        self._emit("events", namespace, "ADDED", event)

    def expire_watches(self) -> None:
        """Compact history: every open watch gets 410 Gone, resuming from before now too."""
        with self._cond:
            self._generation += 1
            self._compacted = self._rv + 1
            self._cond.notify_all()

    # -- watches --------------------------------------------------------------------------------------

    def watch_events(self, resource: str, namespace: str, query: dict[str, str]) -> Any:
        """Yield watch events (dicts) until timeoutSeconds, a 410, or the fake stops."""
        selector = query.get("labelSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 3600)
        with self._cond:
            generation = self._generation
            since = int(query.get("resourceVersion") or 0) if query.get("resourceVersion") else self._rv
            if query.get("resourceVersion") and since < self._compacted:
                yield {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}
                return
        while True:
            with self._cond:
                if self._generation != generation:
                    yield {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}
                    return
                entries = [e for e in self.history if e[0] > since and e[1] == resource and e[2] == namespace]
                if resource in self.lagging:
                    entries = []
                if not entries:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping:
                        return
                    self._cond.wait(min(remaining, 0.5))
                    continue
            for rv, _, _, kind, obj in entries:
                since = rv
                if match_labels(obj["metadata"].get("labels") or {}, selector):
                    yield {"type": kind, "object": obj}
