"""flow-agent vs `prefect worker start --type process`: one command, one server, two contenders.

    /work/.venv/bin/python bench/run.py [--runs 200] [--out bench/out]

See bench/README.md for what is measured and how. Writes <out>/results.json and a log per
contender (<out>/<contender>.log); prints a table with the ratios and PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "agent" / "infra" / "templates" / "process.json"
PROXY = Path(__file__).resolve().parent / "proxy.py"

# Targets (flow-agent): first claim under 1 s; >= 2x Prefect's claims/s; <= 3 requests per
# launched run; idle RSS under a third of Prefect's.
TARGET_FIRST_CLAIM_S = 1.0
TARGET_CLAIMS_RATIO = 2.0
TARGET_REQUESTS_PER_RUN = 3.0
TARGET_RSS_RATIO = 1 / 3

PREFECT_WORKER_DEFAULTS = {
    "PREFECT_WORKER_QUERY_SECONDS": "10 (poll interval, +-30 % jitter; default left as is)",
    "PREFECT_WORKER_PREFETCH_SECONDS": "10 (default left as is)",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "30 (default left as is)",
    "--limit": "none",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- machine ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = psutil.virtual_memory().total / 2**30

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "flow_agent": version("flow-agent"),
    }


# -- processes ----------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process, wait up to `grace`, then SIGKILL its whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum of RSS in bytes, number of processes) of pid and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    count = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
            count += 1
    return total, count


def cpu_seconds(pid: int, children: bool = False) -> float:
    """user+system CPU seconds of pid (and its reaped children if asked, plus live ones)."""
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system
        if children:
            total += t.children_user + t.children_system
            for p in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = p.cpu_times()
                    total += c.user + c.system
        return total
    except psutil.Error:
        return 0.0


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- server API (direct, not through the proxy) -------------------------------------------


class Api:
    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        delay = 0.2
        for _ in range(30):
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code not in (502, 503):
                r.raise_for_status()
                return r
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise RuntimeError(f"{method} {path}: server kept failing")

    def close(self) -> None:
        self.http.close()


def start_server(home: Path, port: int, log_file: Path) -> subprocess.Popen[Any]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    env.pop("PREFECT_API_URL")
    out = log_file.open("wb")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    return subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before becoming healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{what} not healthy after {timeout:.0f} s")


# -- one contender ------------------------------------------------------------------------


def prepare(api: Api, name: str, runs: int) -> dict[str, Any]:
    """A fresh pool, a deployment running `true`, and a backlog of `runs` scheduled runs."""
    pool = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    template = json.loads(TEMPLATE.read_text())
    api.call("POST", "/work_pools/", json={"name": pool, "type": "process", "base_job_template": template})
    flow = api.call("POST", "/flows/", json={"name": "bench-flow"}).json()
    deployment = api.call(
        "POST",
        "/deployments/",
        json={
            "name": f"bench-{name}",
            "flow_id": flow["id"],
            "work_pool_name": pool,
            "entrypoint": "bench_flow.py:bench_flow",
            "job_variables": {"command": "true"},
        },
    ).json()
    t = time.monotonic()
    ids = []
    for _ in range(runs):
        run = api.call("POST", f"/deployments/{deployment['id']}/create_flow_run", json={}).json()
        ids.append(run["id"])
    log(f"{name}: pool {pool}, {runs} runs created in {time.monotonic() - t:.1f} s")
    return {"pool": pool, "deployment_id": deployment["id"], "run_ids": ids}


def count_claimed(api: Api, deployment_id: str) -> int:
    body = {
        "flow_runs": {
            "deployment_id": {"any_": [deployment_id]},
            "state": {"type": {"not_any_": ["SCHEDULED"]}},
        }
    }
    return int(api.call("POST", "/flow_runs/count", json=body).json())


def read_runs(api: Api, deployment_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = api.call(
            "POST",
            "/flow_runs/filter",
            json={
                "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
                "limit": 200,
                "offset": len(out),
                "sort": "ID_DESC",
            },
        ).json()
        out.extend(page)
        if len(page) < 200:
            return out


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def settled(run: dict[str, Any]) -> bool:
    """Claimed and launched (pid reported), or claimed and given up (terminal state)."""
    if run["state_type"] == "SCHEDULED":
        return False
    return bool(run.get("infrastructure_pid")) or run["state_type"] in TERMINAL


def proxy_stats(proxy: str) -> dict[str, Any]:
    return httpx.get(f"{proxy}/__proxy__/stats", timeout=10).json()


def run_contender(
    api: Api,
    proxy: str,
    name: str,
    cmd: list[str],
    env_extra: dict[str, str],
    runs: int,
    out_dir: Path,
    home: Path,
    drain_timeout: float,
    stall_timeout: float,
    server_pid: int,
) -> dict[str, Any]:
    prep = prepare(api, name, runs)
    pool = prep["pool"]
    cmd = [c.replace("{pool}", pool) for c in cmd]
    env = {
        **os.environ,
        **env_extra,
        "PREFECT_API_URL": f"{proxy}/api",
        "PREFECT_HOME": str(home / f"home-{name}"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    (home / f"home-{name}").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / f"{name}.log"
    result: dict[str, Any] = {"command": cmd, "pool": pool, "runs": runs, "log": str(log_path)}

    httpx.post(f"{proxy}/__proxy__/reset", timeout=10).raise_for_status()
    cpu_server_0 = cpu_seconds(server_pid, children=True)
    with log_path.open("wb") as out:
        t_popen = time.time()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(home),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            log(f"{name}: started pid {proc.pid}: {' '.join(cmd)}")
            # 1. wait until every run is settled: claimed and launched (pid set), or claimed
            #    and ended (e.g. crashed by the contender). If progress stalls for
            #    `stall_timeout`, stop and count requests up to the last progress.
            deadline = time.monotonic() + drain_timeout
            drained_at = None
            peak_tree = 0
            progress = (-1, time.monotonic(), time.time(), proxy_stats(proxy))
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
                peak_tree = max(peak_tree, len(descendants(proc.pid)))
                done = count_claimed(api, prep["deployment_id"])
                if done >= runs:
                    flow_runs = read_runs(api, prep["deployment_id"])
                    done = runs + sum(1 for r in flow_runs if settled(r))
                if done > progress[0]:
                    progress = (done, time.monotonic(), time.time(), proxy_stats(proxy))
                if done >= 2 * runs:
                    drained_at = time.time()
                    break
                if time.monotonic() - progress[1] > stall_timeout:
                    log(f"{name}: no progress for {stall_timeout:.0f} s, giving up waiting")
                    break
                time.sleep(0.25)
            stats_drained = proxy_stats(proxy) if drained_at else progress[3]
            cpu_server = cpu_seconds(server_pid, children=True) - cpu_server_0
            cpu_contender = cpu_seconds(proc.pid, children=True)
            window = (drained_at or time.time()) - t_popen
            result["cpu_during_drain"] = {
                "wall_s": round(window, 2),
                "server_cpu_s": round(cpu_server, 2),
                "server_cpu_share": round(cpu_server / window, 2),
                "contender_cpu_s_incl_children": round(cpu_contender, 2),
            }
            flow_runs = read_runs(api, prep["deployment_id"])
            launched = sum(1 for r in flow_runs if r.get("infrastructure_pid"))
            result["launched"] = launched
            result["final_states"] = dict(Counter(f"{r['state_type']}/{r['state_name']}" for r in flow_runs))
            if drained_at is None:
                result["requests_counted_until_s"] = round(progress[2] - t_popen, 2)
                result["error"] = (
                    f"backlog not drained: "
                    f"{sum(1 for r in flow_runs if r['state_type'] != 'SCHEDULED')} claimed, "
                    f"{launched} with a pid"
                )
                log(f"{name}: {result['error']}")
            else:
                log(
                    f"{name}: backlog drained {drained_at - t_popen:.1f} s after start: "
                    f"{launched} launched, states {result['final_states']}"
                )

            # 2. idle: children gone, then ~5 s, then max of 3 RSS samples 1 s apart
            t_wait = time.monotonic()
            while descendants(proc.pid) and time.monotonic() - t_wait < 60:
                time.sleep(0.25)
            lingering = [f"{p.pid}:{_safe_name(p)}" for p in descendants(proc.pid)]
            time.sleep(5)
            stats_idle_start = proxy_stats(proxy)
            result["states_at_idle"] = dict(
                Counter(f"{r['state_type']}/{r['state_name']}" for r in read_runs(api, prep["deployment_id"]))
            )
            samples = []
            for i in range(3):
                if i:
                    time.sleep(1)
                samples.append(tree_rss(proc.pid))
            idle_window = 30.0  # long enough for several polls of either contender
            time.sleep(max(0.0, idle_window - 2.0))
            stats_idle_end = proxy_stats(proxy)
        finally:
            t_stop = time.monotonic()
            kill_group(proc, 30)
            result["stop_seconds"] = round(time.monotonic() - t_stop, 2)
            result["exit_code"] = proc.returncode

    # 3. claim timestamps from the server's state history
    pending: list[float] = []
    for run_id in prep["run_ids"]:
        states = api.call("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
        ts = [parse_ts(s["timestamp"]) for s in states if s["type"] == "PENDING"]
        if ts:
            pending.append(min(ts))
    pending.sort()

    requests = stats_drained["requests"]
    idle_requests = stats_idle_end["requests"] - stats_idle_start["requests"]
    idle_seconds = stats_idle_end["now"] - stats_idle_start["now"]
    rss_bytes = max(s[0] for s in samples)
    result.update(
        {
            "claimed": len(pending),
            "first_claim_s": round(pending[0] - t_popen, 3) if pending else None,
            "last_claim_s": round(pending[-1] - t_popen, 3) if pending else None,
            "claims_per_s": (
                round(len(pending) / (pending[-1] - pending[0]), 2)
                if len(pending) > 1 and pending[-1] > pending[0]
                else None
            ),
            "drain_s": round(drained_at - t_popen, 2) if drained_at else None,
            "requests": requests,
            "requests_per_run": round(requests / launched, 3) if launched else None,
            # up to the idle window: also counts what happens after the children exit
            "requests_until_idle": stats_idle_start["requests"],
            "requests_per_run_until_idle": (
                round(stats_idle_start["requests"] / launched, 3) if launched else None
            ),
            "requests_after_drain_by_path": _diff(stats_idle_start["by_path"], stats_drained["by_path"]),
            "requests_by_path": stats_drained["by_path"],
            "mean_latency_ms_by_path": stats_drained["mean_ms_by_path"],
            "requests_by_status": stats_drained["by_status"],
            "proxy_errors": stats_drained["proxy_errors"],
            "proxy_retries": stats_drained["proxy_retries"],
            "ws_connections": stats_drained["ws_connections"],
            "ws_frames": stats_drained["ws_frames_total"],
            "ws_frames_in": stats_drained["ws_frames_in"],
            "ws_frames_out": stats_drained["ws_frames_out"],
            "idle_requests_per_min": round(idle_requests / idle_seconds * 60, 1),
            "idle_requests_by_path": _diff(stats_idle_end["by_path"], stats_idle_start["by_path"]),
            "idle_rss_mib": round(rss_bytes / 2**20, 1),
            "idle_rss_samples_mib": [round(s[0] / 2**20, 1) for s in samples],
            "idle_processes": max(s[1] for s in samples),
            "peak_children": peak_tree,
            "lingering_children_at_idle": lingering,
        }
    )
    return result


def _safe_name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    d = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v}


# -- report -------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    fa = results["contenders"].get("flow-agent", {})
    pw = results["contenders"].get("prefect", {})
    lines = [
        f"flow-agent vs prefect worker (process), {results['runs']} runs each, "
        f"command `true`, no concurrency limit — {results['date']}",
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}",
        f"python {m['python']}, prefect {m['prefect']}, flow-agent {m['flow_agent']}",
        "prefect worker settings: "
        + ", ".join(f"{k}={v}" for k, v in results["prefect_worker_settings"].items()),
        "",
        f"{'':28}{'flow-agent':>14}{'prefect':>14}{'ratio':>10}   target",
    ]
    rows = results["targets"]

    def row(label: str, key: str, spec: str, unit: str) -> None:
        r = rows[key]
        lines.append(
            f"{label:28}{fmt(fa.get(key), spec, unit):>14}{fmt(pw.get(key), spec, unit):>14}"
            f"{fmt(r['ratio'], '.2f', 'x'):>10}   {r['target']}: {r['verdict']}"
        )

    row("first claim (s)", "first_claim_s", ".2f", "")
    row("claims per second", "claims_per_s", ".1f", "")
    row("API requests per run", "requests_per_run", ".2f", "")
    row("idle RSS, process tree (MiB)", "idle_rss_mib", ".1f", "")
    lines += [
        "",
        f"{'backlog drained after (s)':28}{fmt(fa.get('drain_s')):>14}{fmt(pw.get('drain_s')):>14}",
        f"{'idle requests per minute':28}{fmt(fa.get('idle_requests_per_min'), '.1f'):>14}"
        f"{fmt(pw.get('idle_requests_per_min'), '.1f'):>14}",
        f"{'requests/run incl. exits':28}{fmt(fa.get('requests_per_run_until_idle')):>14}"
        f"{fmt(pw.get('requests_per_run_until_idle')):>14}",
        f"{'runs launched (pid set)':28}{fa.get('launched', 'n/a'):>14}{pw.get('launched', 'n/a'):>14}",
        f"{'503 answers while draining':28}"
        f"{fa.get('requests_by_status', {}).get('503', 0):>14}"
        f"{pw.get('requests_by_status', {}).get('503', 0):>14}",
        f"{'server CPU share, draining':28}"
        f"{fmt(fa.get('cpu_during_drain', {}).get('server_cpu_share')):>14}"
        f"{fmt(pw.get('cpu_during_drain', {}).get('server_cpu_share')):>14}",
        f"{'websocket connections':28}{sum(fa.get('ws_connections', {}).values()):>14}"
        f"{sum(pw.get('ws_connections', {}).values()):>14}",
        f"{'websocket frames':28}{fa.get('ws_frames', 0):>14}{pw.get('ws_frames', 0):>14}",
    ]
    for name, c in results["contenders"].items():
        if c.get("error"):
            lines.append(f"{name}: ERROR {c['error']}")
        if c.get("final_states"):
            lines.append(f"states, {name}: at drain {c['final_states']}, idle {c.get('states_at_idle')}")
        top = list(c.get("requests_by_path", {}).items())[:6]
        lat = c.get("mean_latency_ms_by_path", {})
        if top:
            lines.append(
                f"top requests, {name}: " + ", ".join(f"{k} ×{v} ({lat.get(k, 0):.0f} ms)" for k, v in top)
            )
    return "\n".join(lines)


def targets(fa: dict[str, Any], pw: dict[str, Any]) -> dict[str, Any]:
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    first = fa.get("first_claim_s")
    claims = ratio(fa.get("claims_per_s"), pw.get("claims_per_s"))
    rpr = fa.get("requests_per_run")
    rss = ratio(fa.get("idle_rss_mib"), pw.get("idle_rss_mib"))
    return {
        "first_claim_s": {
            "ratio": ratio(first, pw.get("first_claim_s")),
            "target": f"flow-agent < {TARGET_FIRST_CLAIM_S:g} s",
            "verdict": verdict(None if first is None else first < TARGET_FIRST_CLAIM_S),
        },
        "claims_per_s": {
            "ratio": claims,
            "target": f">= {TARGET_CLAIMS_RATIO:g}x prefect",
            "verdict": verdict(None if claims is None else claims >= TARGET_CLAIMS_RATIO),
        },
        "requests_per_run": {
            "ratio": ratio(rpr, pw.get("requests_per_run")),
            "target": f"flow-agent <= {TARGET_REQUESTS_PER_RUN:g}",
            "verdict": verdict(None if rpr is None else rpr <= TARGET_REQUESTS_PER_RUN),
        },
        "idle_rss_mib": {
            "ratio": rss,
            "target": "< 1/3 of prefect",
            "verdict": verdict(None if rss is None else rss < TARGET_RSS_RATIO),
        },
    }


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="backlog per contender")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument(
        "--only",
        choices=["flow-agent", "prefect"],
        action="append",
        help="run only this contender (repeatable; default both)",
    )
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=90.0,
        help="give up waiting for the backlog after this long without progress",
    )
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    contenders = {
        "flow-agent": (
            [sys.executable, "-m", "agent", "start", "--pool", "{pool}", "--name", "bench-flow-agent"],
            {},
        ),
        "prefect": (
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "{pool}",
                "--type",
                "process",
                "--name",
                "bench-prefect-worker",
            ],
            {},
        ),
    }
    selected = args.only or list(contenders)

    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": args.runs,
        "machine": machine_info(),
        "prefect_worker_settings": PREFECT_WORKER_DEFAULTS,
        "flow_agent_settings": {k: v for k, v in os.environ.items() if k.startswith("FLOW_AGENT_")}
        or "defaults",
        "contenders": {},
    }

    # Ctrl-C and SIGTERM both unwind through the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    home = Path(tempfile.mkdtemp(prefix="flow-agent-bench-"))
    server: subprocess.Popen[Any] | None = None
    proxy_proc: subprocess.Popen[Any] | None = None
    api: Api | None = None
    try:
        port = free_port()
        server = start_server(home / "server-home", port, out_dir / "server.log")
        base = f"http://127.0.0.1:{port}"
        log(f"prefect server starting on {base} (PREFECT_HOME={home / 'server-home'})")
        wait_http(f"{base}/api/health", server, 180, "prefect server")
        log("prefect server healthy")

        pport = free_port()
        proxy = f"http://127.0.0.1:{pport}"
        proxy_proc = subprocess.Popen(
            [sys.executable, str(PROXY), "--upstream", base, "--port", str(pport)],
            stdin=subprocess.DEVNULL,
            stdout=(out_dir / "proxy.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{proxy}/__proxy__/stats", proxy_proc, 30, "counting proxy")
        log(f"counting proxy on {proxy}")

        api = Api(f"{base}/api")
        for name in selected:
            cmd, env_extra = contenders[name]
            try:
                results["contenders"][name] = run_contender(
                    api,
                    proxy,
                    name,
                    cmd,
                    env_extra,
                    args.runs,
                    out_dir,
                    home,
                    args.drain_timeout,
                    args.stall_timeout,
                    server.pid,
                )
            except RuntimeError as exc:
                log(f"{name}: FAILED: {exc}")
                results["contenders"][name] = {"error": str(exc)}
            (out_dir / "results.json").write_text(json.dumps(results, indent=2))

        results["targets"] = targets(
            results["contenders"].get("flow-agent", {}), results["contenders"].get("prefect", {})
        )
        results["report"] = report(results)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        print()
        print(results["report"])
        print(f"\nresults: {out_dir / 'results.json'}")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if api is not None:
            api.close()
        if proxy_proc is not None:
            kill_group(proxy_proc, 5)
        if server is not None:
            kill_group(server, 15)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
