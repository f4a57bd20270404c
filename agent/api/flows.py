"""Flow endpoints: create (an upsert on the name), read one, read many."""

from __future__ import annotations

from collections.abc import Iterable

from agent.api.client import PrefectClient
from agent.api.models import FILTER_PAGE, Flow

__all__ = ["create_flow", "read_flow", "read_flows"]


async def create_flow(client: PrefectClient, name: str) -> Flow:
    """`POST /flows/`: the server answers with the existing flow of that name if there is one."""
    return Flow.model_validate(await client.request("POST", "/flows/", json={"name": name}))


async def read_flow(client: PrefectClient, flow_id: str) -> Flow:
    return Flow.model_validate(await client.request("GET", f"/flows/{flow_id}"))


async def read_flows(
    client: PrefectClient, *, ids: Iterable[str] = (), names: Iterable[str] = ()
) -> list[Flow]:
    """Flows by id or by name (one filter request per 200)."""
    found: list[Flow] = []
    for field, values in (("id", sorted(set(ids))), ("name", sorted(set(names)))):
        for start in range(0, len(values), FILTER_PAGE):
            body = {"flows": {field: {"any_": values[start : start + FILTER_PAGE]}}, "limit": FILTER_PAGE}
            found.extend(
                Flow.model_validate(f) for f in await client.request("POST", "/flows/filter", json=body) or []
            )
    return found
