"""The Cloud Run payload: `CloudRunConfig` (one job, however configured) and the body built from it.

`build_payload` follows prefect-gcp's `prepare_for_flow_run` (v2 worker, v1 worker and the
`CloudRunJob` block) without I/O; agent/infra/cloud_run.py documents the payload and its
deviations, and makes a `CloudRunConfig` from a pool or a block.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.infra.container import DEFAULT_COMMAND, Origin, SecretDict, merged_env, stable_suffix
from agent.infra.fields import Command, EnvName, EnvValue
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError

__all__ = ["DEFAULT_IMAGE", "CloudRunConfig", "SecretKeySelector", "build_payload", "job_containers"]

DEFAULT_IMAGE: Final = "docker.io/prefecthq/prefect:3-latest"
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
    the repr and of `model_dump`; the backend gets the credentials in `CloudRunRuntime`.
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
    stream_output: bool = False  # ship the execution's output (Cloud Logging) to the run's logs
    customizations: list[dict[str, Any]] = Field(default_factory=list, repr=False, exclude=True)
    customizations_field: str = "customizations"


def build_payload(config: CloudRunConfig, ctx: RunContext) -> dict[str, Any]:
    """v2: `{"job", "job_id", "parent"}`; v1: `{"job", "parent", "endpoint"}` (see cloud_run.py)."""
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


def job_containers(config: CloudRunConfig) -> Any:
    """The body's container list (v2 or v1 path), or None when the body has none there."""
    body = config.job_body
    try:
        if config.api == "v2":
            return body["template"]["template"]["containers"]
        return body["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError):
        return None


def _v1_base_name(config: CloudRunConfig, name: str) -> str:
    if config.origin != "block":
        return name
    # CloudRunJob named jobs after the image: "gcr.io/p/repo:tag" -> "repo-tag"
    image = job_containers(config)[0].get("image", "")
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


def _split(value: str, field: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:  # unbalanced quotes: the run fails with a message, not a traceback
        raise InfraError(
            f"job variable {field!r} is not a valid command line ({exc}); balance its quotes",
            field=field,
        ) from None


def _command_and_args(config: CloudRunConfig, container: dict[str, Any]) -> None:
    command = container.get("command")
    if command is None:
        container["command"] = list(config.command or DEFAULT_COMMAND)
    elif isinstance(command, str):
        container["command"] = _split(command, "command")
    if isinstance(container.get("args"), str):
        container["args"] = _split(container["args"], "args")
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
