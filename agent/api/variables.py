"""Variable endpoints: what `{{ prefect.variables.<name> }}` reads."""

from __future__ import annotations

from urllib.parse import quote

from agent.api.client import PrefectClient
from agent.api.errors import NotFound
from agent.api.models import Variable

__all__ = ["read_variable"]


async def read_variable(client: PrefectClient, name: str) -> Variable | None:
    """The variable, or None if it does not exist."""
    try:
        return Variable.model_validate(await client.request("GET", f"/variables/name/{quote(name, safe='')}"))
    except NotFound:
        return None
