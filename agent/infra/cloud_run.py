"""The `cloud-run` infrastructure kind: a Cloud Run job, from a pool or a `cloud-run-job` block.

Pool type `cloud-run-v2` builds the body of `projects.locations.jobs.create` (Cloud Run
Admin API v2) as prefect-gcp's v2 worker does; pool type `cloud-run` and the Prefect 2
`CloudRunJob` block build the v1 (Knative-style) body of `namespaces.jobs.create`, as the
v1 worker and the block do (built in agent/infra/cloud_run_payload.py). Payloads:

    v2: {"job": <Job body>, "job_id": <name>, "parent": "projects/P/locations/R"}
    v1: {"job": <Job body, name in metadata.name>, "parent": "namespaces/P",
         "endpoint": "https://R-run.googleapis.com"}

Deviations from prefect-gcp:
* the job name ends in digits derived from the flow run id instead of random ones, so a
  create retried after a lost response meets 409 instead of making a second job;
* the project must be known without I/O: job variable / block field `project`, else
  `credentials.project`, else `credentials.service_account_info.project_id` (Prefect also
  reads key files and Application Default Credentials);
* the region must look like a region (`us-central1`): it becomes part of a URL;
* without an image, `docker.io/prefecthq/prefect:3-latest` (Prefect picks the image of its
  own version, which flow-agent does not have).

Customizations (RFC 6902): pools only, job variable `customizations` (add `"customizations":
"{{ customizations }}"` to the pool's `job_configuration`); paths address the job body as
written in `job_body` (`/template/template/containers/0/...` in v2, `/spec/...` in v1) and
are returned rewritten against the payload (`/job/...`). `CloudRunJob` had none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.infra.cloud_run_payload import CloudRunConfig, build_payload, job_containers
from agent.infra.container import SecretDict, config_error, require_object, reroot, validate_model
from agent.infra.fields import Command, EnvName, EnvValue
from agent.infra.patch import parse_customizations
from agent.infra.spec import RunContext

__all__ = ["CloudRunConfig", "CloudRunKind", "CloudRunRuntime"]

_REGION: Final = re.compile(r"^[a-z]+(?:-[a-z]+)+\d+$")
_MEMORY: Final = re.compile(r"^\d+(?:G|Gi|M|Mi)$")


class _CloudRunJobBlock(BaseModel):
    """A Prefect 2 `CloudRunJob` block's data: field names and defaults of prefect-gcp 0.5."""

    model_config = ConfigDict(extra="ignore")

    image: str
    region: str
    credentials: SecretDict = None
    project: str | None = None
    cpu: int | None = Field(default=None, gt=0)
    memory: int | None = Field(default=None, gt=0)
    memory_unit: Literal["G", "Gi", "M", "Mi"] | None = None
    vpc_connector_name: str | None = None
    args: list[str] | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    command: Command = None
    keep_job: bool | None = False
    stream_output: bool | None = None  # flow-agent's: Cloud Logging entries to the run's logs
    timeout: int | None = Field(default=600, gt=0, le=3600)
    max_retries: int | None = Field(default=3, ge=0, le=10)


_FIXES: Final = {
    "region": "set region to a Cloud Run region such as us-central1",
    "image": "set image to a container image in Artifact Registry, e.g. us-docker.pkg.dev/p/r/flows:1",
    "cpu": "give whole CPUs as an integer such as 1",
    "memory": "give memory as an integer together with memory_unit",
    "memory_unit": "use one of G, Gi, M, Mi",
    "timeout": "give seconds as an integer: at most 604800 (cloud-run-v2) or 3600 (cloud-run, blocks)",
    "max_retries": "give an integer from 0 to 10",
    "env": 'give env as an object such as {"NAME": "value"}',
    "env_from_secrets": 'give {"NAME": {"secret": "secret-name", "version": "latest"}}',
    "job_body": "fix the work pool's base job template",
    "credentials": "reference a GcpCredentials block",
}
_HIDDEN: Final = frozenset({"env", "command", "credentials", "job_body"})


@dataclass(frozen=True)
class CloudRunRuntime:
    """What the Cloud Run backend needs beyond the payload."""

    credentials: Mapping[str, Any] | None = field(default=None, repr=False)  # GcpCredentials data
    keep_job: bool = False  # leave the per-run job in place when the run ends
    timeout: int | None = None  # the job's task timeout (s): the start deadline, and named in messages
    stream_output: bool = False  # ship the execution's output (Cloud Logging entries) to the run's logs


class CloudRunKind:
    """The Cloud Run kind: configuration from either source, and the jobs.create payload."""

    kind: ClassVar[str] = "cloud-run"

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> CloudRunConfig:
        require_object(resolved, "job configuration", source)
        api = "v1" if pool_type == "cloud-run" else "v2"
        data = {**resolved, "api": api, "origin": "pool"}
        data["project"] = _project(resolved, source, "job variable")
        data["customizations"] = parse_customizations(
            resolved.get("customizations"), field="customizations", source=source
        )
        config = validate_model(CloudRunConfig, data, source=source, fixes=_FIXES, hidden=_HIDDEN)
        _check(config, source, "job variable")
        return config

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> CloudRunConfig:
        require_object(data, "block data", source)
        block = validate_model(
            _CloudRunJobBlock, data, source=source, fixes=_FIXES, hidden=_HIDDEN, what="block field"
        )
        if (block.memory is None) != (block.memory_unit is None):
            raise config_error(
                f"block fields 'memory' and 'memory_unit' from {source} must be given together; "
                "set both (e.g. 512 and Mi) or neither",
                "memory_unit",
                source,
            )
        config = CloudRunConfig(
            api="v1",
            origin="block",
            region=block.region,
            project=_project(data, source, "block field"),
            credentials=block.credentials,
            job_body=_v1_block_body(block),
            command=block.command,
            env=block.env,
            labels=block.labels,
            name=block.name,
            keep_job=bool(block.keep_job),
            stream_output=bool(block.stream_output),
            timeout=block.timeout or 600,
        )
        _check(config, source, "block field")
        return config

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, CloudRunConfig)
        return build_payload(config, ctx)

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, CloudRunConfig)
        return reroot(config.customizations, "/job")

    def runtime(self, config: BaseModel) -> CloudRunRuntime:
        assert isinstance(config, CloudRunConfig)
        return CloudRunRuntime(config.credentials, config.keep_job, config.timeout, config.stream_output)


def _project(data: Mapping[str, Any], source: str, what: str) -> str:
    """Project id: explicit, else the credentials' project, else the key's project_id."""
    credentials = data.get("credentials")
    credentials = credentials if isinstance(credentials, Mapping) else {}
    info = credentials.get("service_account_info")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            info = None
    info = info if isinstance(info, Mapping) else {}
    for candidate in (data.get("project"), credentials.get("project"), info.get("project_id")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    raise config_error(
        f"{what} 'project' from {source} is missing: no project in the job configuration, in "
        "credentials.project or in the service account info; set credentials.project on the "
        "GcpCredentials block (flow-agent does not read key files or default credentials here)",
        "project",
        source,
    )


def _check(config: CloudRunConfig, source: str, what: str) -> None:
    if not _REGION.match(config.region):
        raise config_error(
            f"{what} 'region' from {source} is not a Cloud Run region (got {config.region[:40]!r}); "
            + _FIXES["region"],
            "region",
            source,
        )
    if config.api == "v1" and config.timeout > 3600:
        raise config_error(
            f"{what} 'timeout' from {source} exceeds 3600; {_FIXES['timeout']}", "timeout", source
        )
    containers = job_containers(config)
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        where = "template.template.containers" if config.api == "v2" else "spec...spec.containers"
        raise config_error(
            f"job_body from {source} has no container at {where}[0]; {_FIXES['job_body']}", "job_body", source
        )
    memory = (containers[0].get("resources") or {}).get("limits", {}).get("memory")
    if memory is not None and not (isinstance(memory, str) and _MEMORY.match(memory)):
        raise config_error(
            f"{what} 'memory' from {source} must be a number with a unit G, Gi, M or Mi (got "
            f"{str(memory)[:20]!r}); use e.g. 512Mi",
            "memory",
            source,
        )


def _v1_block_body(block: _CloudRunJobBlock) -> dict[str, Any]:
    """`CloudRunJob._jobs_body()` minus the name, env and command added per run."""
    container: dict[str, Any] = {"image": block.image.strip()}
    resources: dict[str, dict[str, str]] = {"limits": {}, "requests": {}}
    if block.cpu is not None:
        resources["limits"]["cpu"] = resources["requests"]["cpu"] = f"{block.cpu * 1000}m"
    if block.memory is not None:
        resources["limits"]["memory"] = resources["requests"]["memory"] = f"{block.memory}{block.memory_unit}"
    if resources["requests"]:
        container["resources"] = resources
    if block.args:
        container["args"] = list(block.args)
    annotations = {"run.googleapis.com/launch-stage": "BETA"}
    if block.vpc_connector_name:
        annotations["run.googleapis.com/vpc-access-connector"] = block.vpc_connector_name
    task_spec = {"containers": [container], "timeoutSeconds": str(block.timeout or 600)}
    task_spec["maxRetries"] = block.max_retries if block.max_retries is not None else 3
    return {
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {},
        "spec": {
            "template": {"metadata": {"annotations": annotations}, "spec": {"template": {"spec": task_spec}}}
        },
    }
