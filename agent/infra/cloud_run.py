"""The `cloud-run` infrastructure kind: a Cloud Run job, from a pool or a `cloud-run-job` block.

Pool type `cloud-run-v2` builds the body of `projects.locations.jobs.create` (Cloud Run
Admin API v2) as prefect-gcp's v2 worker does; pool type `cloud-run` and the Prefect 2
`CloudRunJob` block build the v1 (Knative-style) body of `namespaces.jobs.create`, as the
v1 worker and the block do. Payloads:

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

import copy
import json
import re
import shlex
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.infra.ecs import (
    DEFAULT_COMMAND,
    Origin,
    SecretDict,
    config_error,
    merged_env,
    stable_suffix,
    validate_model,
)
from agent.infra.patch import parse_customizations
from agent.infra.process import Command, EnvName, EnvValue
from agent.infra.spec import RunContext

__all__ = ["CloudRunConfig", "CloudRunKind"]

DEFAULT_IMAGE: Final = "docker.io/prefecthq/prefect:3-latest"
_REGION: Final = re.compile(r"^[a-z]+(?:-[a-z]+)+\d+$")
_MEMORY: Final = re.compile(r"^\d+(?:G|Gi|M|Mi)$")
_LABEL_UNSAFE: Final = re.compile(r"[^a-z0-9_-]")
_NAME_UNSAFE: Final = re.compile(r"[^a-z0-9-]+")
_MAX_LABELS: Final = 64
_SECRET_ENV: Final = {
    "prefect_api_key_secret": "PREFECT_API_KEY",
    "prefect_api_auth_string_secret": "PREFECT_API_AUTH_STRING",
}


class SecretKeySelector(BaseModel):
    """A Secret Manager secret version: `{"secret": "prefect-api-key", "version": "latest"}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: str
    version: str = "latest"


class CloudRunConfig(BaseModel):
    """One Cloud Run job: prefect-gcp's job configuration fields plus the resolved project.

    `credentials` (a `GcpCredentials` block's data) and `customizations` are left out of
    the repr and of `model_dump`; the backend reads them as attributes.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    api: Literal["v1", "v2"] = "v2"
    origin: Origin = "pool"
    region: str
    project: str
    credentials: SecretDict = None
    job_body: dict[str, Any] = Field(repr=False)
    command: Command = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, repr=False)
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    env_from_secrets: dict[str, SecretKeySelector] = Field(default_factory=dict)
    prefect_api_key_secret: SecretKeySelector | None = None
    prefect_api_auth_string_secret: SecretKeySelector | None = None
    cloudsql_instances: list[str] = Field(default_factory=list)
    keep_job: bool = False
    timeout: int = Field(default=600, gt=0, le=604800)
    customizations: list[dict[str, Any]] = Field(default_factory=list, repr=False, exclude=True)
    customizations_field: str = "customizations"


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


class CloudRunKind:
    """The Cloud Run kind: configuration from either source, and the jobs.create payload."""

    kind: ClassVar[str] = "cloud-run"
    pool_types: ClassVar[tuple[str, ...]] = ("cloud-run-v2", "cloud-run")
    block_slug: ClassVar[str] = "cloud-run-job"

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> CloudRunConfig:
        if not isinstance(resolved, Mapping):
            raise config_error(
                f"job configuration of {source} must be an object", "job_configuration", source
            )
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
        if not isinstance(data, Mapping):
            raise config_error(f"block data of {source} must be an object", "block_data", source)
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
            timeout=block.timeout or 600,
        )
        _check(config, source, "block field")
        return config

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, CloudRunConfig)
        body = copy.deepcopy(config.job_body)
        labels = _sanitize_labels({**ctx.labels, **config.labels})
        name = config.name or ctx.flow_run_name
        if config.api == "v2":
            _prepare_v2(config, body, ctx, labels)
            job_id = f"{_slug_name(name, 63 - 1 - 7)}-{stable_suffix(ctx.flow_run_id, 7)}"
            return {
                "job": body,
                "job_id": job_id,
                "parent": f"projects/{config.project}/locations/{config.region}",
            }
        _prepare_v1(config, body, ctx, labels)
        if "name" not in body["metadata"]:
            limit = 17 if config.origin == "block" else 30
            body["metadata"]["name"] = f"{_slug_name(_v1_base_name(config, name), limit)}-" + stable_suffix(
                ctx.flow_run_id, 32
            )
        return {
            "job": body,
            "parent": f"namespaces/{config.project}",
            "endpoint": f"https://{config.region}-run.googleapis.com",
        }

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, CloudRunConfig)
        ops = []
        for op in config.customizations:
            op = dict(op)
            for key in ("path", "from"):
                if isinstance(op.get(key), str):
                    op[key] = "/job" + op[key]
            ops.append(op)
        return ops


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


def _containers(config: CloudRunConfig) -> Any:
    body = config.job_body
    try:
        if config.api == "v2":
            return body["template"]["template"]["containers"]
        return body["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError):
        return None


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
    containers = _containers(config)
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


def _v1_base_name(config: CloudRunConfig, name: str) -> str:
    if config.origin != "block":
        return name
    # CloudRunJob named jobs after the image: "gcr.io/p/repo:tag" -> "repo-tag"
    image = _containers(config)[0].get("image", "")
    return image.split("/")[2] if image.count("/") >= 2 else image.rsplit("/", 1)[-1]


def _env_entries(config: CloudRunConfig, ctx: RunContext) -> list[dict[str, Any]]:
    env = merged_env(ctx.env, config.env)
    for option, variable in _SECRET_ENV.items():
        if getattr(config, option) or variable in config.env_from_secrets:
            env.pop(variable, None)  # provided by Secret Manager instead
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    secrets = dict(config.env_from_secrets)
    for option, variable in _SECRET_ENV.items():
        if getattr(config, option):
            secrets[variable] = getattr(config, option)
    for variable, ref in secrets.items():
        if config.api == "v2":
            entries.append({"name": variable, "valueSource": {"secretKeyRef": ref.model_dump()}})
        else:
            key_ref = {"name": ref.secret, "key": ref.version}
            entries.append({"name": variable, "valueFrom": {"secretKeyRef": key_ref}})
    return entries


def _command_and_args(config: CloudRunConfig, container: dict[str, Any]) -> None:
    command = container.get("command")
    if command is None:
        container["command"] = list(config.command or DEFAULT_COMMAND)
    elif isinstance(command, str):
        container["command"] = shlex.split(command)
    if isinstance(container.get("args"), str):
        container["args"] = shlex.split(container["args"])
    container.setdefault("image", DEFAULT_IMAGE)


def _prepare_v2(
    config: CloudRunConfig, body: dict[str, Any], ctx: RunContext, labels: dict[str, str]
) -> None:
    """`CloudRunWorkerJobV2Configuration.prepare_for_flow_run`, in the same order."""
    template = body["template"]["template"]
    container = template["containers"][0]
    container.setdefault("env", []).extend(_env_entries(config, ctx))
    body["labels"] = _merge_labels(labels, body.get("labels") or {})
    body["template"]["labels"] = _merge_labels(labels, body["template"].get("labels") or {})
    if config.cloudsql_instances:
        volume = {"name": "cloudsql", "cloudSqlInstance": {"instances": list(config.cloudsql_instances)}}
        template.setdefault("volumes", []).append(volume)
        container.setdefault("volumeMounts", []).append({"name": "cloudsql", "mountPath": "/cloudsql"})
    _command_and_args(config, container)
    template["timeout"] = f"{config.timeout}s"
    vpc_access = template.get("vpcAccess", {})
    if "vpcAccess" in template and (not vpc_access or vpc_access == {"connector": None}):
        del template["vpcAccess"]


def _prepare_v1(
    config: CloudRunConfig, body: dict[str, Any], ctx: RunContext, labels: dict[str, str]
) -> None:
    """`CloudRunWorkerJobConfiguration.prepare_for_flow_run` (and `CloudRunJob`'s body)."""
    container = body["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = _env_entries(config, ctx)
    metadata = body.setdefault("metadata", {})
    metadata["labels"] = _merge_labels(labels, metadata.get("labels") or {})
    execution = body["spec"]["template"].setdefault("metadata", {})
    execution["labels"] = _merge_labels(labels, execution.get("labels") or {})
    _command_and_args(config, container)


def _sanitize_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """GCP label rules as prefect-gcp applies them: [a-z0-9_-], keys start with a letter, <= 63."""
    sanitized: dict[str, str] = {}
    for key, value in labels.items():
        safe_key = re.sub(r"^[^a-z]+", "", _LABEL_UNSAFE.sub("-", key.lower()))[:63]
        if safe_key:
            sanitized[safe_key] = _LABEL_UNSAFE.sub("-", str(value).lower())[:63]
    return sanitized


def _merge_labels(prefect_labels: dict[str, str], existing: Mapping[str, Any]) -> dict[str, Any]:
    # the template's own labels win and are never dropped; Cloud Run allows 64 labels
    merged = {**prefect_labels, **existing}
    ours = [key for key in prefect_labels if key not in existing]
    excess = len(merged) - _MAX_LABELS
    for key in ours[len(ours) - excess :] if excess > 0 else []:
        del merged[key]  # the last ones (least useful, e.g. worker-name) go first
    return merged


def _slug_name(name: str, max_length: int) -> str:
    """python-slugify as prefect-gcp's `slugify_name` uses it; "prefect" if nothing is left."""
    slug = _NAME_UNSAFE.sub("-", name.lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)[:max_length].strip("-")
    return slug or "prefect"
