"""Backends: what launches a Job's payload and watches it to the end.

Which backends exist is the registry's business (`agent.registry`): each lives in its
own module, imports its SDK only there, and can be built only where that SDK is
installed (the extras `ecs`, `gcp`, `azure`, `kubernetes`), so an agent carries only
what it uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.backends.base import Backend, BackendOptions
from agent.registry import REGISTRY, load

__all__ = ["BackendOptions", "Backends", "extra_for", "load_backends"]


def extra_for(kind: str) -> str | None:
    """The extra that installs `kind`'s backend (`pip install 'flow-agent[<extra>]'`)."""
    entry = REGISTRY.get(kind)
    return entry.extra if entry else None


class Backends(Mapping[str, Backend]):
    """The backends this agent can use, each built on first use.

    Availability is decided at start without importing anything heavy (is the SDK
    installed, is the backend module there); a backend's module, and its SDK, is
    imported, and the backend built with the agent's one `BackendOptions`, only when a
    run of that kind needs it: an agent serving process pools stays small even with
    every extra installed.
    """

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        self._built: dict[str, Backend] = {}
        self._available = [entry.kind for entry in REGISTRY if entry.backend_installed()]

    def __getitem__(self, kind: str) -> Backend:
        if kind not in self._available:
            raise KeyError(kind)
        if kind not in self._built:
            entry = REGISTRY.get(kind)
            if entry is None:  # unregistered since this agent started
                raise KeyError(kind)
            self._built[kind] = load(entry.backend_class)(self._options)
        return self._built[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._available

    def __iter__(self) -> Iterator[str]:
        return iter(self._available)

    def __len__(self) -> int:
        return len(self._available)

    def built(self) -> list[Backend]:
        """The backends in use so far (to close them); never builds one."""
        return list(self._built.values())


def load_backends(options: BackendOptions) -> Backends:
    """Every registered backend whose module and SDK are installed (built lazily)."""
    return Backends(options)
