"""`flow-agent blocks ...` and `flow-agent deployment ...`: legacy infrastructure blocks.

Mounted by `agent.cli` with `app.add_typer(blocks_app, name="blocks")` and
`app.add_typer(deployment_app, name="deployment")`. Like `agent.cli`, this module reads
the environment only through `Settings`; it needs a server, so PREFECT_API_URL must be set.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
import typer

from agent.api.blocks import (
    list_block_documents,
    read_block_document,
    read_block_document_by_name,
    register_block_type_and_schema,
)
from agent.api.client import PrefectClient
from agent.api.deployments import find_deployment, list_deployments, update_deployment
from agent.api.errors import ApiError
from agent.api.flows import read_flows
from agent.api.models import Deployment
from agent.blocks import INFRASTRUCTURE_BLOCKS, INFRASTRUCTURE_SLUGS
from agent.cli.common import EXIT_INTERRUPTED, explain, load_settings, quiet_logs, retrying_visibly
from agent.retry import Interrupted
from agent.settings import Settings

__all__ = ["blocks_app", "deployment_app"]

T = TypeVar("T")

blocks_app = typer.Typer(
    help="Prefect 2 infrastructure blocks (process, ecs-task, cloud-run-job, "
    "azure-container-instance-job, kubernetes-job) on the Prefect server.",
    no_args_is_help=True,
)
deployment_app = typer.Typer(help="List and change deployments on the Prefect server.", no_args_is_help=True)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    """The agent's settings (a bad value exits naming its variable); these commands need a server."""
    settings = load_settings()
    if settings.api_url is None:
        raise _fail(
            "PREFECT_API_URL is not set: these commands change a Prefect server, so say which "
            "one, e.g. `export PREFECT_API_URL=http://127.0.0.1:4200/api`",
            code=2,
        )
    return settings


def _run(work: Callable[[PrefectClient], Awaitable[T]]) -> T:
    """Run `work` with a client for the configured server; API errors exit 1 with their text."""
    settings = _settings()
    assert settings.api_url is not None
    quiet_logs(settings)

    async def main() -> T:
        async with PrefectClient.from_settings(settings) as client:
            with retrying_visibly(settings):
                return await work(client)

    try:
        return anyio.run(main)
    except KeyboardInterrupt:
        raise _fail("interrupted", code=EXIT_INTERRUPTED) from None
    except (ApiError, Interrupted) as exc:
        raise _fail(explain(exc, settings.api_url)) from None


# -- blocks --------------------------------------------------------------------------------------------


@blocks_app.command("register")
def register() -> None:
    """Create or update the five infrastructure block types and their schemas (idempotent)."""

    async def work(client: PrefectClient) -> None:
        for spec in INFRASTRUCTURE_BLOCKS:
            done = await register_block_type_and_schema(client, spec)
            typer.echo(
                f"{done.slug}: block type {done.block_type}, schema {done.block_schema} "
                f"({done.block_schema_id})"
            )

    _run(work)


@blocks_app.command("list")
def list_blocks() -> None:
    """The infrastructure block documents on the server: TYPE/NAME and id."""

    async def work(client: PrefectClient) -> list[dict[str, Any]]:
        return await list_block_documents(client, INFRASTRUCTURE_SLUGS)

    documents = _run(work)
    if not documents:
        typer.echo(
            "no infrastructure blocks; create one in the Prefect UI (Blocks, after "
            "`flow-agent blocks register`)",
            err=True,
        )
        return
    rows = [
        (f"{(d.get('block_type') or {}).get('slug', '?')}/{d.get('name')}", str(d["id"])) for d in documents
    ]
    width = max(len(name) for name, _ in rows)
    for name, document_id in sorted(rows):
        typer.echo(f"{name:<{width}}  {document_id}")


# -- deployments -----------------------------------------------------------------------------------------


async def _find_deployment(client: PrefectClient, deployment: str) -> Deployment:
    """By id or name; an unknown one is an ApiError (exit 1), a malformed name a usage error."""
    try:
        return await find_deployment(client, deployment)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


async def _find_block(client: PrefectClient, block: str) -> dict[str, Any]:
    if _UUID.match(block):
        document = await read_block_document(client, block)
        if document is None:
            raise _fail(f"no block document with id {block}")
        return document
    slug, sep, name = block.partition("/")
    if not sep or not name:
        raise _fail(f"TYPE/BLOCK must look like 'cloud-run-job/dev' (got {block!r})", 2)
    if slug not in INFRASTRUCTURE_SLUGS:
        raise _fail(
            f"{slug!r} is not an infrastructure block type; use one of {', '.join(INFRASTRUCTURE_SLUGS)}", 2
        )
    document = await read_block_document_by_name(client, slug, name)
    if document is None:
        raise _fail(
            f"no {slug!r} block named {name!r}; create it in the Prefect UI (Blocks; run "
            "`flow-agent blocks register` first if the type is missing) or see `flow-agent blocks list`"
        )
    return document


@deployment_app.command("ls")
def list_deployments_command(
    pool: Annotated[str | None, typer.Option("--pool", help="Only this work pool's deployments.")] = None,
) -> None:
    """The deployments on the server: 'flow-name/deployment-name' (what `run` takes), work pool, id."""

    async def work(client: PrefectClient) -> list[tuple[str, str, str]]:
        found = await list_deployments(client, pool=pool)
        flows = {f.id: f.name for f in await read_flows(client, ids={d.flow_id for d in found})}
        return [(f"{flows.get(d.flow_id, d.flow_id)}/{d.name}", d.work_pool_name or "-", d.id) for d in found]

    rows = sorted(_run(work))
    if not rows:
        where = f" in work pool {pool!r}" if pool else ""
        typer.echo(f"no deployments{where}; create one with `prefect deploy` or flow.deploy()", err=True)
        return
    name_width = max(len(name) for name, _, _ in rows)
    pool_width = max(len(p) for _, p, _ in rows)
    for name, work_pool, deployment_id in rows:
        typer.echo(f"{name:<{name_width}}  {work_pool:<{pool_width}}  {deployment_id}")


@deployment_app.command("set-infra")
def set_infra(
    deployment: Annotated[str, typer.Argument(help="'flow-name/deployment-name' or a deployment id.")],
    block: Annotated[
        str, typer.Argument(help="TYPE/BLOCK, e.g. 'cloud-run-job/dev', or a block document id.")
    ],
) -> None:
    """Run a deployment's flow runs on a Prefect 2 infrastructure block (infrastructure_document_id)."""

    async def work(client: PrefectClient) -> tuple[Deployment, dict[str, Any]]:
        target = await _find_deployment(client, deployment)
        document = await _find_block(client, block)
        await update_deployment(client, target.id, infrastructure_document_id=document["id"])
        after = await client.read_deployment(target.id)
        if after.infrastructure_document_id != document["id"]:
            raise _fail("the server accepted the update but did not store infrastructure_document_id")
        return after, document

    after, document = _run(work)
    slug = (document.get("block_type") or {}).get("slug", "?")
    typer.echo(
        f"deployment {after.name!r} ({after.id}) now runs on {slug}/{document.get('name')} ({document['id']})"
    )
