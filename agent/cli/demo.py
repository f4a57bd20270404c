"""`flow-agent demo`: three runs that show what the agent does, end to end, in a minute.

One run completes, one fails, one is SIGKILLed while running (as the kernel OOM killer
would) and must come back CRASHED with an OOM warning. The demo creates its pool, flow and
deployments through `agent.api` (idempotently, so it can be run again), starts the real
agent as a child process, plays the OOM killer, and checks the three outcomes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from agent.api.client import PrefectClient
from agent.api.errors import ApiError
from agent.api.flow_runs import create_flow_run_from_deployment, read_flow_run
from agent.api.models import RunInfo, StateType
from agent.cli.embedded import ServerExtraMissing, ServerStartError, embedded_server
from agent.orchestrate.register import register_local_deployment
from agent.settings import Settings

__all__ = ["DEMO_FLOW", "DEMO_POOL", "CASES", "DemoCase", "examples_dir", "run_demo"]

DEMO_POOL = "flow-agent-demo"
DEMO_FLOW = "flow-agent-demo"
RUN_TIMEOUT = 180.0
POLL_EVERY = 0.5
AGENT_STOP_GRACE = 15.0  # all runs are terminal by then: the agent has nothing to drain
AGENT_KILL_GRACE = 40.0  # the agent's own kill_grace (30 s) plus reporting


@dataclass(frozen=True)
class DemoCase:
    deployment: str
    entrypoint: str
    expected: str  # the final state type
    job_variables: dict[str, Any] = field(default_factory=dict)


CASES: tuple[DemoCase, ...] = (
    DemoCase("demo-succeeds", "flows.py:hello", "COMPLETED"),
    DemoCase("demo-fails", "flows.py:fails", "FAILED"),
    DemoCase("demo-oom", "flows.py:hog", "CRASHED", {"env": {"FLOW_AGENT_DEMO": "oom"}}),
)
_OOM_CASE = "demo-oom"


def examples_dir() -> Path | None:
    """The repository's examples directory; None when running from an installed wheel."""
    path = Path(__file__).resolve().parents[2] / "examples"  # agent/cli/demo.py → the checkout
    return path if (path / "flows.py").is_file() else None


# -- setup through the REST API ------------------------------------------------------------


async def _create_deployments(client: PrefectClient, examples: Path) -> dict[str, str]:
    """Pool, flow and deployments (all idempotent); deployment name to id."""
    ids: dict[str, str] = {}
    for case in CASES:
        deployment = await register_local_deployment(
            client,
            flow_name=DEMO_FLOW,
            name=case.deployment,
            pool=DEMO_POOL,
            entrypoint=case.entrypoint,
            directory=str(examples),
            job_variables=case.job_variables,
        )
        ids[case.deployment] = deployment.id
    return ids


async def _trigger_runs(client: PrefectClient, deployments: dict[str, str]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for name, deployment_id in deployments.items():
        runs[name] = (await create_flow_run_from_deployment(client, deployment_id)).id
    return runs


# -- the agent child -------------------------------------------------------------------------


def _agent_env(settings: Settings, api_url: str) -> dict[str, str]:
    # The agent child inherits the user's environment (PATH, proxies, PREFECT_* settings)
    # and is pointed at the demo's server; both names, since FLOW_AGENT_* wins.
    env = dict(os.environ)
    env["PREFECT_API_URL"] = env["FLOW_AGENT_API_URL"] = api_url
    if settings.api_key is not None:
        env["PREFECT_API_KEY"] = settings.api_key.get_secret_value()
    if settings.api_auth_string is not None:
        env["PREFECT_API_AUTH_STRING"] = settings.api_auth_string.get_secret_value()
    return env


def _agent_command() -> list[str]:
    return [sys.executable, "-m", "agent", "start", "--pool", DEMO_POOL, "--limit", "5"]


@contextlib.contextmanager
def _running_agent(settings: Settings, api_url: str, log: TextIO) -> Iterator[subprocess.Popen[bytes]]:
    # Own session: a Ctrl-C reaches the demo only, which then stops the agent in order.
    proc = subprocess.Popen(
        _agent_command(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_agent_env(settings, api_url),
        start_new_session=True,
    )
    try:
        yield proc
    except BaseException:
        # Interrupted (Ctrl-C) or failed: the runs need not finish, only end truthfully.
        _stop_agent(proc, drain=1.0)
        raise
    _stop_agent(proc)


def _stop_agent(proc: subprocess.Popen[bytes], drain: float = AGENT_STOP_GRACE) -> None:
    """First SIGTERM: graceful. Second: the agent kills what still runs. Then SIGKILL."""
    for sig, wait in (
        (signal.SIGTERM, drain),
        (signal.SIGTERM, AGENT_KILL_GRACE),
        (signal.SIGKILL, 5.0),
    ):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


# -- watching, and playing the OOM killer ------------------------------------------------------


def _pid_of(infrastructure_pid: str) -> int | None:
    # "host:pid" from flow-agent, a bare "pid" from a Prefect 3.8 worker.
    try:
        return int(infrastructure_pid.rsplit(":", 1)[-1])
    except ValueError:
        return None


def _oom_kill(run: RunInfo, echo: Callable[[str], None]) -> bool:
    """SIGKILL the hog once it is RUNNING and its pid is known; True once done."""
    pid = _pid_of(run.infrastructure_pid or "")
    if run.current_type is not StateType.RUNNING or pid is None:
        return False
    echo(f"demo-oom is running as pid {pid}: sending SIGKILL, as the kernel OOM killer would")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


async def _watch(
    client: PrefectClient,
    runs: dict[str, str],
    agent: subprocess.Popen[bytes],
    echo: Callable[[str], None],
) -> dict[str, RunInfo]:
    """Poll until every run is terminal (or the timeout); the last copy of each run."""
    latest: dict[str, RunInfo] = {}
    killed = False
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        for name, run_id in runs.items():
            with contextlib.suppress(ApiError):  # a missed poll is repeated next tick
                latest[name] = await read_flow_run(client, run_id)
        if not killed and _OOM_CASE in latest:
            killed = _oom_kill(latest[_OOM_CASE], echo)
        if all(name in latest and latest[name].is_final for name in runs):
            break
        if agent.poll() is not None:
            echo(f"The agent exited early with code {agent.returncode}.")
            break
        await anyio.sleep(POLL_EVERY)
    return latest


# -- the report ------------------------------------------------------------------------------------


def _state(run: RunInfo | None) -> tuple[str, str, str]:
    state = run.state if run is not None else None
    if state is None:
        return "-", "-", ""
    return state.type.value, state.name or "-", state.message or ""


def _shorten(text: str, head: int = 110, tail: int = 90) -> str:
    # Crash messages carry the run's last output; the start and the verdict at the end matter.
    # Cut between words, never inside one (the OOM verdict must stay readable).
    if len(text) <= head + tail + 5:
        return text
    start, end = text[:head], text[-tail:]
    start = start.rsplit(" ", 1)[0] if " " in start and not text[head].isspace() else start
    end = end.split(" ", 1)[1] if " " in end and not text[-tail - 1].isspace() else end
    return f"{start.rstrip()} ... {end.lstrip()}"


def _table(latest: dict[str, RunInfo]) -> str:
    rows = [("deployment", "state", "message")]
    for case in CASES:
        kind, name, message = _state(latest.get(case.deployment))
        rows.append((case.deployment, f"{kind}/{name}", _shorten(" ".join(message.split()))))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
    return "\n".join(lines)


def _problems(latest: dict[str, RunInfo]) -> list[str]:
    problems = []
    for case in CASES:
        kind, _, message = _state(latest.get(case.deployment))
        if kind != case.expected:
            problems.append(f"{case.deployment} ended {kind}, expected {case.expected}")
        elif case.deployment == _OOM_CASE and "OOM" not in message.upper():
            problems.append(f"{case.deployment} is CRASHED but its message has no OOM warning")
    return problems


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no agent log)"


# -- the command -----------------------------------------------------------------------------------


def _server(settings: Settings, echo: Callable[[str], None]) -> contextlib.AbstractContextManager[str]:
    if settings.api_url:
        echo(f"Using the Prefect server at {settings.api_url}")
        return contextlib.nullcontext(settings.api_url)
    return embedded_server(
        data_dir=settings.data_dir, port=settings.server_port, python=settings.python, echo=echo
    )


def _client(settings: Settings, api_url: str) -> PrefectClient:
    return PrefectClient.from_settings(settings, api_url=api_url)


async def _demo(settings: Settings, api_url: str, examples: Path, echo: Callable[[str], None]) -> int:
    log_path = settings.data_dir / "demo-agent.log"
    async with _client(settings, api_url) as client:
        runs = await _trigger_runs(client, await _create_deployments(client, examples))
        echo(f"Created 3 runs in work pool {DEMO_POOL!r}; starting the agent (log: {log_path})")
        with log_path.open("w") as log, _running_agent(settings, api_url, log) as agent:
            latest = await _watch(client, runs, agent, echo)
    echo("")
    echo(_table(latest))
    echo("")
    problems = _problems(latest)
    if problems:
        echo("Demo FAILED: " + "; ".join(problems) + ".")
        echo(f"Last lines of the agent log ({log_path}):\n{_tail(log_path)}")
        return 1
    echo("Demo OK: completed, failed, and an OOM kill reported as CRASHED with an OOM warning.")
    return 0


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> int:
    """The `flow-agent demo` command; the process exit status."""
    examples = examples_dir()
    if examples is None:
        echo(
            "The demo needs the example flows (examples/flows.py), which are only in a source "
            "checkout of flow-agent, not in the installed package. Clone the repository and "
            "run `pip install -e '.[server]'` there, then `flow-agent demo`."
        )
        return 1
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _server(settings, echo) as api_url:
            return anyio.run(_demo, settings, api_url, examples, echo)
    except (ServerExtraMissing, ServerStartError, ApiError) as exc:
        echo(f"Demo could not run: {exc}")
        return 1
    except KeyboardInterrupt:
        echo("Demo interrupted; the agent, its runs and the local server were stopped.")
        return 130
