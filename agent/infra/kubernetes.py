"""The Kubernetes kind: a `kubernetes` pool or a Prefect 2 `kubernetes-job` block -> a batch/v1 Job.

Both sources become one `KubernetesConfig`: a base Job manifest plus the settings Prefect
applies on top of it (3.8.8 `KubernetesWorkerJobConfiguration.prepare_for_flow_run` with
prefect-kubernetes 0.8.0; 2.x `KubernetesJob._shortcut_customizations`). The payload is
`{"namespace": ns, "job": manifest}`, the manifest being exactly what `create_namespaced_job`
receives; agent/infra/kubernetes_manifest.py checks its shape and makes its names valid.

**Customizations target the Job manifest**, as in Prefect 2: `{"op": "add", "path":
"/spec/backoffLimit", "value": 2}`. They come from a block's `customizations` (a list or a
JSON string) or from a `customizations` key of a pool's resolved job configuration (present
only if the pool's template maps a variable to it). `customizations()` returns them
re-rooted under `/job`, to be applied to the payload after everything below.

Deviations from Prefect, for safety: the run's own labels (`prefect.io/flow-run-id`, ...)
win over user labels with the same key, because observers find the run's pods by them; a
label value that sanitises to nothing becomes "" (valid) instead of failing at the API; a
missing image is an error (without Prefect installed there is no version to pick a default
image from); a block's manifest gets the pool's label propagation to the pod template.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from agent.infra.container import (
    COMMON_HINTS,
    DEFAULT_COMMAND,
    merged_env,
    require_template_object,
    reroot,
    validate_fields,
)
from agent.infra.fields import Command, EnvHidingModel, EnvName, EnvValue, StreamOutput
from agent.infra.kubernetes_manifest import (
    COMMAND,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    base_manifest,
    check_container,
    check_name,
    generate_name,
    job_container,
    label_key,
    sanitize_labels,
)
from agent.infra.patch import parse_customizations
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError

__all__ = ["DEFAULT_COMMAND", "KubernetesConfig", "KubernetesKind", "KubernetesRuntime"]

_SIGTERM_ENV: Final = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"
_SECRETS_HIDDEN: Final = frozenset({"env", "command", "cluster_config", "job_manifest", "job"})


class KubernetesConfig(EnvHidingModel):
    """One Kubernetes Job to create: the base manifest and what goes on top of it.

    Fields left None keep what the manifest says. The repr shows env names only and leaves
    out the manifest and customizations (either may embed env values) and the cluster
    config (a kubeconfig holds tokens and keys).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_manifest: dict[str, Any] = Field(repr=False)  # its env may hold secrets
    namespace: str = "default"
    image: str | None = None
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] | None = None
    service_account_name: str | None = None
    finished_job_ttl: NonNegativeInt | None = None
    command: Command = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    # hard-coded Kubernetes env entries ({"name", "valueFrom"}), passed through as they are
    env_refs: tuple[dict[str, Any], ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    cluster_config: dict[str, Any] | None = Field(default=None, repr=False)
    job_watch_timeout_seconds: PositiveInt | None = None
    pod_watch_timeout_seconds: PositiveInt = 60
    stream_output: StreamOutput = True
    customizations: tuple[dict[str, Any], ...] = Field(default=(), repr=False)


@dataclass(frozen=True)
class KubernetesRuntime:
    """What the Kubernetes backend needs beyond the Job manifest."""

    # a kubernetes-cluster-config block ({"config": <kubeconfig>, "context_name": ...}): it
    # holds tokens and keys; None: the agent's own kubeconfig or in-cluster service account
    cluster_config: Mapping[str, Any] | None = field(repr=False)
    pod_watch_timeout_seconds: int  # from creation to a running pod
    job_watch_timeout_seconds: int | None  # from creation to the end; None: no limit
    stream_output: bool = True  # the flow container's pod log goes to the run's log


class KubernetesKind:
    """Kubernetes Jobs from `kubernetes` pools and `kubernetes-job` blocks."""

    kind: ClassVar[str] = "kubernetes"

    def config_from_pool(
        self, resolved: Mapping[str, Any], *, pool_type: str, source: str
    ) -> KubernetesConfig:
        require_template_object(resolved, "job configuration", source)
        if not isinstance(resolved.get("job_manifest"), Mapping):
            raise InfraError(
                f"job configuration from {source} has no 'job_manifest' object; reset the base job "
                "template with `prefect work-pool get-default-base-job-template --type kubernetes`",
                field="job_manifest",
                source=source,
            )
        data = {**resolved, "job_manifest": copy.deepcopy(dict(resolved["job_manifest"]))}
        data["env"], data["env_refs"] = _split_env(resolved.get("env"), source)
        data["customizations"] = parse_customizations(
            resolved.get("customizations"), field="customizations", source=source
        )
        config = _validate(data, source, "job variable")
        return _checked(config, "job_manifest", source)

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> KubernetesConfig:
        require_template_object(data, "block data", source)
        job = data.get("job")
        if job is not None and not isinstance(job, Mapping):
            raise InfraError(
                f"field 'job' from {source} must be a Job manifest object (got {type(job).__name__}, "
                "value hidden); give a batch/v1 Job manifest, or remove it for the default",
                field="job",
                source=source,
            )
        manifest = copy.deepcopy(dict(job)) if job else base_manifest()
        metadata = manifest.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        # Prefect 2 always replaced generateName with one made from the run's name
        metadata.pop("generateName", None)
        fields = {key: value for key, value in data.items() if value is not None and key != "job"}
        fields["job_manifest"] = manifest
        # the 2.x namespace: the block's, else the manifest's, else "default"; then written
        # into the manifest (the shortcut), so that the two always agree
        fields["namespace"] = data.get("namespace") or metadata.get("namespace") or "default"
        if isinstance(manifest.get("metadata"), dict):
            manifest["metadata"]["namespace"] = fields["namespace"]
        fields["env"], fields["env_refs"] = _split_env(data.get("env"), source)
        fields["customizations"] = parse_customizations(
            data.get("customizations"), field="customizations", source=source
        )
        return _checked(_validate(fields, source, "field"), "job", source)

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, KubernetesConfig), type(config)
        manifest = copy.deepcopy(config.job_manifest)
        manifest["metadata"].setdefault("namespace", config.namespace)
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        _apply_shortcuts(config, manifest, container)
        container["args"] = config.command or COMMAND.validate_python(container.get("args"))
        container["args"] = container["args"] or list(DEFAULT_COMMAND)
        container["env"] = _container_env(config, ctx, manifest["spec"], container.get("env"))
        _set_metadata(config, ctx, manifest)
        return {"namespace": config.namespace, "job": manifest}

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, KubernetesConfig), type(config)
        return reroot(config.customizations, "/job")

    def runtime(self, config: BaseModel) -> KubernetesRuntime:
        assert isinstance(config, KubernetesConfig), type(config)
        return KubernetesRuntime(
            cluster_config=config.cluster_config,
            pod_watch_timeout_seconds=config.pod_watch_timeout_seconds,
            job_watch_timeout_seconds=config.job_watch_timeout_seconds,
            stream_output=config.stream_output,
        )


# ---------------------------------------------------------------- building the payload


def _apply_shortcuts(config: KubernetesConfig, manifest: dict[str, Any], container: dict[str, Any]) -> None:
    """The block's shortcut fields (a pool has templated these into its manifest already)."""
    if config.image:
        container["image"] = config.image
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    if config.service_account_name:
        manifest["spec"]["template"]["spec"]["serviceAccountName"] = config.service_account_name
    if config.finished_job_ttl is not None:
        manifest["spec"]["ttlSecondsAfterFinished"] = config.finished_job_ttl


def _container_env(
    config: KubernetesConfig, ctx: RunContext, job_spec: dict[str, Any], template_env: Any
) -> list[dict[str, Any]]:
    """Ours first, then `valueFrom` refs, then the manifest's hard-coded entries we do not set."""
    env = merged_env(ctx.env, config.env)
    # Kubernetes retries the pod unless backoffLimit is 0, so the engine must then hand the
    # run back on SIGTERM ("relinquish"); with 0 it reschedules it (prefect-kubernetes 0.8.0)
    if job_spec.get("backoffLimit") == 0:
        env.setdefault(_SIGTERM_ENV, "reschedule")
    else:
        env[_SIGTERM_ENV] = "relinquish"
    entries: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in env.items()]
    entries += [copy.deepcopy(ref) for ref in config.env_refs if ref["name"] not in env]
    named = {entry["name"] for entry in entries}
    if isinstance(template_env, list):
        entries += [e for e in template_env if isinstance(e, Mapping) and e.get("name") not in named]
    return entries


def _set_metadata(config: KubernetesConfig, ctx: RunContext, manifest: dict[str, Any]) -> None:
    """Labels and annotations on the Job and its pod template, and the Job's generateName."""
    metadata = manifest["metadata"]
    pod_meta = manifest["spec"]["template"].setdefault("metadata", {})
    labels = {**config.labels, **_run_labels(ctx.labels)}
    metadata["labels"] = sanitize_labels({**metadata["labels"], **labels})
    pod_meta["labels"] = sanitize_labels({**(pod_meta.get("labels") or {}), **labels})
    annotations = {**metadata["annotations"], **config.annotations}
    metadata["annotations"] = {label_key(key, ""): value for key, value in annotations.items()}
    if metadata["annotations"]:
        pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **metadata["annotations"]}
    if not metadata.get("name"):
        name = config.name or ctx.flow_run_name
        metadata["generateName"] = generate_name(metadata.get("generateName"), name)


def _run_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The run's labels with prefect-kubernetes's `app.kubernetes.io/*` ones, in its order:
    managed-by, part-of and version after `prefect.io/version`; `name` after the flow's name,
    then the deployment's name in the same place (sanitized later, with the others)."""
    result: dict[str, str] = {}
    for key, value in labels.items():
        if key == "prefect.io/version":
            value = value.split("+")[0]
        result[key] = value
        versioned = "prefect.io/version" in labels
        if key == "prefect.io/version" or (key == "prefect.io/flow-run-name" and not versioned):
            result["app.kubernetes.io/managed-by"] = "prefect"
            result["app.kubernetes.io/part-of"] = "prefect"
            if versioned:
                result["app.kubernetes.io/version"] = value
        elif key in ("prefect.io/flow-name", "prefect.io/deployment-name"):
            result["app.kubernetes.io/name"] = value
    return result


# ---------------------------------------------------------------- validation

_HINTS: Final[dict[str, tuple[str, str]]] = {
    **COMMON_HINTS,
    "job_manifest": ("a Job manifest object", "reset the pool's base job template"),
    "job": ("a Job manifest object", "give a batch/v1 Job manifest, or remove it for the default"),
    "namespace": ("a namespace name", 'set it to a namespace such as "default"'),
    "image": ("an image reference", 'set it to an image such as "prefecthq/prefect:3-latest"'),
    "image_pull_policy": ("one of IfNotPresent, Always, Never", "use one of those words"),
    "service_account_name": ("a service account name or null", "set it to a string"),
    "finished_job_ttl": ("a number of seconds >= 0 or null", "give whole seconds"),
    "job_watch_timeout_seconds": ("a number of seconds > 0 or null", "give whole seconds"),
    "pod_watch_timeout_seconds": ("a number of seconds > 0", "give whole seconds, e.g. 60"),
    "cluster_config": ("a cluster config object", "point it at a kubernetes-cluster-config block"),
    "annotations": ("an object of string values", 'give annotations such as {"team": "data"}'),
}


def _validate(data: Mapping[str, Any], source: str, noun: str) -> KubernetesConfig:
    return validate_fields(
        KubernetesConfig, data, source=source, noun=noun, hints=_HINTS, hidden=_SECRETS_HIDDEN
    )


def _split_env(value: Any, source: str) -> tuple[Any, list[dict[str, Any]]]:
    """Prefect 3 also takes env as a Kubernetes list: name/value pairs and `valueFrom` refs."""
    if not isinstance(value, list):
        return ({} if value is None else value), []
    pairs: dict[str, Any] = {}
    refs: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InfraError(
                f"env[{index}] from {source} must be an object with a 'name' (value hidden); give env "
                'as {"NAME": "value"} or a list of {"name": ..., "value" or "valueFrom": ...} objects',
                field=f"env[{index}]",
                source=source,
            )
        if "valueFrom" in item:
            refs.append(dict(item))
        else:
            pairs[item["name"]] = item.get("value")
    return pairs, refs


def _checked(config: KubernetesConfig, field: str, source: str) -> KubernetesConfig:
    """Structure, names and quantities of the manifest: a bad one fails here, not at the API."""
    container = job_container(config.job_manifest, field, source)
    metadata = config.job_manifest["metadata"]
    check_name(config.namespace, DNS_LABEL, 63, "namespace", source)
    if metadata.get("namespace") not in (None, config.namespace):
        raise InfraError(
            f"{field}.metadata.namespace from {source} differs from namespace {config.namespace!r}; "
            "the Job is created in 'namespace': make them equal or remove the manifest's",
            field=f"{field}.metadata.namespace",
            source=source,
        )
    if metadata.get("name"):
        check_name(metadata["name"], DNS_LABEL, 63, f"{field}.metadata.name", source)
    pod_spec = config.job_manifest["spec"]["template"]["spec"]
    account = config.service_account_name or pod_spec.get("serviceAccountName")
    if account is not None:
        check_name(account, DNS_SUBDOMAIN, 253, "service_account_name", source)
    for key in (*config.labels, *config.annotations, *metadata["labels"], *metadata["annotations"]):
        label_key(key, source)
    if not (config.image or container.get("image")):
        raise InfraError(
            f"image from {source} is not set; set the 'image' job variable (or the block's image) to "
            'an image with Prefect 3 and your flow\'s dependencies, e.g. "prefecthq/prefect:3-latest"',
            field="image",
            source=source,
        )
    check_container(container, f"{field}.spec.template.spec.containers[0]", source)
    return config
