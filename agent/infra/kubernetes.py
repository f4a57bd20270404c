"""The Kubernetes kind: a `kubernetes` pool or a Prefect 2 `kubernetes-job` block -> a batch/v1 Job.

Both sources become one `KubernetesConfig`: a base Job manifest plus the settings Prefect
applies on top of it (3.8.8 `KubernetesWorkerJobConfiguration.prepare_for_flow_run` with
prefect-kubernetes 0.8.0; 2.x `KubernetesJob._shortcut_customizations`). The payload is
`{"namespace": ns, "job": manifest}`, the manifest being exactly what `create_namespaced_job`
receives.

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
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from agent.infra.patch import parse_customizations
from agent.infra.process import _CUSTOM, Command, EnvName, EnvValue, StreamOutput, _describe, _path
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError, find_placeholders

__all__ = ["DEFAULT_COMMAND", "KubernetesConfig", "KubernetesKind"]

DEFAULT_COMMAND: Final = ("prefect", "flow-run", "execute")
_CONTAINER: Final = "prefect-job"
_SIGTERM_ENV: Final = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"
_PULL_POLICIES: Final = ("IfNotPresent", "Always", "Never")
_SECRETS_HIDDEN: Final = frozenset({"env", "command", "cluster_config", "job_manifest", "job"})
_COMMAND: Final = TypeAdapter(Command)


def _base_manifest() -> dict[str, Any]:
    """Prefect 2's `KubernetesJob.base_job_manifest()`: a block without `job` starts here."""
    pod_spec = {"parallelism": 1, "completions": 1, "restartPolicy": "Never"}
    pod_spec["containers"] = [{"name": _CONTAINER, "env": []}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"labels": {}},
            "spec": {"template": {"spec": pod_spec}}}  # fmt: skip


class KubernetesConfig(BaseModel):
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

    def __repr_args__(self) -> Any:
        for field, value in super().__repr_args__():
            yield field, ({key: "<hidden>" for key in value} if field == "env" else value)


class KubernetesKind:
    """Kubernetes Jobs from `kubernetes` pools and `kubernetes-job` blocks."""

    kind: ClassVar[str] = "kubernetes"
    pool_types: ClassVar[tuple[str, ...]] = ("kubernetes",)
    block_slug: ClassVar[str] = "kubernetes-job"

    def config_from_pool(
        self, resolved: Mapping[str, Any], *, pool_type: str, source: str
    ) -> KubernetesConfig:
        _require_mapping(resolved, "job configuration", source)
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
        _require_mapping(data, "block data", source)
        job = data.get("job")
        if job is not None and not isinstance(job, Mapping):
            raise InfraError(
                f"field 'job' from {source} must be a Job manifest object (got {type(job).__name__}, "
                "value hidden); give a batch/v1 Job manifest, or remove it for the default",
                field="job",
                source=source,
            )
        manifest = copy.deepcopy(dict(job)) if job else _base_manifest()
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
        container["args"] = config.command or _COMMAND.validate_python(container.get("args"))
        container["args"] = container["args"] or list(DEFAULT_COMMAND)
        container["env"] = _container_env(config, ctx, manifest["spec"], container.get("env"))
        _set_metadata(config, ctx, manifest)
        return {"namespace": config.namespace, "job": manifest}

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, KubernetesConfig), type(config)
        return _reroot(config.customizations, "/job")


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
    env = {**ctx.env, **config.env}
    env = {name: value for name, value in env.items() if value is not None}
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
    labels = {**config.labels, **ctx.labels}
    metadata["labels"] = _labels({**metadata["labels"], **labels})
    pod_meta["labels"] = _labels({**(pod_meta.get("labels") or {}), **labels})
    annotations = {**metadata["annotations"], **config.annotations}
    metadata["annotations"] = {_label_key(key, ""): value for key, value in annotations.items()}
    if metadata["annotations"]:
        pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **metadata["annotations"]}
    if not metadata.get("name"):
        name = config.name or ctx.flow_run_name
        metadata["generateName"] = _generate_name(metadata.get("generateName"), name)


def _generate_name(current: Any, name: str) -> str:
    """The manifest's generateName made valid, or one from the job's (else the run's) name."""
    # "{{ name }}-" renders "-" (or "None-") for a pool without a name: Prefect replaces those.
    # A name with spaces or capitals ("Nightly ETL-") is slugified, where Prefect sends it as
    # it is and the API rejects the Job.
    usable = isinstance(current, str) and current.strip("-") and current != "None-"
    if usable and not find_placeholders(current):
        name = current
    return (_slug(name) or "prefect-job") + "-"


def _reroot(operations: tuple[dict[str, Any], ...], root: str) -> list[dict[str, Any]]:
    """Operations written against the manifest, moved under `root` of the payload."""
    rerooted = []
    for op in operations:
        moved = {**copy.deepcopy(op), "path": root + op["path"]}
        if isinstance(op.get("from"), str):
            moved["from"] = root + op["from"]
        rerooted.append(moved)
    return rerooted


# ---------------------------------------------------------------- Kubernetes names

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUANTITY: Final = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i|[numkMGTPE])?")


def _slug(
    text: str, *, allowed: str = "a-z0-9-", limit: int = 45, lower: bool = True, strip: str = "-"
) -> str:
    """python-slugify as Prefect calls it: ASCII only, runs of other characters -> "-"."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().replace("'", "")
    text = re.sub(rf"[^{allowed}]+", "-", text.lower() if lower else text)
    return re.sub(r"-{2,}", "-", text).strip("-")[:limit].strip(strip)


def _label_key(key: str, source: str) -> str:
    """`prefix/name` as Kubernetes wants it; a key that cannot be made valid is an error."""
    prefix, _, name = key.partition("/") if "/" in key else ("", "", key)
    name = _slug(name, allowed="a-zA-Z0-9_.-", limit=63, lower=False, strip="_-.")
    prefix = _slug(prefix, allowed="a-z0-9.-", limit=253, strip="_-.") if prefix else ""
    if not name or not _LABEL_NAME.fullmatch(name) or (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise InfraError(
            f"label or annotation key {key!r} from {source or 'the run'} cannot be made a valid "
            "Kubernetes key; use letters, digits, '-', '_', '.' with an optional 'dns.prefix/'",
            field="labels",
            source=source,
        )
    return f"{prefix}/{name}" if prefix else name


def _labels(labels: Mapping[str, Any]) -> dict[str, str]:
    # an empty label value is valid, a value that sanitises to nothing becomes one
    clean = lambda v: _slug(str(v), allowed="a-zA-Z0-9_.-", limit=63, lower=False, strip="_-.")  # noqa: E731
    return {_label_key(key, ""): clean(value) for key, value in labels.items()}


def _check_name(value: Any, pattern: re.Pattern[str], limit: int, field: str, source: str) -> None:
    if not (isinstance(value, str) and len(value) <= limit and pattern.fullmatch(value)):
        shown = repr(value) if isinstance(value, str) and len(value) <= 80 else type(value).__name__
        raise InfraError(
            f"{field} from {source} is not a valid Kubernetes name (got {shown}); use at most "
            f"{limit} lowercase letters, digits and '-', starting and ending with a letter or digit",
            field=field,
            source=source,
        )


def _check_quantity(value: Any, field: str, source: str) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) or (isinstance(value, str) and _QUANTITY.fullmatch(value))
    ):
        raise InfraError(
            f"{field} from {source} is not a Kubernetes quantity (got {_describe(value, False)}); "
            "write CPU as '500m' or '2' and memory as '512Mi' or '4Gi'",
            field=field,
            source=source,
        )


# ---------------------------------------------------------------- validation

_HELP: Final[dict[str, tuple[str, str]]] = {
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
    "command": ("a command line string or a list of strings", "leave it empty for the default"),
    "env": ('an object of NAME: "value" strings', 'give env as {"NAME": "value"}; null unsets'),
    "labels": ("an object of string values", 'give labels such as {"team": "data"}'),
    "annotations": ("an object of string values", 'give annotations such as {"team": "data"}'),
    "name": ("a string or null", "set it to a string, or leave it empty"),
    "stream_output": ("a boolean", "set it to true or false"),
}


def _require_mapping(value: Any, what: str, source: str) -> None:
    if not isinstance(value, Mapping):
        raise InfraError(
            f"{what} from {source} must be an object (got {type(value).__name__}); "
            "fix the work pool's base job template or the block",
            field="job_configuration",
            source=source,
        )


def _validate(data: Mapping[str, Any], source: str, noun: str) -> KubernetesConfig:
    """The typed config, or an `InfraError` for the first problem (never chained: it holds input)."""
    try:
        return KubernetesConfig.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    raise _field_error(error, source, noun) from None


def _field_error(error: ErrorDetails, source: str, noun: str) -> InfraError:
    path = _path(error["loc"])
    field = str(error["loc"][0]) if error["loc"] else "job_configuration"
    expected, fix = _HELP.get(field, ("valid", "correct it"))
    where = f"{noun} {path!r} from {source}"
    if error["type"] == _CUSTOM:
        message = f"{where} {error['msg']}; {error.get('ctx', {}).get('fix', fix)}"
    elif error["type"] == "missing":
        message = f"{where} is not set; {fix}"
    else:
        got = _describe(error.get("input"), field in _SECRETS_HIDDEN)
        should = f"must be {expected}" if path == field else error["msg"].replace("Input should", "should")
        message = f"{where} {should} (got {got}); {fix}"
    return InfraError(message, field=path, source=source)


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
    container = _container(config.job_manifest, field, source)
    metadata = config.job_manifest["metadata"]
    _check_name(config.namespace, _DNS_LABEL, 63, "namespace", source)
    if metadata.get("namespace") not in (None, config.namespace):
        raise InfraError(
            f"{field}.metadata.namespace from {source} differs from namespace {config.namespace!r}; "
            "the Job is created in 'namespace': make them equal or remove the manifest's",
            field=f"{field}.metadata.namespace",
            source=source,
        )
    if metadata.get("name"):
        _check_name(metadata["name"], _DNS_LABEL, 63, f"{field}.metadata.name", source)
    pod_spec = config.job_manifest["spec"]["template"]["spec"]
    account = config.service_account_name or pod_spec.get("serviceAccountName")
    if account is not None:
        _check_name(account, _DNS_SUBDOMAIN, 253, "service_account_name", source)
    for key in (*config.labels, *config.annotations, *metadata["labels"], *metadata["annotations"]):
        _label_key(key, source)
    if not (config.image or container.get("image")):
        raise InfraError(
            f"image from {source} is not set; set the 'image' job variable (or the block's image) to "
            'an image with Prefect 3 and your flow\'s dependencies, e.g. "prefecthq/prefect:3-latest"',
            field="image",
            source=source,
        )
    _check_container(container, f"{field}.spec.template.spec.containers[0]", source)
    return config


def _container(manifest: dict[str, Any], field: str, source: str) -> dict[str, Any]:
    """The Job's first container, named "prefect-job", or an error naming what is wrong."""

    def bad(path: str, problem: str) -> InfraError:
        return InfraError(
            f"{field}{path} from {source} {problem}; the manifest must be a batch/v1 Job whose "
            f"spec.template.spec has restartPolicy Never and containers[0] named {_CONTAINER!r}",
            field=f"{field}{path}",
            source=source,
        )

    if manifest.get("apiVersion") != "batch/v1" or manifest.get("kind") != "Job":
        raise bad("", "is not a batch/v1 Job")
    if not isinstance(manifest.setdefault("metadata", {}), dict):
        raise bad(".metadata", "is not an object")
    for key in ("labels", "annotations"):
        if not isinstance(manifest["metadata"].setdefault(key, {}), dict):
            raise bad(f".metadata.{key}", "is not an object")
    spec = manifest.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(pod_spec, dict):
        raise bad(".spec.template.spec", "is missing")
    if pod_spec.setdefault("restartPolicy", "Never") != "Never":
        raise bad(".spec.template.spec.restartPolicy", "is not 'Never'")
    containers = pod_spec.get("containers")
    if not (isinstance(containers, list) and containers and isinstance(containers[0], dict)):
        raise bad(".spec.template.spec.containers", "has no container")
    if containers[0].get("name") != _CONTAINER:
        raise bad(".spec.template.spec.containers[0].name", f"is not {_CONTAINER!r}")
    return containers[0]


def _check_container(container: dict[str, Any], path: str, source: str) -> None:
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in _PULL_POLICIES:
        raise InfraError(
            f"{path}.imagePullPolicy from {source} must be one of {', '.join(_PULL_POLICIES)} "
            f"(got {_describe(policy, False)}); use one of those words",
            field=f"{path}.imagePullPolicy",
            source=source,
        )
    try:
        _COMMAND.validate_python(container.get("args"))
    except ValidationError:
        raise InfraError(
            f"{path}.args from {source} must be a command string or a list of strings (value hidden); "
            "leave it as '{{ command }}' and set the 'command' job variable",
            field=f"{path}.args",
            source=source,
        ) from None
    resources = container.get("resources") or {}
    for kind in ("limits", "requests"):
        amounts = resources.get(kind) if isinstance(resources, dict) else None
        if amounts is not None and not isinstance(amounts, dict):
            raise InfraError(
                f"{path}.resources.{kind} from {source} is not an object; give it as "
                '{"cpu": "500m", "memory": "1Gi"}',
                field=f"{path}.resources.{kind}",
                source=source,
            )
        for resource, quantity in (amounts or {}).items():
            _check_quantity(quantity, f"{path}.resources.{kind}.{resource}", source)
