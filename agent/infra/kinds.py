"""Which infrastructure kind serves a pool type or a legacy block slug.

Kinds are pure (configuration and payloads), so all five are always available: `render`
works for every type even where this agent has no backend to launch it. Cloud kinds are
imported on first use only.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from agent.infra.process import ProcessKind
from agent.infra.spec import InfraKind
from agent.infra.templating import InfraError

__all__ = ["Kinds"]

# kind -> (module, class); the module is imported when the kind is first needed
_CLOUD: dict[str, tuple[str, str]] = {
    "ecs": ("agent.infra.ecs", "EcsKind"),
    "cloud-run": ("agent.infra.cloud_run", "CloudRunKind"),
    "aci": ("agent.infra.aci", "AciKind"),
    "kubernetes": ("agent.infra.kubernetes", "KubernetesKind"),
}
_POOL_TYPES = {
    "process": "process",
    "ecs": "ecs",
    "cloud-run-v2": "cloud-run",
    "cloud-run": "cloud-run",
    "azure-container-instance": "aci",
    "kubernetes": "kubernetes",
}
_BLOCK_SLUGS = {
    "process": "process",
    "ecs-task": "ecs",
    "cloud-run-job": "cloud-run",
    "azure-container-instance-job": "aci",
    "kubernetes-job": "kubernetes",
}


class Kinds:
    def __init__(self, *, python: str, base_env: Mapping[str, str]) -> None:
        self._loaded: dict[str, Any] = {"process": ProcessKind(python=python, base_env=base_env)}

    def get(self, kind: str) -> InfraKind:
        if kind not in self._loaded:
            module, name = _CLOUD[kind]
            self._loaded[kind] = getattr(importlib.import_module(module), name)()
        return self._loaded[kind]

    def for_pool_type(self, pool_type: str, *, source: str) -> InfraKind:
        kind = _POOL_TYPES.get(pool_type)
        if kind is None:
            raise InfraError(
                f"work pool type {pool_type!r} of {source} is not supported; "
                f"supported types: {', '.join(sorted(_POOL_TYPES))}",
                field="type",
                source=source,
            )
        return self.get(kind)

    def for_block_slug(self, slug: str, *, source: str) -> InfraKind:
        kind = _BLOCK_SLUGS.get(slug)
        if kind is None:
            raise InfraError(
                f"infrastructure block type {slug!r} ({source}) is not supported; use one of "
                f"{', '.join(sorted(_BLOCK_SLUGS))}",
                field="infrastructure_document_id",
                source=source,
            )
        return self.get(kind)

    @staticmethod
    def pool_types() -> list[str]:
        return sorted(_POOL_TYPES)

    @staticmethod
    def kind_of_pool_type(pool_type: str) -> str | None:
        return _POOL_TYPES.get(pool_type)
