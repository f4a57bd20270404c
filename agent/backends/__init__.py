"""Backends: what launches a Job's payload and watches it to the end.

The process backend is always here. Each cloud backend lives in its own module, imports
its SDK only there, and is loaded only when that SDK is installed (the extras `ecs`,
`gcp`, `azure`, `kubernetes`), so an agent carries only what it uses.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from agent.backends.base import Backend
from agent.backends.process import ProcessBackend

__all__ = ["BackendOptions", "EXTRAS", "load_backends"]

# kind -> (module, class, the SDK it needs, the extra that installs it)
_CLOUD: dict[str, tuple[str, str, str, str]] = {
    "ecs": ("agent.backends.ecs", "EcsBackend", "boto3", "ecs"),
    "cloud-run": ("agent.backends.cloud_run", "CloudRunBackend", "google.cloud.run_v2", "gcp"),
    "aci": ("agent.backends.aci", "AciBackend", "azure.mgmt.containerinstance", "azure"),
    "kubernetes": ("agent.backends.kubernetes", "KubernetesBackend", "kubernetes", "kubernetes"),
}
EXTRAS = {kind: extra for kind, (_, _, _, extra) in _CLOUD.items()}


@dataclass(frozen=True)
class BackendOptions:
    """Agent-wide settings the cloud backends share (per-run settings come in the Job)."""

    watch_interval: float = 5.0  # seconds between status reads of one batch of workloads
    gcp_endpoint: str | None = None  # Cloud Run API base URL (tests point it at a fake)
    azure_arm_endpoint: str | None = None  # ARM base URL (tests point it at a fake)
    kubeconfig: str | None = None  # default: in-cluster config, else ~/.kube/config


def _sdk_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def load_backends(options: BackendOptions) -> dict[str, Backend]:
    """The process backend, and every cloud backend whose SDK is installed."""
    backends: dict[str, Backend] = {"process": ProcessBackend()}
    for kind, (module, name, sdk, _extra) in _CLOUD.items():
        if not _sdk_installed(sdk):
            continue
        try:
            backend_module = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside the backend
                raise
            continue  # not built yet
        backends[kind] = getattr(backend_module, name)(options)
    return backends
