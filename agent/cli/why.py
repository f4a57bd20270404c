"""`flow-agent why RUN_ID`: read what bears on a run from the server and the agents, then
say in plain words why it is not running yet, or why it ended as it did, with the fix.

The reading is here (and shared with `status`); the reasoning is
`agent.orchestrate.diagnose`, pure over what was read.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import typer
from rich.text import Text

from agent.api.agents import AgentStatus, read_agent_statuses
from agent.api.backlog import due_criteria
from agent.api.client import PrefectClient
from agent.api.concurrency import DeploymentLimit, read_deployment_limit, read_tag_limits
from agent.api.errors import NotFound
from agent.api.flow_runs import filter_flow_runs, read_flow_run
from agent.api.models import FILTER_PAGE, RunInfo
from agent.api.work_queues import read_work_queues
from agent.cli.common import out, run_with_client
from agent.orchestrate.diagnose import Diagnosis, Facts, PoolFacts, diagnose
from agent.settings import Settings

__all__ = ["agent_urls", "explain", "read_facts", "read_pool_facts", "why_command"]

ACTIVE = ["PENDING", "RUNNING", "CANCELLING"]  # the states that hold a concurrency slot


def agent_urls(given: Sequence[str] | None, settings: Settings) -> list[str]:
    """The agents to ask for /status: the given ones, and this machine's own agent when
    FLOW_AGENT_HEALTH_PORT is set."""
    urls = [u if "://" in u else f"http://{u}" for u in given or []]
    if settings.health_port:
        urls.append(f"http://127.0.0.1:{settings.health_port}")
    return list(dict.fromkeys(urls))


async def read_pool_facts(client: PrefectClient, name: str, now: datetime) -> PoolFacts:
    pool = await client.read_work_pool(name)
    if pool is None:
        return PoolFacts(None)
    in_pool = {"work_pools": {"name": {"any_": [name]}}}
    active = {**in_pool, "flow_runs": {"state": {"type": {"any_": ACTIVE}}}}
    return PoolFacts(
        pool=pool,
        queues=await read_work_queues(client, name),
        workers=await client.read_workers(name),
        active=await filter_flow_runs(client, active, limit=FILTER_PAGE),
        due=await filter_flow_runs(
            client, due_criteria(name, (), now), limit=FILTER_PAGE, sort="NEXT_SCHEDULED_START_TIME_ASC"
        ),
    )


async def read_facts(
    client: PrefectClient,
    run: RunInfo,
    *,
    now: datetime,
    pool: PoolFacts,
    agents: list[AgentStatus],
    unreachable: dict[str, str],
    deployments: dict[str, DeploymentLimit | None] | None = None,
) -> Facts:
    """Everything the diagnosis of `run` looks at; `deployments` caches across runs."""
    cache = {} if deployments is None else deployments
    deployment = None
    holders: list[RunInfo] = []
    if run.deployment_id:
        if run.deployment_id not in cache:
            cache[run.deployment_id] = await read_deployment_limit(client, run.deployment_id)
        deployment = cache[run.deployment_id]
        if deployment is not None and deployment.global_concurrency_limit is not None:
            criteria = {
                "deployments": {"id": {"any_": [run.deployment_id]}},
                "flow_runs": {"state": {"type": {"any_": ACTIVE}}},
            }
            holders = await filter_flow_runs(client, criteria, limit=FILTER_PAGE)
    return Facts(
        run=run,
        now=now,
        pool=pool,
        deployment=deployment,
        deployment_active=holders,
        tag_limits=await read_tag_limits(client, run.tags),
        agents=agents,
        unreachable=unreachable,
    )


async def explain(client: PrefectClient, run_id: str, urls: Sequence[str]) -> tuple[Diagnosis, Facts]:
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise ValueError(f"{run_id!r} is not a flow run id (a UUID, as `flow-runs ls` shows)") from None
    try:
        run = await read_flow_run(client, run_id)
    except NotFound:
        raise ValueError(f"no flow run {run_id} on {client.api_url}") from None
    now = datetime.now(UTC)
    pool = await read_pool_facts(client, run.work_pool_name, now) if run.work_pool_name else PoolFacts(None)
    agents, unreachable = await read_agent_statuses(urls)
    facts = await read_facts(client, run, now=now, pool=pool, agents=agents, unreachable=unreachable)
    return diagnose(facts), facts


def show(diagnosis: Diagnosis, facts: Facts) -> None:
    where = f"pool {diagnosis.pool!r}, queue {diagnosis.queue!r}" if diagnosis.pool else "no pool"
    out.print(Text(f"{diagnosis.run_name} ({diagnosis.run_id}): {diagnosis.state}, {where}", style="bold"))
    headline = diagnosis.headline
    if diagnosis.causes and headline.endswith(diagnosis.causes[0].summary):  # said just below
        headline = headline.removesuffix(diagnosis.causes[0].summary).rstrip(": ") + ":"
    out.print(headline, soft_wrap=True)
    for cause in diagnosis.causes:
        out.print(Text.assemble("  - ", (cause.summary, "yellow")), soft_wrap=True)
        if cause.fix:
            out.print(Text.assemble("    fix: ", (cause.fix, "green")), soft_wrap=True)
    for url, error in facts.unreachable.items():
        out.print(Text(f"  (agent {url} did not answer /status: {error})", style="dim"), soft_wrap=True)


def as_json(diagnosis: Diagnosis, facts: Facts) -> dict[str, object]:
    return {**diagnosis.to_json(), "agents_unreachable": facts.unreachable}


def why_command(
    flow_run_id: str = typer.Argument(..., help="The flow run to explain."),
    agent: list[str] = typer.Option(  # noqa: B008 - typer's declaration style
        [], "--agent", help="An agent's health server to ask (http://host:port), repeatable."
    ),
    json_output: bool | None = typer.Option(None, "--json/--text", help="Force the output format."),
) -> None:
    """Explain why a flow run is not running yet, or why it ended as it did, with the fix."""
    from agent.cli.common import load_settings

    urls = agent_urls(agent, load_settings())

    async def main(client: PrefectClient) -> int:
        diagnosis, facts = await explain(client, flow_run_id, urls)
        if json_output if json_output is not None else not sys.stdout.isatty():
            typer.echo(json.dumps(as_json(diagnosis, facts), indent=2, default=str))
        else:
            show(diagnosis, facts)
        return 0

    raise typer.Exit(run_with_client(main))
