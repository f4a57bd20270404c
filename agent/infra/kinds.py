"""Which infrastructure kind serves a pool type or a legacy block slug.

The answer comes from the one registry of kinds (`agent.registry`). Kinds are pure
(configuration and payloads), so every registered kind is available whatever backends
are installed: `render` works for every type even where this agent has no backend to
launch it. A kind class is imported, and built, when a run of it first comes.
"""

from __future__ import annotations

from typing import Any

from agent.infra.spec import InfraKind
from agent.infra.templating import InfraError
from agent.registry import REGISTRY, KindEntry, load

__all__ = ["Kinds"]


class Kinds:
    """The registry's kinds, each built once. `options` are the agent-wide values a kind's
    constructor may take (`python` and `base_env` for the process kind); each entry names
    the ones its kind takes (`KindEntry.kind_options`)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._built: dict[str, InfraKind] = {}

    def get(self, kind: str) -> InfraKind:
        if kind not in self._built:
            entry = REGISTRY.get(kind)
            if entry is None:
                raise KeyError(f"no infrastructure kind {kind!r} is registered")
            self._built[kind] = self._build(entry)
        return self._built[kind]

    def _build(self, entry: KindEntry) -> InfraKind:
        missing = [name for name in entry.kind_options if name not in self._options]
        if missing:  # a wiring mistake, not bad user input
            raise TypeError(f"the {entry.kind!r} kind needs the option(s) {', '.join(missing)}")
        kind: InfraKind = load(entry.kind_class)(**{name: self._options[name] for name in entry.kind_options})
        return kind

    def for_pool_type(self, pool_type: str, *, source: str) -> InfraKind:
        entry = REGISTRY.for_pool_type(pool_type)
        if entry is None:
            raise InfraError(
                f"work pool type {pool_type!r} of {source} is not supported; "
                f"supported types: {', '.join(REGISTRY.pool_types())}",
                field="type",
                source=source,
            )
        return self.get(entry.kind)

    def for_block_slug(self, slug: str, *, source: str) -> InfraKind:
        entry = REGISTRY.for_block_slug(slug)
        if entry is None:
            raise InfraError(
                f"infrastructure block type {slug!r} ({source}) is not supported; use one of "
                f"{', '.join(sorted(REGISTRY.block_slugs()))}",
                field="infrastructure_document_id",
                source=source,
            )
        return self.get(entry.kind)

    @staticmethod
    def kind_of_pool_type(pool_type: str) -> str | None:
        entry = REGISTRY.for_pool_type(pool_type)
        return entry.kind if entry else None
