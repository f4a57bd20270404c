"""Registering a flow in a local directory as a deployment (examples, scripts, the demo)."""

from __future__ import annotations

import contextlib
from typing import Any

from agent.api.client import PrefectClient
from agent.api.deployments import create_deployment
from agent.api.errors import Conflict
from agent.api.flows import create_flow
from agent.api.models import Deployment, DeploymentCreate

__all__ = ["register_local_deployment"]


async def register_local_deployment(
    client: PrefectClient,
    *,
    flow_name: str,
    name: str,
    pool: str,
    entrypoint: str,
    directory: str,
    job_variables: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    tags: list[str] | None = None,
) -> Deployment:
    """Create or update a deployment of a flow in a local directory, served by a process pool
    (created with the default base job template if missing). The engine's pull step moves
    into `directory` and loads `entrypoint` (`file.py:function`). Idempotent: the server
    upserts flows on their name and deployments on (flow, name)."""
    from agent.infra.defaults import default_base_job_template

    if await client.read_work_pool(pool) is None:
        with contextlib.suppress(Conflict):  # created meanwhile, by an agent or another script
            await client.create_work_pool(pool, "process", default_base_job_template("process"))
    flow = await create_flow(client, flow_name)
    spec = DeploymentCreate(
        name=name,
        flow_id=flow.id,
        entrypoint=entrypoint,
        path=directory,
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": directory}}],
        work_pool_name=pool,
        job_variables=job_variables or {},
        parameters=parameters or {},
        tags=tags or [],
        enforce_parameter_schema=False,
    )
    return await create_deployment(client, spec)
