"""Warm starts (issue 18): a run forked from the warm engine behaves as a cold one.

The same real flow runs under an agent with warm starts (the default) and one with
FLOW_AGENT_WARM_START=false, four ways each: it completes, fails, is SIGKILLed (the OOM
warning) and is cancelled. Both ways must give the flow the same environment (Prefect's
settings read from the run's env, the job's variables), working directory, process layout
and signal dispositions, and the server the same logs and final states. Which way a run
started is read from the process tree: a cold supervisor is the agent's child, a warm one
the warm engine's.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import psutil
import pytest
from support.agent_proc import AgentProcess
from support.prefect_api import (
    TERMINAL,
    PrefectAPI,
    os_pid,
    process_gone,
    state_message,
    state_type,
    wait_for,
)

pytestmark = pytest.mark.integration

PARITY_FLOW = """\
import contextlib, json, os, signal, sys, time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.settings import get_current_settings


def handler_name(sig):
    handler = signal.getsignal(sig)
    return getattr(handler, "__qualname__", str(handler))


def open_files():
    # what the process holds open besides files it reads now and then, sockets and pipes
    # (the engine's threads and API connections come and go): devices and anon inodes
    # (a pidfd or an event loop the warm engine left behind would show here)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/") or target.startswith("anon_inode:"):
            found.append(target)
    return sorted(found)


def sockets_of(pid):
    # a warm engine's socket kept open by a supervisor would hide the engine's death
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return found


def facts():
    supervisor = os.getppid()
    with open(f"/proc/{supervisor}/stat") as stat:
        supervisor_parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    settings = get_current_settings()
    return {
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PREFECT", "PARITY_"))},
        "cwd": os.getcwd(),
        "path": sys.path,
        "argv": sys.argv,
        "group_of_supervisor": os.getpgid(0) == supervisor and os.getsid(0) == supervisor,
        "supervisor": supervisor,
        "supervisor_parent": supervisor_parent,
        "signals": [handler_name(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)],
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "stdin": os.readlink("/proc/self/fd/0"),
        "fds": open_files(),
        "supervisor_sockets": sockets_of(supervisor),
        "api_url": settings.api.url,
        "retries": settings.tasks.default_retries,
        "log_level": settings.logging.level,
        "ssl_cert_file": settings.api.ssl_cert_file,
    }


@flow(log_prints=True)
def parity(mode: str, out: str) -> str:
    get_run_logger().info("parity %s starts", mode)
    print(f"printed by {mode}")
    Path(out).write_text(json.dumps(facts()))
    if mode == "fail":
        raise ValueError("parity failure")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        time.sleep(300)
    return mode
"""

JOB_ENV = {
    "PARITY_JOB": "from-the-job",
    # the default of Prefect's api.ssl_cert_file, read when Prefect is imported
    "SSL_CERT_FILE": certifi.where(),
    "PREFECT_TASKS_DEFAULT_RETRIES": "2",
    "PREFECT_LOGGING_LEVEL": "DEBUG",
}
MODES = ("ok", "fail", "kill", "sleep")
# what differs between two runs of the same flow anyway, whichever way they start
_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+(\.\d+)?|'[a-z]+-[a-z]+'")
_TEMP_DIR = re.compile(
    r"/[^\"]*/flow-agent-[a-z0-9_]+"
)  # the run's own working directory before the pull step
_LAST_OUTPUT = re.compile(r"; last output: .*?(?=; OOM warning|$)", re.S)
_RUN_SPECIFIC = {
    "PREFECT__FLOW_RUN_ID",
    "PREFECT__DEPLOYMENT_ID",
    "PREFECT__DEPLOYMENT_NAME",
    "PREFECT__FLOW_ID",
}


def parity_deployment(api: PrefectAPI, pool: str, flow_dir: Path) -> str:
    flow_dir.mkdir(parents=True)
    (flow_dir / "flows.py").write_text(PARITY_FLOW)
    api.create_process_pool(pool)
    return another_parity_deployment(api, pool, flow_dir, "parity", JOB_ENV)


def another_parity_deployment(
    api: PrefectAPI, pool: str, flow_dir: Path, name: str, env: dict[str, str]
) -> str:
    """One more deployment of the parity flow already in `flow_dir`, with its own job env."""
    return api.create_deployment(
        api.create_flow("parity"),
        f"{pool}-{name}",
        pool,
        entrypoint="flows.py:parity",
        path=str(flow_dir),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(flow_dir)}}],
        job_variables={"env": env},
    )


def start_all_modes(api: PrefectAPI, deployment: str, out: Path) -> dict[str, str]:
    """{mode: run id}, one run of each mode."""
    return {
        mode: api.create_flow_run(deployment, parameters={"mode": mode, "out": str(out / f"{mode}.json")})[
            "id"
        ]
        for mode in MODES
    }


def finish_all_modes(api: PrefectAPI, runs: dict[str, str], out: Path) -> dict[str, Any]:
    """Cancel the sleeping run once its body runs; {mode: (run, facts)} once all ended."""
    wait_for(lambda: (out / "sleep.json").exists(), 120, message="the sleeping run to start its body")
    pid = os_pid(api.read_flow_run(runs["sleep"]))
    api.cancel(runs["sleep"])
    ended = {mode: api.wait_for_state(run, *TERMINAL, timeout=120) for mode, run in runs.items()}
    wait_for(lambda: process_gone(pid), 30, message=f"the cancelled run's process group {pid} to end")
    return {mode: (ended[mode], json.loads((out / f"{mode}.json").read_text())) for mode in MODES}


def comparable(facts: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The facts without what differs between any two runs: pids, ids, their directory."""
    facts = json.loads(_TEMP_DIR.sub("<temp>", json.dumps(facts).replace(str(directory), "<dir>")))
    facts["env"] = {k: ("<run>" if k in _RUN_SPECIFIC else v) for k, v in facts["env"].items()}
    del facts["supervisor"], facts["supervisor_parent"]
    return facts


def log_lines(api: PrefectAPI, run: dict[str, Any], way: str, tmp_path: Path) -> list[tuple[int, str]]:
    """The run's logs as (level, first line), blanking what differs between any two runs:
    ids, numbers, the run's name, its pool's and its directory's."""
    blanks = {str(tmp_path / way): "<dir>", run["name"]: "<name>", run["work_pool_name"]: "<pool>"}
    lines = set()
    for log in api.read_logs(run["id"]):
        # the last output lines the agent quotes depend on which thread printed last
        line = log["message"].split("\n")[0].split("; last output:")[0]
        for text, blank in blanks.items():
            line = line.replace(text, blank)
        lines.add((log["level"], _IDS.sub("#", line)))
    return sorted(lines)


def _verdict(message: str) -> str:
    """A state message with its quoted last output lines blanked: which lines came last
    depends on which of the engine's threads printed last, whichever way the run started."""
    return _IDS.sub("#", _LAST_OUTPUT.sub("; last output: ...", message))


def same_logs(
    api: PrefectAPI, warm: dict[str, Any], cold: dict[str, Any], tmp_path: Path
) -> Callable[[], bool]:
    return lambda: log_lines(api, warm, "warm", tmp_path) == log_lines(api, cold, "cold", tmp_path)


def test_a_warm_run_behaves_as_a_cold_one(api: PrefectAPI, pool: str, start_agent, tmp_path: Path) -> None:
    agents: dict[str, AgentProcess] = {}
    deployments = {}
    for way in ("warm", "cold"):
        deployments[way] = parity_deployment(api, f"{pool}-{way}", tmp_path / way / "flow")
        (tmp_path / way / "out").mkdir()
        env = {"FLOW_AGENT_WARM_START": "false"} if way == "cold" else None
        agents[way] = start_agent(f"{pool}-{way}", env=env)
    runs = {way: start_all_modes(api, deployments[way], tmp_path / way / "out") for way in agents}
    results = {way: finish_all_modes(api, runs[way], tmp_path / way / "out") for way in agents}

    for way, agent in agents.items():
        assert agent.process is not None
        for mode, (_, facts) in results[way].items():
            run = results[way][mode][0]
            assert os_pid(run) == facts["supervisor"], (way, mode)
            started_by_agent = facts["supervisor_parent"] == agent.process.pid
            assert started_by_agent == (way == "cold"), (way, mode, facts["supervisor_parent"])

    for mode in MODES:
        (warm_run, warm), (cold_run, cold) = results["warm"][mode], results["cold"][mode]
        assert state_type(warm_run) == state_type(cold_run), mode
        assert _verdict(state_message(warm_run)) == _verdict(state_message(cold_run)), mode
        assert comparable(warm, tmp_path / "warm") == comparable(cold, tmp_path / "cold"), mode
        assert warm["cwd"] == str(tmp_path / "warm" / "flow"), "the pull step's directory"
        # lines about the end (the agent's, the hooks') may still be on their way: a while to agree
        with contextlib.suppress(AssertionError):
            wait_for(same_logs(api, warm_run, cold_run, tmp_path), 20)
        warm_logs, cold_logs = (
            log_lines(api, warm_run, "warm", tmp_path),
            log_lines(api, cold_run, "cold", tmp_path),
        )
        assert warm_logs == cold_logs, (mode, set(warm_logs) ^ set(cold_logs))

    engine = psutil.Process(results["warm"]["ok"][1]["supervisor_parent"]).environ()
    assert engine["PARITY_JOB"] == "from-the-job", "the engine has its runs' environment"
    assert not [name for name in engine if name.startswith("PREFECT__")], "but no run's ids or token"

    states = {mode: state_type(run) for mode, (run, _) in results["warm"].items()}
    assert states == {"ok": "COMPLETED", "fail": "FAILED", "kill": "CRASHED", "sleep": "CANCELLED"}
    assert "OOM" in state_message(results["warm"]["kill"][0])
    assert all(facts["env"]["PARITY_JOB"] == "from-the-job" for facts in (warm, cold))
    assert warm["retries"] == 2 and warm["log_level"] == "DEBUG"
    assert warm["ssl_cert_file"] == JOB_ENV["SSL_CERT_FILE"]


def test_a_warm_run_reads_the_settings_files_of_its_own_directory_and_a_changed_profile(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    """The warm engine built Prefect's settings at import; a run whose working directory has
    a prefect.toml, or whose profiles file changed since, builds its own as a cold one would."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "parity"\n[profiles.parity]\nPREFECT_TASKS_DEFAULT_RETRIES = "1"\n')
    with_toml = tmp_path / "with-toml"
    with_toml.mkdir()
    (with_toml / "prefect.toml").write_text("[tasks]\ndefault_retries = 4\n")
    flow_dir = tmp_path / "flow"
    deployment = parity_deployment(api, pool, flow_dir)
    profile_env = {"PREFECT_PROFILES_PATH": str(profiles)}
    plain = another_parity_deployment(api, pool, flow_dir, "profile", profile_env)
    agent = start_agent(pool)
    out = tmp_path / "out"
    out.mkdir()

    def run(deployment_id: str, name: str, **job_variables: Any) -> dict[str, Any]:
        params = {"mode": "ok", "out": str(out / f"{name}.json")}
        run_id = api.create_flow_run(deployment_id, parameters=params, job_variables=job_variables)["id"]
        assert state_type(api.wait_for_state(run_id, *TERMINAL, timeout=120)) == "COMPLETED", name
        facts = json.loads((out / f"{name}.json").read_text())
        assert agent.process is not None and facts["supervisor_parent"] != agent.process.pid, f"{name} warm"
        return facts

    assert run(plain, "profile")["retries"] == 1
    assert run(plain, "toml", working_dir=str(with_toml))["retries"] == 4  # prefect.toml beats a profile
    profiles.write_text('active = "parity"\n[profiles.parity]\nPREFECT_TASKS_DEFAULT_RETRIES = "6"\n')
    assert run(plain, "changed-profile")["retries"] == 6
    assert run(deployment, "job-env")["retries"] == 2  # JOB_ENV's: another environment, its own engine


# Started in the warm engine only: a thread there makes forking unsafe, so it refuses.
THREAD_IN_THE_WARM_ENGINE = """\
import sys, threading, time

if sys.argv and sys.argv[0].endswith("zygote.py"):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
"""


def test_a_failed_warm_engine_starts_runs_cold_and_says_so_once(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(THREAD_IN_THE_WARM_ENGINE)
    deployment = parity_deployment(api, pool, tmp_path / "flow")
    agent = start_agent(pool, env={"PYTHONPATH": str(site)})
    out = tmp_path / "out"
    out.mkdir()

    runs = [
        api.create_flow_run(deployment, parameters={"mode": "ok", "out": str(out / f"{n}.json")})["id"]
        for n in range(2)
    ]

    for run in runs:
        assert state_type(api.wait_for_state(run, *TERMINAL, timeout=120)) == "COMPLETED"
    assert agent.process is not None
    for n in range(2):
        facts = json.loads((out / f"{n}.json").read_text())
        assert facts["supervisor_parent"] == agent.process.pid, "started cold, by the agent itself"
    said = [line for line in agent.log_path.read_text().splitlines() if "the warm engine failed" in line]
    assert len(said) == 1, said
    assert "threads after importing prefect" in said[0]


# A flow whose module takes its time to import (until `release` exists), then dies of SIGKILL.
SLOW_IMPORT_FLOW = """\
import os, signal, time
from pathlib import Path

from prefect import flow

RELEASE = Path(__file__).with_name("release")
while not RELEASE.exists():
    time.sleep(0.05)


@flow
def slow(out: str) -> None:
    Path(out).write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_slow_import_holds_up_no_other_run_and_a_dead_warm_engine_loses_no_exit_status(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    deployment = parity_deployment(api, pool, tmp_path / "flow")
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "slow.py").write_text(SLOW_IMPORT_FLOW)
    slow_deployment = api.create_deployment(
        api.create_flow("slow"),
        f"{pool}-slow",
        pool,
        entrypoint="slow.py:slow",
        path=str(tmp_path / "slow"),
        pull_steps=[
            {"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path / "slow")}}
        ],
    )
    agent = start_agent(pool)
    out = tmp_path / "out"
    out.mkdir()

    slow = api.create_flow_run(slow_deployment, parameters={"out": str(out / "slow.json")})["id"]
    api.wait_for_pid(slow)
    quick = api.create_flow_run(deployment, parameters={"mode": "ok", "out": str(out / "quick.json")})["id"]
    assert state_type(api.wait_for_state(quick, *TERMINAL, timeout=120)) == "COMPLETED"
    assert state_type(api.read_flow_run(slow)) == "PENDING", "still importing its flow"

    engine = json.loads((out / "quick.json").read_text())["supervisor_parent"]
    assert agent.process is not None and engine != agent.process.pid, "the quick run started warm"
    psutil.Process(engine).kill()  # the warm engine dies while the slow run is in flight
    (tmp_path / "slow" / "release").touch()

    crashed = api.wait_for_state(slow, *TERMINAL, timeout=120)  # its supervisor recorded -9
    assert state_type(crashed) == "CRASHED" and "exit code -9" in state_message(crashed)
    assert "OOM" in state_message(crashed)
    again = api.create_flow_run(deployment, parameters={"mode": "ok", "out": str(out / "again.json")})["id"]
    assert state_type(api.wait_for_state(again, *TERMINAL, timeout=120)) == "COMPLETED"
    rebuilt = json.loads((out / "again.json").read_text())["supervisor_parent"]
    assert rebuilt not in (engine, agent.process.pid), "started warm by a new engine"
