"""Kubernetes Job manifests: their required shape, and names, labels and quantities the API accepts.

Checked when a configuration is made, so that a bad manifest fails there with the path
and the fix instead of at `create_namespaced_job`. Label, annotation and Job names are
made valid as Prefect does (python-slugify), or rejected when they cannot be.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from agent.infra.fields import Command, describe
from agent.infra.templating import InfraError, find_placeholders

__all__ = [
    "COMMAND",
    "CONTAINER",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "base_manifest",
    "check_container",
    "check_name",
    "generate_name",
    "job_container",
    "label_key",
    "sanitize_labels",
]

CONTAINER: Final = "prefect-job"  # the name of the container that runs the flow
COMMAND: Final = TypeAdapter(Command)
_PULL_POLICIES: Final = ("IfNotPresent", "Always", "Never")


def base_manifest() -> dict[str, Any]:
    """Prefect 2's `KubernetesJob.base_job_manifest()`: a block without `job` starts here."""
    pod_spec = {"parallelism": 1, "completions": 1, "restartPolicy": "Never"}
    pod_spec["containers"] = [{"name": CONTAINER, "env": []}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"labels": {}},
            "spec": {"template": {"spec": pod_spec}}}  # fmt: skip


def generate_name(current: Any, name: str) -> str:
    """The manifest's generateName made valid, or one from the job's (else the run's) name."""
    # "{{ name }}-" renders "-" (or "None-") for a pool without a name: Prefect replaces those.
    # A name with spaces or capitals ("Nightly ETL-") is slugified, where Prefect sends it as
    # it is and the API rejects the Job.
    usable = isinstance(current, str) and current.strip("-") and current != "None-"
    if usable and not find_placeholders(current):
        name = current
    return (_slug(name) or "prefect-job") + "-"


DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUANTITY: Final = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i|[numkMGTPE])?")


def _slug(
    text: str, *, allowed: str = "a-z0-9-", limit: int = 45, lower: bool = True, strip: str = "-"
) -> str:
    """python-slugify as Prefect calls it: ASCII only, runs of other characters -> "-"."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().replace("'", "")
    text = re.sub(rf"[^{allowed}]+", "-", text.lower() if lower else text)
    return re.sub(r"-{2,}", "-", text).strip("-")[:limit].strip(strip)


def label_key(key: str, source: str) -> str:
    """`prefix/name` as Kubernetes wants it; a key that cannot be made valid is an error."""
    prefix, _, name = key.partition("/") if "/" in key else ("", "", key)
    name = _slug(name, allowed="a-zA-Z0-9_.-", limit=63, lower=False, strip="_-.")
    prefix = _slug(prefix, allowed="a-z0-9.-", limit=253, strip="_-.") if prefix else ""
    if not name or not _LABEL_NAME.fullmatch(name) or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix)):
        raise InfraError(
            f"label or annotation key {key!r} from {source or 'the run'} cannot be made a valid "
            "Kubernetes key; use letters, digits, '-', '_', '.' with an optional 'dns.prefix/'",
            field="labels",
            source=source,
        )
    return f"{prefix}/{name}" if prefix else name


def sanitize_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    # an empty label value is valid, a value that sanitises to nothing becomes one
    clean = lambda v: _slug(str(v), allowed="a-zA-Z0-9_.-", limit=63, lower=False, strip="_-.")  # noqa: E731
    return {label_key(key, ""): clean(value) for key, value in labels.items()}


def check_name(value: Any, pattern: re.Pattern[str], limit: int, field: str, source: str) -> None:
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
            f"{field} from {source} is not a Kubernetes quantity (got {describe(value, False)}); "
            "write CPU as '500m' or '2' and memory as '512Mi' or '4Gi'",
            field=field,
            source=source,
        )


def job_container(manifest: dict[str, Any], field: str, source: str) -> dict[str, Any]:
    """The Job's first container, named "prefect-job", or an error naming what is wrong."""

    def bad(path: str, problem: str) -> InfraError:
        return InfraError(
            f"{field}{path} from {source} {problem}; the manifest must be a batch/v1 Job whose "
            f"spec.template.spec has restartPolicy Never and containers[0] named {CONTAINER!r}",
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
    if containers[0].get("name") != CONTAINER:
        raise bad(".spec.template.spec.containers[0].name", f"is not {CONTAINER!r}")
    return containers[0]


def check_container(container: dict[str, Any], path: str, source: str) -> None:
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in _PULL_POLICIES:
        raise InfraError(
            f"{path}.imagePullPolicy from {source} must be one of {', '.join(_PULL_POLICIES)} "
            f"(got {describe(policy, False)}); use one of those words",
            field=f"{path}.imagePullPolicy",
            source=source,
        )
    try:
        COMMAND.validate_python(container.get("args"))
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
