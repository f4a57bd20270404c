"""A real flow's time to its first line: flow-agent warm, flow-agent cold, `prefect worker`.

    /work/.venv/bin/python bench/real_flow.py [--runs 10] [--burst 8] [--out bench/out]

One local SQLite Prefect server; the contenders one after the other, each with its own
fresh `process` pool (Prefect's default base job template) and a deployment of a real flow
with a `set_working_directory` pull step that writes the time its body starts, then sleeps.
The figure is that time minus the run's `created` time on the server (one clock: one
machine). Each contender gets one warm-up run first (not counted: its own start-up, and the
warm engine's import, are not a run's latency), then:

* one at a time: `--runs` runs, each created once the previous one has ended; p50 and max;
* a burst: `--burst` runs created at once, each sleeping long enough that all run together;
  p50 and max, and the PSS of the contender's whole process tree (agent or worker, warm
  engine, supervisors, engines) once every body has started.

Everything is written to <out>/real_flow.json; a markdown table is printed. No targets are
asserted: bench/RESULTS.md keeps the figures with the machine they came from.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from run import (
    ROOT,
    TEMPLATE,
    Api,
    free_port,
    kill_group,
    log,
    machine_info,
    parse_ts,
    start_server,
    wait_http,
)

FLOW = """\
import time
from pathlib import Path

from prefect import flow


@flow
def first_line(out: str, hold: float = 0.0) -> None:
    Path(out).write_text(repr(time.time()))
    time.sleep(hold)
"""

CONTENDERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "flow-agent warm": (
        [sys.executable, "-m", "agent", "start", "--pool", "{pool}", "--name", "bench-warm"],
        {"FLOW_AGENT_WARM_START": "true"},
    ),
    "flow-agent cold": (
        [sys.executable, "-m", "agent", "start", "--pool", "{pool}", "--name", "bench-cold"],
        {"FLOW_AGENT_WARM_START": "false"},
    ),
    "prefect worker": (
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "{pool}", "--type", "process"],
        {},
    ),
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prepare(api: Api, name: str, flow_dir: Path) -> tuple[str, str]:
    """A fresh pool and a deployment of FLOW in `flow_dir`; (pool, deployment id)."""
    pool = f"real-{name.replace(' ', '-')}-{uuid.uuid4().hex[:6]}"
    template = json.loads(TEMPLATE.read_text())
    api.call("POST", "/work_pools/", json={"name": pool, "type": "process", "base_job_template": template})
    flow = api.call("POST", "/flows/", json={"name": "first-line"}).json()
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(flow_dir)}}]
    body = {
        "name": pool,
        "flow_id": flow["id"],
        "work_pool_name": pool,
        "entrypoint": "flows.py:first_line",
        "path": str(flow_dir),
        "pull_steps": pull,
        "enforce_parameter_schema": False,
    }
    return pool, api.call("POST", "/deployments/", json=body).json()["id"]


def create(api: Api, deployment: str, out: Path, hold: float) -> dict[str, Any]:
    params = {"out": str(out), "hold": hold}
    return api.call("POST", f"/deployments/{deployment}/create_flow_run", json={"parameters": params}).json()


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ended(api: Api, run_id: str) -> bool:
    state = api.call("GET", f"/flow_runs/{run_id}").json().get("state") or {}
    return state.get("type") in TERMINAL


def latency(run: dict[str, Any], out: Path) -> float:
    return float(out.read_text()) - parse_ts(run["created"])


def phases(api: Api, run: dict[str, Any], out: Path) -> dict[str, float]:
    """Where the time to the first line went: created -> first PENDING (the claim) -> RUNNING
    (the engine started, loaded the run, ran the pull step, proposed RUNNING) -> first line."""
    states = api.call("GET", "/flow_run_states/", params={"flow_run_id": run["id"]}).json()
    first = {}
    for state in sorted(states, key=lambda s: parse_ts(s["timestamp"])):
        first.setdefault(state["type"], parse_ts(state["timestamp"]))
    created, body = parse_ts(run["created"]), float(out.read_text())
    pending, running = first.get("PENDING", created), first.get("RUNNING", body)
    return {"claim": pending - created, "start": running - pending, "body": body - running}


def median_phases(all_phases: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(p[key] for p in all_phases), 3) for key in all_phases[0]}


def tree_pss(pid: int) -> tuple[float, int, dict[str, float]]:
    """(PSS in MiB, processes, PSS in MiB by role) of pid and its descendants."""
    root = psutil.Process(pid)
    total, count, roles = 0, 0, {}
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            pss = proc.memory_full_info().pss
            role = _role(proc, root)
            roles[role] = roles.get(role, 0.0) + pss / 2**20
            total += pss
            count += 1
    return total / 2**20, count, {role: round(mib, 1) for role, mib in sorted(roles.items())}


def _role(proc: psutil.Process, root: psutil.Process) -> str:
    if proc.pid == root.pid:
        return "agent or worker"
    line = " ".join(proc.cmdline())
    if "zygote.py" in line:
        return "warm engine"
    if "shim.py" in line or "agent.backends.process.shim" in line:
        return "supervisors"
    return "engines"


def run_contender(
    api: Api, api_url: str, name: str, runs: int, burst: int, hold: float, work: Path
) -> dict[str, Any]:
    cmd, extra = CONTENDERS[name]
    flow_dir = work / name.replace(" ", "-") / "flow"
    flow_dir.mkdir(parents=True)
    (flow_dir / "flows.py").write_text(FLOW)
    outs = flow_dir.parent / "out"
    outs.mkdir()
    pool, deployment = prepare(api, name, flow_dir)
    home = flow_dir.parent / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "PREFECT_"))}
    env |= {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "FLOW_AGENT_DATA_DIR": str(home / "agent")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
    log_path = flow_dir.parent / "contender.log"
    result: dict[str, Any] = {"pool": pool, "command": " ".join(cmd), "log": str(log_path)}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [c.replace("{pool}", pool) for c in cmd],
            env=env,
            cwd=str(home),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            log(f"{name}: pid {proc.pid}, warming up")
            first = create(api, deployment, outs / "warmup", 0.0)
            wait(lambda: ended(api, first["id"]), 180, "the warm-up run")
            one, one_phases = [], []
            for n in range(runs):
                out = outs / f"one-{n}"
                run = create(api, deployment, out, 0.0)
                wait(lambda run=run: ended(api, run["id"]), 120, f"run {n}")  # type: ignore[misc]
                one.append(latency(run, out))
                one_phases.append(phases(api, run, out))
            log(f"{name}: one at a time p50 {statistics.median(one):.2f} s")
            made = [
                (create(api, deployment, outs / f"burst-{n}", hold), outs / f"burst-{n}")
                for n in range(burst)
            ]
            wait(lambda: all(out.exists() for _, out in made), 180, "every burst run's first line")
            pss, processes, roles = tree_pss(proc.pid)
            lat = [latency(run, out) for run, out in made]
            wait(lambda: all(ended(api, run["id"]) for run, _ in made), 180, "the burst to end")
            states = [api.call("GET", f"/flow_runs/{run['id']}").json()["state"]["type"] for run, _ in made]
            burst_phases = [phases(api, run, out) for run, out in made]
        finally:
            kill_group(proc, 30)
    result |= {
        "one_at_a_time_s": [round(x, 3) for x in one],
        "one_p50_s": round(statistics.median(one), 3),
        "one_max_s": round(max(one), 3),
        "one_phases_p50_s": median_phases(one_phases),
        "burst_phases_p50_s": median_phases(burst_phases),
        "burst_s": [round(x, 3) for x in lat],
        "burst_p50_s": round(statistics.median(lat), 3),
        "burst_max_s": round(max(lat), 3),
        "burst_pss_mib": round(pss, 1),
        "burst_processes": processes,
        "burst_pss_by_role_mib": roles,
        "burst_states": states,
    }
    log(f"{name}: burst p50 {result['burst_p50_s']} s, max {result['burst_max_s']} s, PSS {pss:.0f} MiB")
    return result


def table(results: dict[str, Any]) -> str:
    names = list(results["contenders"])
    rows = [
        ("one at a time, p50 (s)", "one_p50_s"),
        ("one at a time, max (s)", "one_max_s"),
        (f"burst of {results['burst']}, p50 (s)", "burst_p50_s"),
        (f"burst of {results['burst']}, max (s)", "burst_max_s"),
        (f"PSS of the tree, {results['burst']} flows running (MiB)", "burst_pss_mib"),
    ]
    lines = ["| | " + " | ".join(names) + " | warm/cold | warm/prefect |", "|---" * (len(names) + 3) + "|"]
    for label, key in rows:
        values = [results["contenders"][n].get(key) for n in names]
        by = dict(zip(names, values, strict=True))

        def ratio(a: str, b: str, by: dict[str, Any] = by) -> str:
            return f"{by[a] / by[b]:.2f}×" if by.get(a) and by.get(b) else "-"

        cells = " | ".join(f"{v}" for v in values)
        lines.append(
            f"| {label} | {cells} | {ratio('flow-agent warm', 'flow-agent cold')} | "
            f"{ratio('flow-agent warm', 'prefect worker')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs one at a time, per contender")
    parser.add_argument("--burst", type=int, default=8, help="runs created at once, per contender")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each burst run sleeps")
    parser.add_argument("--only", choices=list(CONTENDERS), action="append")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--keep", help="work in this directory and keep it (contender logs, flows)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_average_before": os.getloadavg(),
        "runs": args.runs,
        "burst": args.burst,
        "contenders": {},
    }
    with tempfile.TemporaryDirectory(prefix="real-flow-") as tmp:
        work = Path(tmp if args.keep is None else args.keep)
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = start_server(work / "server-home", port, out_dir / "real_flow_server.log")
        api = Api(f"http://127.0.0.1:{port}/api")
        try:
            wait_http(f"http://127.0.0.1:{port}/api/health", server, 120, "the Prefect server")
            for name in args.only or list(CONTENDERS):
                results["contenders"][name] = run_contender(
                    api, f"http://127.0.0.1:{port}/api", name, args.runs, args.burst, args.hold, work
                )
        finally:
            api.close()
            kill_group(server, 10)
    results["load_average_after"] = os.getloadavg()
    (out_dir / "real_flow.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
