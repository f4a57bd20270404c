"""The one registry of infrastructure kinds.

A kind is named once, here: its infrastructure kind class (configuration and payload,
`agent/infra/`), its backend class (launch and watch, `agent/backends/`), the SDK and the
extra that install the backend, the work pool types it serves and its legacy Prefect 2
block slug. Everything else is derived from this table: which kind serves a pool or a
block (`agent.infra.kinds.Kinds`), which backends an agent can build
(`agent.backends.Backends`), the metrics' backend label, which block types are registered
(`agent.blocks`, which fails at import for a slug without a block spec), and the contract
suite's list of harnesses.

Classes are named as "module:attribute" and imported on first use, so naming a kind costs
nothing until a run of it comes (an agent serving process pools never imports boto3).
A sixth backend is one `KindEntry` in `BUILTIN` (or, from outside, `register`): see
docs/adding-a-backend.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["KindEntry", "Registry", "REGISTRY", "load", "register", "unregister"]


@dataclass(frozen=True)
class KindEntry:
    kind: str  # "process", "ecs", ...: the backend label in metrics, `Job.kind`, `Handle.kind`
    kind_class: str  # "module:Class" of the infrastructure kind (agent/infra)
    backend_class: str  # "module:Class" of the backend (agent/backends)
    pool_types: tuple[str, ...]  # work pool types served, e.g. ("cloud-run-v2", "cloud-run")
    block_slug: str | None = None  # its Prefect 2 infrastructure block type, if it had one
    sdk: str | None = None  # the module that must be importable for the backend to load
    extra: str | None = None  # `pip install 'flow-agent[<extra>]'` installs that SDK
    # agent-wide options the kind's constructor takes by keyword (e.g. "python", "base_env")
    kind_options: tuple[str, ...] = ()

    def backend_installed(self) -> bool:
        """Whether the backend can be built here, decided without importing anything heavy."""
        module = self.backend_class.partition(":")[0]
        return all(_importable(name) for name in (self.sdk, module) if name)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def load(path: str) -> Any:
    """The attribute named by "module:attribute", importing its module."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry:
    def __init__(self, entries: list[KindEntry]) -> None:
        self._entries: dict[str, KindEntry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: KindEntry) -> None:
        """Add a kind (or replace one of the same name); its pool types and slug must be free."""
        for other in self._entries.values():
            if other.kind == entry.kind:
                continue
            taken = set(other.pool_types) & set(entry.pool_types)
            if taken or (entry.block_slug is not None and other.block_slug == entry.block_slug):
                raise ValueError(f"kind {entry.kind!r} reuses a pool type or block slug of {other.kind!r}")
        self._entries[entry.kind] = entry

    def unregister(self, kind: str) -> None:
        self._entries.pop(kind, None)

    def __iter__(self) -> Iterator[KindEntry]:
        return iter(list(self._entries.values()))

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    def get(self, kind: str) -> KindEntry | None:
        return self._entries.get(kind)

    @property
    def kinds(self) -> list[str]:
        return list(self._entries)

    def for_pool_type(self, pool_type: str) -> KindEntry | None:
        return next((e for e in self._entries.values() if pool_type in e.pool_types), None)

    def for_block_slug(self, slug: str) -> KindEntry | None:
        return next((e for e in self._entries.values() if e.block_slug == slug), None)

    def pool_types(self) -> list[str]:
        return sorted(t for e in self._entries.values() for t in e.pool_types)

    def block_slugs(self) -> list[str]:
        """The legacy block slugs, in registration order (the order blocks are registered)."""
        return [e.block_slug for e in self._entries.values() if e.block_slug is not None]


BUILTIN = [
    KindEntry(
        "process",
        "agent.infra.process:ProcessKind",
        "agent.backends.process:ProcessBackend",
        pool_types=("process",),
        block_slug="process",
        kind_options=("python", "base_env"),
    ),
    KindEntry(
        "ecs",
        "agent.infra.ecs:EcsKind",
        "agent.backends.ecs:EcsBackend",
        pool_types=("ecs",),
        block_slug="ecs-task",
        sdk="boto3",
        extra="ecs",
    ),
    KindEntry(
        "cloud-run",
        "agent.infra.cloud_run:CloudRunKind",
        "agent.backends.cloud_run:CloudRunBackend",
        pool_types=("cloud-run-v2", "cloud-run"),
        block_slug="cloud-run-job",
        sdk="google.cloud.run_v2",
        extra="gcp",
    ),
    KindEntry(
        "aci",
        "agent.infra.aci:AciKind",
        "agent.backends.aci:AciBackend",
        pool_types=("azure-container-instance",),
        block_slug="azure-container-instance-job",
        sdk="azure.mgmt.containerinstance",
        extra="azure",
    ),
    KindEntry(
        "kubernetes",
        "agent.infra.kubernetes:KubernetesKind",
        "agent.backends.kubernetes:KubernetesBackend",
        pool_types=("kubernetes",),
        block_slug="kubernetes-job",
        sdk="kubernetes",
        extra="kubernetes",
    ),
]

REGISTRY = Registry(BUILTIN)
register = REGISTRY.register
unregister = REGISTRY.unregister
