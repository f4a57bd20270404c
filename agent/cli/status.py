"""`flow-agent status [--pool P]`: one screen for the pools.

The agents online (worker rows, with what each agent's /status adds: version, runs in
flight, free slots), the late and pending runs with the one-line reason `why` gives, and
the runs that ended CRASHED in the last hour with their explanation. JSON when piped;
`--watch` redraws it live on a terminal.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.aio import first_completed
from agent.api.agents import AgentStatus, read_agent_statuses
from agent.api.client import PrefectClient
from agent.api.concurrency import DeploymentLimit
from agent.api.flow_runs import filter_flow_runs
from agent.api.models import FILTER_PAGE, StateType
from agent.api.work_queues import read_work_pools
from agent.cli.common import out, run_with_client
from agent.cli.why import agent_urls, read_facts, read_pool_facts
from agent.orchestrate.diagnose import diagnose, online_workers

__all__ = ["collect", "status_command"]

_RUNS_SHOWN = 25  # late/pending runs explained per pool (each costs a few requests)
_CRASH_WINDOW = timedelta(hours=1)


async def collect(client: PrefectClient, pools: Sequence[str], urls: Sequence[str]) -> dict[str, Any]:
    """The whole screen as data (what `--json` prints)."""
    now = datetime.now(UTC)
    names = list(pools) or [p.name for p in await read_work_pools(client)]
    agents, unreachable = await read_agent_statuses(urls)
    deployments: dict[str, DeploymentLimit | None] = {}
    report: dict[str, Any] = {"time": now.isoformat(), "pools": [], "agents_unreachable": unreachable}
    for name in names:
        facts = await read_pool_facts(client, name, now)
        if facts.pool is None:
            report["pools"].append({"name": name, "error": f"work pool {name!r} does not exist"})
            continue
        waiting = [r for r in facts.due + facts.active if r.current_type is not StateType.RUNNING]
        waiting = [r for r in waiting if r.current_type is not StateType.CANCELLING][:_RUNS_SHOWN]
        runs = []
        for run in waiting:
            d = diagnose(
                await read_facts(
                    client,
                    run,
                    now=now,
                    pool=facts,
                    agents=agents,
                    unreachable=unreachable,
                    deployments=deployments,
                )
            )
            runs.append({"id": run.id, "name": run.name, "state": d.state, "reason": d.reason})
        report["pools"].append(
            {
                "name": name,
                "paused": facts.pool.is_paused,
                "agents": _agents(facts.workers, agents, name, now),
                "waiting": runs,
                "due": len(facts.due),
                "crashed": await _crashed(client, name, now),
            }
        )
    return report


def _agents(
    workers: Sequence[Any], agents: Sequence[AgentStatus], pool: str, now: datetime
) -> list[dict[str, Any]]:
    by_name = {a.name: a for a in agents if pool in a.pools}
    rows = []
    for worker in online_workers(workers, now):
        status = by_name.pop(worker.name, None)
        rows.append(_agent_row(worker.name, worker.last_heartbeat_time, status))
    rows += [_agent_row(a.name, None, a) for a in by_name.values()]  # answered, not yet heartbeated
    return rows


def _agent_row(name: str, heartbeat: datetime | None, status: AgentStatus | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "last_heartbeat": heartbeat.isoformat() if heartbeat else None}
    if status is not None:
        row.update(
            version=status.version,
            url=status.url,
            in_flight=status.in_flight,
            free_slots="unlimited" if status.free_slots is None else status.free_slots,
            limit=status.limit,
            queues=status.queues or "all",
        )
    return row


async def _crashed(client: PrefectClient, pool: str, now: datetime) -> list[dict[str, Any]]:
    criteria = {
        "work_pools": {"name": {"any_": [pool]}},
        "flow_runs": {
            "state": {"type": {"any_": ["CRASHED"]}},
            "end_time": {"after_": (now - _CRASH_WINDOW).isoformat()},
        },
    }
    runs = await filter_flow_runs(client, criteria, limit=FILTER_PAGE, sort="END_TIME_DESC")
    return [
        {
            "id": r.id,
            "name": r.name,
            "ended": r.end_time.isoformat() if r.end_time else None,
            "message": (r.state.message if r.state else None) or "",
        }
        for r in runs
    ]


def render(report: dict[str, Any]) -> Group:
    parts: list[Any] = []
    for pool in report["pools"]:
        if "error" in pool:
            parts.append(Text(f"{pool['name']}: {pool['error']}", style="red"))
            continue
        paused = " (paused)" if pool["paused"] else ""
        parts.append(Text(f"Work pool {pool['name']}{paused}: {pool['due']} due", style="bold"))
        agents = Table("agent", "last heartbeat", "version", "in flight", "free slots", box=None)
        for a in pool["agents"]:
            agents.add_row(
                a["name"],
                _short(a["last_heartbeat"]),
                a.get("version", "?"),
                str(len(a["in_flight"])) if "in_flight" in a else "?",
                str(a.get("free_slots", "?")),
            )
        parts.append(agents if pool["agents"] else Text("  no agent online", style="yellow"))
        for run in pool["waiting"]:
            parts.append(Text(f"  {run['state']:<12} {run['name']} ({run['id']}): {run['reason']}"))
        for run in pool["crashed"]:
            parts.append(Text(f"  CRASHED      {run['name']} ({run['id']}): {run['message']}", style="red"))
    for url, error in report["agents_unreachable"].items():
        parts.append(Text(f"(agent {url} did not answer /status: {error})", style="dim"))
    return Group(*parts)


def _short(moment: str | None) -> str:
    return moment[11:19] if moment else "-"


def status_command(
    pool: list[str] = typer.Option([], "--pool", "-p", help="Only this pool (repeatable)."),  # noqa: B008
    agent: list[str] = typer.Option(  # noqa: B008
        [], "--agent", help="An agent's health server to ask (http://host:port), repeatable."
    ),
    watch: bool = typer.Option(False, "--watch", help="Redraw every few seconds (on a terminal)."),
    interval: float = typer.Option(3.0, "--interval", help="Seconds between redraws with --watch."),
    json_output: bool | None = typer.Option(None, "--json/--text", help="Force the output format."),
) -> None:
    """Show the agents online, late and pending runs with their reason, and recent crashes."""
    from agent.cli.common import load_settings

    urls = agent_urls(agent, load_settings())
    as_json = json_output if json_output is not None else not sys.stdout.isatty()

    async def main(client: PrefectClient) -> int:
        if as_json or not watch:
            report = await collect(client, pool, urls)
            if as_json:
                typer.echo(json.dumps(report, indent=2, default=str))
            else:
                out.print(render(report))
            return 0
        await first_completed(lambda: _watch(client, pool, urls, interval), _ctrl_c)
        return 0  # Ctrl-C is how a watch ends: not an error

    raise typer.Exit(run_with_client(main))


async def _watch(client: PrefectClient, pools: Sequence[str], urls: Sequence[str], interval: float) -> None:
    with Live(render(await collect(client, pools, urls)), console=out, auto_refresh=False) as live:
        while True:
            await anyio.sleep(interval)
            live.update(render(await collect(client, pools, urls)), refresh=True)


async def _ctrl_c() -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as received:
        async for _ in received:
            return
