"""Work pools and queues as an operator sees them: every pool, the queues of a pool with
their pause, priority and limit.

`why` and `status` read them; the agent loop never needs them (the poll names queues).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agent.api.client import PrefectClient
from agent.api.errors import NotFound
from agent.api.models import WorkPool

__all__ = ["WorkQueue", "read_work_pools", "read_work_queue", "read_work_queues"]


class WorkQueue(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    is_paused: bool = False
    concurrency_limit: int | None = None
    priority: int = 1  # lower is served first
    status: str | None = None  # READY | NOT_READY | PAUSED


async def read_work_queues(client: PrefectClient, pool: str) -> list[WorkQueue]:
    """Every queue of the pool (`POST /work_pools/{pool}/queues/filter`)."""
    data = await client.request("POST", f"/work_pools/{pool}/queues/filter", json={})
    return [WorkQueue.model_validate(item) for item in data or []]


async def read_work_queue(client: PrefectClient, pool: str, name: str) -> WorkQueue | None:
    try:
        data = await client.request("GET", f"/work_pools/{pool}/queues/{name}")
    except NotFound:
        return None
    return WorkQueue.model_validate(data)


async def read_work_pools(client: PrefectClient) -> list[WorkPool]:
    """Every work pool of the server (`POST /work_pools/filter`, one page of 200)."""
    data = await client.request("POST", "/work_pools/filter", json={"limit": 200})
    return [WorkPool.model_validate(item) for item in data or []]
