"""Concurrency limits: global (v2, which also holds each deployment's limit) and tag limits (v1).

A deployment's limit is the global limit named `deployment:<id>`; the server answers it
inside the deployment (`global_concurrency_limit`). Tag limits hold task runs, not flow
runs, in Prefect 3: they are read so `why` can say that a run's tasks will wait.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agent.api.client import PrefectClient
from agent.api.errors import NotFound

__all__ = ["DeploymentLimit", "GlobalLimit", "TagLimit", "read_deployment_limit", "read_tag_limits"]


class GlobalLimit(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    limit: int
    active: bool = True
    active_slots: int = 0

    @property
    def full(self) -> bool:
        return self.active and self.active_slots >= self.limit


class TagLimit(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tag: str
    concurrency_limit: int
    active_slots: list[str] = Field(default_factory=list)  # task run ids holding a slot

    @property
    def full(self) -> bool:
        return len(self.active_slots) >= self.concurrency_limit


class DeploymentLimit(BaseModel):
    """What `why` needs of a deployment: its name and its concurrency limit."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    global_concurrency_limit: GlobalLimit | None = None


async def read_deployment_limit(client: PrefectClient, deployment_id: str) -> DeploymentLimit | None:
    try:
        data = await client.request("GET", f"/deployments/{deployment_id}")
    except NotFound:
        return None
    return DeploymentLimit.model_validate(data)


async def read_tag_limits(client: PrefectClient, tags: list[str]) -> list[TagLimit]:
    """The tag limits among `tags` (`POST /concurrency_limits/filter` has no tag filter)."""
    if not tags:
        return []
    data = await client.request("POST", "/concurrency_limits/filter", json={"limit": 200})
    wanted = set(tags)
    return [limit for limit in (TagLimit.model_validate(i) for i in data or []) if limit.tag in wanted]
