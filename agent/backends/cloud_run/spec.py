"""The job to create, read from the kind's payload; v1 (Knative) bodies translated to v2.

Pool type `cloud-run` and the Prefect 2 `CloudRunJob` block give a v1 body for
`namespaces.jobs.create`. A Cloud Run job is one resource whichever API version manages
it, so instead of a second client (the v1 API has no `google-cloud-run` client) the body
is translated to the v2 `Job` and sent through the same v2 calls. The translation is
explicit: a container field it does not know fails the launch naming the field, rather
than being dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.backends.base import LaunchError

__all__ = ["JobSpec", "job_spec"]

_V2_PARENT: Final = re.compile(r"^projects/[^/]+/locations/[a-z0-9-]+$")
_V1_ENDPOINT: Final = re.compile(r"^https://(?P<region>[a-z0-9-]+)-run\.googleapis\.com/?$")
_FLOW_RUN_LABEL: Final = "prefect-io-flow-run-id"
# v1 container fields with the same name and shape in v2
_SAME: Final = ("name", "image", "command", "args", "workingDir", "ports", "volumeMounts")


@dataclass(frozen=True)
class JobSpec:
    parent: str  # projects/P/locations/R
    job_id: str
    body: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.parent}/jobs/{self.job_id}"

    @property
    def flow_run_label(self) -> str | None:
        """The run id label the kind put on the job: how a 409 tells our job from another."""
        value = (self.body.get("labels") or {}).get(_FLOW_RUN_LABEL)
        return value if isinstance(value, str) else None

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Whether an existing job with these labels is this run's (a 409 on create, a lookup):
        its flow-run label is the payload's; without one in the payload, the run-derived
        job name is the only evidence there is."""
        return self.flow_run_label is None or labels.get(_FLOW_RUN_LABEL) == self.flow_run_label


def job_spec(payload: Mapping[str, Any]) -> JobSpec:
    body = payload.get("job")
    if not isinstance(body, Mapping):
        raise LaunchError("the Cloud Run payload has no job body; check the pool's base job template")
    if "job_id" in payload:
        parent, job_id = str(payload.get("parent", "")), str(payload["job_id"])
        if not _V2_PARENT.match(parent):
            raise LaunchError(f"the Cloud Run parent must be projects/P/locations/R, got {parent[:80]!r}")
        return JobSpec(parent, job_id, dict(body))
    return _from_v1(payload, body)


def _from_v1(payload: Mapping[str, Any], body: Mapping[str, Any]) -> JobSpec:
    parent, endpoint = str(payload.get("parent", "")), str(payload.get("endpoint", ""))
    match = _V1_ENDPOINT.match(endpoint)
    if not parent.startswith("namespaces/") or not match:
        raise LaunchError(
            "the Cloud Run v1 payload needs parent namespaces/P and endpoint https://R-run.googleapis.com"
        )
    metadata = body.get("metadata") or {}
    job_id = metadata.get("name")
    if not isinstance(job_id, str) or not job_id:
        raise LaunchError("the Cloud Run v1 job body has no metadata.name")
    project = parent.removeprefix("namespaces/")
    spec = JobSpec(f"projects/{project}/locations/{match['region']}", job_id, v2_body(body))
    return spec


def v2_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 `Job` (metadata/spec.template.spec.template.spec) as the v2 `Job` body."""
    try:
        metadata = body.get("metadata") or {}
        execution = body["spec"]["template"]
        task = execution["spec"]["template"]["spec"]
        containers = task["containers"]
    except (KeyError, TypeError):
        raise LaunchError(
            "the Cloud Run v1 job body has no spec.template.spec.template.spec.containers"
        ) from None
    annotations = {
        **(metadata.get("annotations") or {}),
        **((execution.get("metadata") or {}).get("annotations") or {}),
    }
    template: dict[str, Any] = {"containers": [_container(c, i) for i, c in enumerate(containers)]}
    if task.get("timeoutSeconds") is not None:
        template["timeout"] = f"{int(task['timeoutSeconds'])}s"
    if task.get("maxRetries") is not None:
        template["maxRetries"] = int(task["maxRetries"])
    if task.get("serviceAccountName"):
        template["serviceAccount"] = task["serviceAccountName"]
    if annotations.get("run.googleapis.com/vpc-access-connector"):
        template["vpcAccess"] = {"connector": annotations["run.googleapis.com/vpc-access-connector"]}
    execution_template: dict[str, Any] = {"template": template}
    for key in ("parallelism", "taskCount"):
        if (execution.get("spec") or {}).get(key) is not None:
            execution_template[key] = int(execution["spec"][key])
    if (execution.get("metadata") or {}).get("labels"):
        execution_template["labels"] = dict(execution["metadata"]["labels"])
    result: dict[str, Any] = {"template": execution_template}
    if metadata.get("labels"):
        result["labels"] = dict(metadata["labels"])
    if annotations.get("run.googleapis.com/launch-stage"):
        result["launchStage"] = annotations["run.googleapis.com/launch-stage"]
    return result


def _container(container: Mapping[str, Any], index: int) -> dict[str, Any]:
    unknown = sorted(set(container) - {*_SAME, "env", "resources"})
    if unknown:
        raise LaunchError(
            f"containers[{index}] has fields flow-agent cannot send to Cloud Run ({', '.join(unknown)}); "
            "use a cloud-run-v2 work pool for them"
        )
    result = {key: container[key] for key in _SAME if container.get(key) is not None}
    env = [_env(entry) for entry in container.get("env") or []]
    if env:
        result["env"] = env
    limits = {
        k: v for k, v in ((container.get("resources") or {}).get("limits") or {}).items() if v is not None
    }
    if limits:  # v2 has limits only; v1 requests equal them in Prefect's bodies
        result["resources"] = {"limits": limits}
    return result


def _env(entry: Mapping[str, Any]) -> dict[str, Any]:
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    if ref:  # v1 {name: secret, key: version} -> v2 {secret, version}
        return {
            "name": entry["name"],
            "valueSource": {"secretKeyRef": {"secret": ref["name"], "version": ref.get("key", "latest")}},
        }
    return {"name": entry["name"], "value": entry.get("value", "")}
