"""Backends: what launches a Job's payload and watches it to the end.

The process backend is always here. Each cloud backend lives in its own module, imports
its SDK only there, and is loaded only when that SDK is installed (the extras `ecs`,
`gcp`, `azure`, `kubernetes`), so an agent carries only what it uses.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping

from agent.backends.base import Backend, BackendOptions
from agent.backends.process import ProcessBackend

__all__ = ["BackendOptions", "Backends", "EXTRAS", "load_backends"]

# kind -> (module, class, the SDK it needs, the extra that installs it)
_CLOUD: dict[str, tuple[str, str, str, str]] = {
    "ecs": ("agent.backends.ecs", "EcsBackend", "boto3", "ecs"),
    "cloud-run": ("agent.backends.cloud_run", "CloudRunBackend", "google.cloud.run_v2", "gcp"),
    "aci": ("agent.backends.aci", "AciBackend", "azure.mgmt.containerinstance", "azure"),
    "kubernetes": ("agent.backends.kubernetes", "KubernetesBackend", "kubernetes", "kubernetes"),
}
EXTRAS = {kind: extra for kind, (_, _, _, extra) in _CLOUD.items()}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class Backends(Mapping[str, Backend]):
    """The backends this agent can use, each built on first use.

    Availability is decided at start without importing anything heavy (is the SDK
    installed, is the backend module there); a cloud SDK is imported, and its backend
    built, only when a run of that kind needs it: an agent serving process pools stays
    small even with every extra installed.
    """

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        self._built: dict[str, Backend] = {"process": ProcessBackend()}
        self._available = ["process"] + [
            kind
            for kind, (module, _name, sdk, _extra) in _CLOUD.items()
            if _installed(sdk) and _installed(module)
        ]

    def __getitem__(self, kind: str) -> Backend:
        if kind not in self._available:
            raise KeyError(kind)
        if kind not in self._built:
            module, name, _sdk, _extra = _CLOUD[kind]
            self._built[kind] = getattr(importlib.import_module(module), name)(self._options)
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
    """The process backend, and every cloud backend whose SDK is installed (built lazily)."""
    return Backends(options)
