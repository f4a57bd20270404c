"""Deployment endpoints: one way to find a deployment by id or by name, read many, create, edit.

This module is the only place that turns what a user typed (`etl/nightly`, an id) into a
deployment (`find_deployment`, `read_deployment_by_name`): the name's two parts are
URL-quoted one by one (a space, `?` or `#` stays inside its part instead of ending the
path), and an unknown deployment is always the same `DeploymentNotFound`, naming what was
asked for and how to list what exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote

from agent.api.client import PrefectClient
from agent.api.errors import DeploymentNotFound, NotFound
from agent.api.models import FILTER_PAGE, Deployment, DeploymentCreate

__all__ = [
    "create_deployment",
    "find_deployment",
    "list_deployments",
    "parse_deployment_name",
    "read_deployment_by_name",
    "read_deployments",
    "update_deployment",
]

_HOW_TO_NAME: Final = "names are 'flow-name/deployment-name'; `flow-agent deployment ls` lists them"


def parse_deployment_name(name: str) -> tuple[str, str]:
    """`"etl/nightly"` → `("etl", "nightly")`. The first slash separates the parts (Prefect
    bans slashes in flow names, and 3.8 in deployment names too); any further slash stays
    inside the deployment part, quoted, so it finds nothing rather than another deployment."""
    flow, sep, deployment = str(name).strip().partition("/")
    if not sep or not flow or not deployment:
        raise ValueError(
            f"deployment {name!r}: give its id or 'flow-name/deployment-name' "
            "(e.g. 'etl/nightly'; `flow-agent deployment ls` lists them)"
        )
    return flow, deployment


def _as_id(ref: str) -> str | None:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return None


def _not_found(client: PrefectClient, ref: str) -> DeploymentNotFound:
    return DeploymentNotFound(
        f"deployment {ref!r} not found on {client.api_url} ({_HOW_TO_NAME})", status=404
    )


async def read_deployment_by_name(client: PrefectClient, name: str) -> Deployment:
    """`GET /deployments/name/{flow}/{deployment}`; DeploymentNotFound if there is none."""
    flow, deployment = parse_deployment_name(name)
    path = f"/deployments/name/{quote(flow, safe='')}/{quote(deployment, safe='')}"
    try:
        return Deployment.model_validate(await client.request("GET", path))
    except NotFound:
        raise _not_found(client, str(name).strip()) from None


async def find_deployment(client: PrefectClient, ref: str) -> Deployment:
    """A deployment by id or by `flow-name/deployment-name`.

    Raises DeploymentNotFound for an unknown one, ValueError for a ref that is neither.
    """
    ref = str(ref).strip()
    deployment_id = _as_id(ref)
    if deployment_id is None:
        return await read_deployment_by_name(client, ref)
    try:
        return await client.read_deployment(deployment_id)
    except NotFound:
        raise _not_found(client, ref) from None


async def read_deployments(client: PrefectClient, ids: Iterable[str]) -> list[Deployment]:
    """Deployments by id, one filter request per 200; unknown ids are simply absent."""
    wanted = sorted(set(ids))
    found: list[Deployment] = []
    for start in range(0, len(wanted), FILTER_PAGE):
        body = {"deployments": {"id": {"any_": wanted[start : start + FILTER_PAGE]}}, "limit": FILTER_PAGE}
        data = await client.request("POST", "/deployments/filter", json=body)
        found.extend(Deployment.model_validate(item) for item in data or [])
    return found


async def list_deployments(client: PrefectClient, *, pool: str | None = None) -> list[Deployment]:
    """Every deployment (of one work pool when given), by name, a page of 200 at a time."""
    found: list[Deployment] = []
    body: dict[str, Any] = {"sort": "NAME_ASC", "limit": FILTER_PAGE}
    if pool is not None:
        body["work_pools"] = {"name": {"any_": [pool]}}
    while True:
        page = await client.request("POST", "/deployments/filter", json={**body, "offset": len(found)})
        found.extend(Deployment.model_validate(item) for item in page or [])
        if len(page or []) < FILTER_PAGE:
            return found


async def create_deployment(client: PrefectClient, spec: DeploymentCreate) -> Deployment:
    """`POST /deployments/` upserts on (flow, name): a second call updates, never duplicates."""
    body = spec.model_dump(mode="json", exclude_unset=True)
    return Deployment.model_validate(await client.request("POST", "/deployments/", json=body))


async def update_deployment(client: PrefectClient, deployment_id: str, **fields: Any) -> None:
    """PATCH only the given fields (the server applies exclude_unset)."""
    await client.request("PATCH", f"/deployments/{deployment_id}", json=fields)
