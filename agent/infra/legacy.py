"""The Prefect 2 path: a deployment's `infrastructure_document_id` names a block to run on.

The 2.x agent read that block document, applied the deployment's job variables (then
called `infra_overrides`) as dot-paths onto the block's data (`"env.FOO": "x"`,
`"image": "..."`), and ran the block. We do the same, with two refinements users expect
from 3.x: nested objects are deep-merged instead of replaced, and the flow run's own job
variables go on top. The typed per-backend config (`InfraKind.config_from_block`) is made
from the result by the caller.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.api.blocks import read_block_document
from agent.api.client import PrefectClient
from agent.infra.merge import expand_dot_keys
from agent.infra.references import secret_values
from agent.infra.templating import InfraError
from agent.registry import REGISTRY

__all__ = ["LEGACY_SLUGS", "LegacyInfra", "apply_overrides", "load_infrastructure_block"]

LEGACY_SLUGS: Final[tuple[str, ...]] = tuple(REGISTRY.block_slugs())


@dataclass(frozen=True)
class LegacyInfra:
    """One infrastructure block document. `data` holds secrets in clear: never log it."""

    slug: str
    name: str | None
    data: dict[str, Any] = field(repr=False)
    document_id: str = ""


def _of(source: str) -> str:
    return f" of {source}" if source else ""


async def load_infrastructure_block(
    client: PrefectClient,
    document_id: str,
    *,
    source: str,
    on_secret: Callable[[str], None] | None = None,
) -> LegacyInfra:
    """Read the block document (secrets in clear) and check that we can run its type.

    `on_secret` receives every value of the block's secret fields (its schema's
    `secret_fields`), so the caller's log redactor can mask them.
    """
    document = await read_block_document(client, document_id)
    if document is None:
        raise InfraError(
            f"infrastructure block {document_id}{_of(source)} does not exist (it may have been "
            "deleted); point the deployment at another block with `flow-agent deployment "
            "set-infra <flow>/<deployment> <type>/<block>`",
            field="infrastructure_document_id",
            source=source,
        )
    block_type = document.get("block_type") or {}
    slug = str(block_type.get("slug") or document.get("block_type_name") or "")
    if slug not in LEGACY_SLUGS:
        raise InfraError(
            f"infrastructure block {document_id}{_of(source)} is of type {slug!r}, which "
            f"flow-agent cannot run; use one of {', '.join(LEGACY_SLUGS)} "
            "(`flow-agent deployment set-infra`), or move the deployment to a work pool",
            field="infrastructure_document_id",
            source=source,
        )
    if on_secret is not None:
        for secret in secret_values(document):
            on_secret(secret)
    data = document.get("data") or {}
    return LegacyInfra(slug=slug, name=document.get("name"), data=dict(data), document_id=str(document_id))


def _deep_merge(base: Any, top: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(top, Mapping)):
        return copy.deepcopy(top)
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged.get(key), value) if key in merged else copy.deepcopy(value)
    return merged


def apply_overrides(
    data: Mapping[str, Any],
    deployment_vars: Mapping[str, Any] | None,
    run_vars: Mapping[str, Any] | None,
    *,
    source: str = "",
) -> dict[str, Any]:
    """Block data with the deployment's job variables, then the run's, applied on top.

    Keys may be dot-paths (`"env.FOO"`, `"job.spec.backoffLimit"`); objects are merged
    key by key at any depth, anything else (lists included, e.g. `customizations`) is
    replaced, as the 2.x agent replaced them. Inputs are not modified.
    """
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for label, variables in (("deployment", deployment_vars), ("flow run", run_vars)):
        if not variables:
            continue
        if not isinstance(variables, Mapping):
            raise InfraError(
                f"{label} job variables{_of(source)} must be an object of field: value",
                field="job_variables",
                source=source,
            )
        result = _deep_merge(result, expand_dot_keys(variables, source=source))
    return result
