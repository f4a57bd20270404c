"""Many agents on one pool: do they add up? Drain rate of 1 and of N agents, lost claim
races, and the server's own claim ceiling, on SQLite and on PostgreSQL.

    .venv/bin/python bench/multi_agent.py [--runs 400] [--agents 1 4] [--db sqlite postgres]
                                          [--source DIR] [--out bench/out-multi]

For each database: one fresh Prefect 3.8.8 server (PostgreSQL: a throwaway cluster, as the
tests start it). Then, one after the other on that server, each with its own pool and a
backlog of `--runs` runs created before anything claims (`command: true`, as bench/run.py),
deleted once the case is measured, so that every case starts on a database of one size:

* **ceiling, concurrency C**: no agent; the bench itself sends the raw claims, `POST
  /flow_runs/{id}/set_state` PENDING with a fresh transition id, C at a time (C = 8 x the
  agent count: the agents' claim concurrency), 502/503 retried. What the server can do.
* **k agents** (`python -m agent start --pool P --name bench-agent-i`, defaults otherwise,
  each with its own data dir and /metrics port), started together; measured until every run
  is claimed and launched (pid set) or ended.

Claim rate = runs / (last - first PENDING timestamp on the server), the same measure for
every case. Drain = agents' start to the last run settled. Lost races = the agents'
`flow_agent_claims_lost_total`. `--source DIR` runs the agents from another checkout (e.g.
an older commit, for a before/after comparison). Prints a Markdown table; writes
`<out>/multi_agent.json` and the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

from run import Api, kill_group, machine_info, parse_ts, prepare, read_runs, settled  # noqa: E402
from support.postgres import start_postgres  # noqa: E402
from support.server import PrefectServer, free_port, start_prefect_server  # noqa: E402

CLAIM_CONCURRENCY = 8  # the agent's default claim concurrency


def log(msg: str) -> None:
    print(f"[multi {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def claim_times(api: Api, run_ids: list[str]) -> list[float]:
    """Each run's first PENDING timestamp on the server, sorted."""
    out = []
    for run_id in run_ids:
        states = api.call("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
        ts = [parse_ts(s["timestamp"]) for s in states if s["type"] == "PENDING"]
        if ts:
            out.append(min(ts))
    return sorted(out)


def rate(times: list[float]) -> float | None:
    return round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 and times[-1] > times[0] else None


# -- the server's ceiling: raw claims, no agent ----------------------------------------------------


async def _raw_claims(api_url: str, run_ids: list[str], concurrency: int) -> dict[str, int]:
    counts = {"accepted": 0, "other": 0, "retries": 0}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as http:

        async def claim(run_id: str) -> None:
            body = {
                "state": {
                    "type": "PENDING",
                    "name": "Pending",
                    "state_details": {"flow_run_id": run_id, "transition_id": str(uuid.uuid4())},
                },
                "force": False,
            }
            async with gate:
                for attempt in range(30):
                    try:
                        r = await http.post(f"/flow_runs/{run_id}/set_state", json=body)
                    except httpx.TransportError:
                        r = None
                    if r is not None and r.status_code not in (502, 503):
                        r.raise_for_status()
                        status = r.json().get("status")
                        counts["accepted" if status == "ACCEPT" else "other"] += 1
                        return
                    counts["retries"] += 1
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
                raise RuntimeError(f"set_state {run_id}: server kept failing")

        await asyncio.gather(*(claim(run_id) for run_id in run_ids))
    return counts


def ceiling(api: Api, api_url: str, runs: int, concurrency: int) -> dict[str, Any]:
    prep = prepare(api, f"ceiling-c{concurrency}", runs)
    log(f"ceiling: {runs} raw set_state PENDING, {concurrency} at a time (load {load()})")
    t0 = time.monotonic()
    counts = asyncio.run(_raw_claims(api_url, prep["run_ids"], concurrency))
    wall = time.monotonic() - t0
    times = claim_times(api, prep["run_ids"])
    forget(api, prep["deployment_id"])
    return {
        "concurrency": concurrency,
        "claims_per_s": rate(times),
        "wall_s": round(wall, 2),
        **counts,
    }


def forget(api: Api, deployment_id: str) -> None:
    """Delete a finished case's runs, so that every case starts on a database of one size
    (kept, the case run second on a PostgreSQL server was the slower one in both orders)."""
    while (
        api.call(
            "POST",
            "/flow_runs/bulk_delete",
            json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 50},  # its maximum
        )
        .json()
        .get("deleted")
    ):
        pass


# -- k agents ---------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float | None]:
    """The agent's counters; None for one it does not have (an older agent)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float | None] = {}
    for name in (
        "flow_agent_runs_claimed_total",
        "flow_agent_claims_lost_total",
        "flow_agent_api_errors_total",
    ):
        values = re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
        known = f"# HELP {name} " in text
        out[name] = sum(float(v) for v in values) if known else None
    return out


def lost_in_logs(logs: list[Path]) -> int:
    """Lost claims as an agent logs them at DEBUG (for agents without the counter)."""
    return sum(path.read_text(errors="replace").count("run taken by someone else") for path in logs)


def agents(
    api: Api,
    server: PrefectServer,
    k: int,
    runs: int,
    out_dir: Path,
    *,
    db: str,
    source: str | None,
    agent_env: list[str],
    timeout: float,
) -> dict[str, Any]:
    prep = prepare(api, f"agents-{k}", runs)
    home = Path(tempfile.mkdtemp(prefix=f"flow-agent-multi-{k}-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOW_AGENT_")}
    env.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(home / "prefect"))
    if source:
        env["PYTHONPATH"] = source
    env.update(item.split("=", 1) for item in agent_env)
    ports = [free_port() for _ in range(k)]
    log(f"{k} agent(s) on {prep['pool']}, {runs} runs waiting (load {load()})")
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.time()
    for i, port in enumerate(ports):
        own_env = {
            **env,
            "FLOW_AGENT_HEALTH_PORT": str(port),
            "FLOW_AGENT_DATA_DIR": str(home / f"data-{i}"),
        }
        cmd = [sys.executable, "-m", "agent", "start", "--pool", prep["pool"], "--name", f"bench-agent-{i}"]
        with (out_dir / f"{db}-agents-{k}-{i}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    cmd, env=own_env, cwd=home, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    drained_at = None
    metrics: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"an agent exited; see {out_dir}/{db}-agents-{k}-*.log")
            flow_runs = read_runs(api, prep["deployment_id"])
            if sum(1 for r in flow_runs if settled(r)) >= runs:
                drained_at = time.time()
                break
            time.sleep(0.25)
        labels = owner_labels(api, prep["deployment_id"], runs) if drained_at else {}
        time.sleep(1.0)  # let the last answers land in the counters
        metrics = [scrape(port) for port in ports]
    finally:
        for proc in procs:
            kill_group(proc, 30)
        shutil.rmtree(home, ignore_errors=True)
    times = claim_times(api, prep["run_ids"])
    forget(api, prep["deployment_id"])
    claimed = [int(m.get("flow_agent_runs_claimed_total") or 0) for m in metrics]
    counted = [m.get("flow_agent_claims_lost_total") for m in metrics]
    if all(c is not None for c in counted):
        lost, lost_from = int(sum(c or 0 for c in counted)), "metric"
    else:  # an older agent: its DEBUG log (FLOW_AGENT_LOG_LEVEL=DEBUG), else unknown
        logs = [out_dir / f"{db}-agents-{k}-{i}.log" for i in range(k)]
        debug = any(item == "FLOW_AGENT_LOG_LEVEL=DEBUG" for item in agent_env)
        lost, lost_from = (lost_in_logs(logs), "debug log") if debug else (None, "unknown")
    return {
        "agents": k,
        "claims_per_s": rate(times),
        "drain_s": round(drained_at - t0, 2) if drained_at else None,
        "claimed": len(times),
        "claimed_per_agent": claimed,
        "lost_races": lost,
        "lost_races_from": lost_from,
        "lost_share": None if lost is None else round(lost / max(1, sum(claimed) + lost), 3),
        "api_errors": int(sum(m.get("flow_agent_api_errors_total") or 0 for m in metrics)),
        **labels,
    }


def owner_labels(api: Api, deployment_id: str, runs: int, within: float = 30.0) -> dict[str, Any]:
    """How many runs carry their owner's labels when the pool is drained, and how long after
    that until all do (the agents write what the server refused later, SQLite's 503s)."""
    start = time.time()
    at_drain = None
    while True:
        labelled = sum(
            1 for r in read_runs(api, deployment_id) if (r.get("labels") or {}).get("flow-agent.instance")
        )
        at_drain = labelled if at_drain is None else at_drain
        waited = time.time() - start
        if labelled >= runs or waited > within:
            return {
                "labelled_at_drain": at_drain,
                "labelled_at_end": labelled,
                "all_labelled_after_s": round(waited, 1) if labelled >= runs else None,
            }
        time.sleep(0.5)


# -- main -------------------------------------------------------------------------------------------


def bench_database(db: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"flow-agent-multi-{db}-"))
    cluster = start_postgres() if db == "postgres" else None
    server = None
    try:
        server = start_prefect_server(home, database_url=cluster.url() if cluster else None)
        log(f"{db}: server on {server.api_url}")
        api = Api(server.api_url)
        result: dict[str, Any] = {"database": db, "ceiling": [], "agents": []}
        for k in args.agents:
            result["ceiling"].append(ceiling(api, server.api_url, args.runs, CLAIM_CONCURRENCY * k))
            log(f"{db}: {result['ceiling'][-1]}")
            result["agents"].append(
                agents(
                    api,
                    server,
                    k,
                    args.runs,
                    out_dir,
                    db=db,
                    source=args.source,
                    agent_env=args.agent_env,
                    timeout=args.timeout,
                )
            )
            log(f"{db}: {result['agents'][-1]}")
        api.close()
        return result
    finally:
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
        shutil.copy2(home / "server.log", out_dir / f"server-{db}.log")
        shutil.rmtree(home, ignore_errors=True)


def lost(run: dict[str, Any]) -> str:
    if run["lost_races"] is None:
        return "n/a"
    return f"{run['lost_races']} ({run['lost_share']:.1%})"


def labelled(run: dict[str, Any]) -> str:
    if run.get("labelled_at_drain") is None:
        return "n/a"
    after = run["all_labelled_after_s"]
    return f"{run['labelled_at_drain']} ({after if after is not None else 'not all'})"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| database | agents | claims/s | server ceiling (raw, same concurrency) | share of ceiling "
        "| drained after (s) | claims per agent | lost races (share of claims) "
        "| owner labels at drain (all after s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for res in results:
        for run, top in zip(res["agents"], res["ceiling"], strict=True):
            share = (
                f"{run['claims_per_s'] / top['claims_per_s']:.0%}"
                if run["claims_per_s"] and top["claims_per_s"]
                else "n/a"
            )
            lines.append(
                f"| {res['database']} | {run['agents']} | {run['claims_per_s']} "
                f"| {top['claims_per_s']} (C={top['concurrency']}) | {share} | {run['drain_s']} "
                f"| {' / '.join(map(str, run['claimed_per_agent']))} "
                f"| {lost(run)} | {labelled(run)} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--source", help="run the agents from this checkout (PYTHONPATH)")
    parser.add_argument(
        "--agent-env", action="append", default=[], metavar="KEY=VALUE", help="for every agent (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per drain")
    parser.add_argument("--out", default=str(BENCH / "out-multi"))
    args = parser.parse_args()
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": args.runs,
        "source": args.source or str(ROOT),
        "agent_env": args.agent_env,
        "load_at_start": load(),
        "machine": machine_info(),
        "databases": [],
    }
    for db in args.db:
        results["databases"].append(bench_database(db, args, out_dir))
        (out_dir / "multi_agent.json").write_text(json.dumps(results, indent=2))
    results["load_at_end"] = load()
    results["table"] = table(results["databases"])
    (out_dir / "multi_agent.json").write_text(json.dumps(results, indent=2))
    print(f"\nload average at start {results['load_at_start']}, at end {results['load_at_end']}")
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
