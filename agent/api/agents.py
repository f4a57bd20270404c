"""What running agents say about themselves: `GET /status` on an agent's health server.

The Prefect server knows an agent only as a worker row (name, last heartbeat); its
limit, queues and runs in flight are known only to the agent. An agent that cannot be
reached is reported as such, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["AgentStatus", "read_agent_statuses"]

_TIMEOUT = 2.0


class AgentStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = ""
    name: str
    version: str = ""
    instance: str = ""
    pools: list[str] = Field(default_factory=list)
    queues: list[str] = Field(default_factory=list)  # empty: every queue
    limit: int | None = None
    free_slots: int | None = None  # None: unlimited
    in_flight: list[str] = Field(default_factory=list)
    limit_full: bool = False
    draining: bool = False
    left_alone: dict[str, str] = Field(default_factory=dict)

    def serves(self, pool: str | None, queue: str | None) -> bool:
        return pool in self.pools and (not self.queues or queue in self.queues)


async def read_agent_statuses(urls: Sequence[str]) -> tuple[list[AgentStatus], dict[str, str]]:
    """The agents that answered, and for the others the URL and why not."""
    found: list[AgentStatus] = []
    failed: dict[str, str] = {}

    async def one(http: httpx.AsyncClient, url: str) -> None:
        base = url.rstrip("/")
        try:
            response = await http.get(f"{base}/status")
            response.raise_for_status()
            found.append(AgentStatus.model_validate({**response.json(), "url": base}))
        except (httpx.HTTPError, ValueError, ValidationError) as exc:
            failed[base] = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]

    async with httpx.AsyncClient(timeout=_TIMEOUT) as http, anyio.create_task_group() as tg:
        for url in dict.fromkeys(urls):
            tg.start_soon(one, http, url)
    return found, failed
