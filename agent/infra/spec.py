"""The contract every infrastructure kind fulfils, and the run facts they may use.

A *kind* (process, ecs, cloud-run, aci, kubernetes) turns configuration from either source
(a work pool's resolved job configuration, or a legacy Prefect 2 infrastructure block's
data) into one typed pydantic config, and that config plus the run into the exact request
payload its backend will send. JSON Patch customizations are applied to that payload last,
by `agent.infra.patch`, so `render` shows byte for byte what would be sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

__all__ = ["InfraKind", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """What a payload may say about the run. `env` is complete and holds secrets."""

    flow_run_id: str
    flow_run_name: str
    flow_id: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    work_pool_name: str | None = None
    worker_name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # prefect.io/flow-run-id, prefect.io/flow-run-name, prefect.io/deployment-id, ... for
    # labels and tags on cloud objects, so observers and people can find the run
    labels: Mapping[str, str] = field(default_factory=dict)


class InfraKind(Protocol):
    # "process", "ecs", ...: its `agent.registry` entry's name, which also says which pool
    # types and legacy block slug the kind serves
    kind: ClassVar[str]

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> BaseModel:
        """From a pool's resolved job configuration (templating done, references resolved)."""
        ...

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> BaseModel:
        """From a legacy block's data, deployment/run overrides already applied."""
        ...

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        """The request payload(s) before customizations, JSON-serialisable."""
        ...

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        """RFC 6902 operations to apply to `build_payload`'s result (may be empty)."""
        ...

    def runtime(self, config: BaseModel) -> Any:
        """The typed runtime options its backend needs beyond the payload (credentials,
        timeouts, cleanup flags): an instance of the type the backend declares it takes."""
        ...
