"""Every error a user meets on the command line is one line that says what failed and the
fix, never a traceback, with the command's documented exit code (issue 17).

Each case runs the real CLI in a child process (`python -m agent ...`). "Server down" is a
closed port on this host; the retry budget is the CLI's own short one, or one second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from support.server import PrefectServer

pytestmark = pytest.mark.integration

UNKNOWN_ID = "6f1c6a58-1d49-4c1b-9a0e-000000000017"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOW_AGENT_"))}
    base["FLOW_AGENT_DATA_DIR"] = os.environ.get("TMPDIR", "/tmp") + "/flow-agent-cli-errors"
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line, after asserting: no traceback, the exit code, exactly one `error:`
    line and it is the last (lines before it may say what is being tried)."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    return errors[0]


@pytest.fixture
def down() -> dict[str, str]:
    return {"PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api", "FLOW_AGENT_RETRY_BUDGET": "1"}


@pytest.fixture
def up(prefect_server: PrefectServer) -> dict[str, str]:
    return {"PREFECT_API_URL": prefect_server.api_url}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- render -----------------------------------------------------------------------------------


def test_render_not_a_uuid(down: dict[str, str]) -> None:
    line = one_error(cli("render", "not-a-uuid", env=down), 2)
    assert "'not-a-uuid' is not a flow run id" in line and "flow-agent flow-runs ls" in line


def test_render_unknown_run(up: dict[str, str]) -> None:
    line = one_error(cli("render", UNKNOWN_ID, env=up), 1)
    assert f"no flow run {UNKNOWN_ID}" in line and "flow-agent flow-runs ls" in line


def test_render_server_down_gives_up_quickly(down: dict[str, str]) -> None:
    started = time.monotonic()
    done = cli("render", UNKNOWN_ID, env=down)
    line = one_error(done, 1)
    assert time.monotonic() - started < 15
    assert "no Prefect server answered at" in line and "PREFECT_API_URL" in line
    assert "retrying" in done.stderr  # said while it was happening, not silent


def test_cli_budget_is_short_without_settings() -> None:
    """No FLOW_AGENT_RETRY_BUDGET: the CLI's own budget (8 s), not the agent's 60 s."""
    started = time.monotonic()
    port = closed_port()
    done = cli("flow-runs", "ls", env={"FLOW_AGENT_SERVER_PORT": str(port)})
    elapsed = time.monotonic() - started
    line = one_error(done, 4)
    assert elapsed < 20, elapsed
    # no PREFECT_API_URL: the first line says at once which server is tried
    assert done.stderr.splitlines()[0].startswith("PREFECT_API_URL is not set: trying the local server")
    assert f"127.0.0.1:{port}" in done.stderr.splitlines()[0] and "flow-agent start" in line


# -- run and flow-runs without a server -----------------------------------------------------------


def test_run_without_server_url_says_what_it_tries() -> None:
    port = closed_port()
    env = {"FLOW_AGENT_SERVER_PORT": str(port), "FLOW_AGENT_RETRY_BUDGET": "1"}
    done = cli("run", "etl/nightly", env=env)
    line = one_error(done, 4)
    assert f"trying the local server at http://127.0.0.1:{port}/api" in done.stderr
    assert "no Prefect server answered" in line


def test_ctrl_c_stops_retrying_at_once() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOW_AGENT_"))},
        "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api",
        "FLOW_AGENT_RETRY_BUDGET": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "flow-runs", "ls"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a child of a non-interactive shell may inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 20
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first "retrying" line: it is in a retry sleep now
    assert "retrying" in first and time.monotonic() < deadline, first
    proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    out, rest = proc.communicate(timeout=10)
    assert time.monotonic() - stopped < 3
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, first + rest)
    assert one_error(done, 130) == "error: interrupted"


def test_blocks_server_down(down: dict[str, str]) -> None:
    done = cli("blocks", "list", env=down)
    line = one_error(done, 1)
    assert "no Prefect server answered at" in line and "retrying" in done.stderr


def test_flow_runs_ls_unknown_state() -> None:
    line = one_error(cli("flow-runs", "ls", "--state", "NOPE"), 2)
    assert "'NOPE' is no state" in line and "Late" in line


def test_run_unknown_deployment(up: dict[str, str]) -> None:
    line = one_error(cli("run", f"no-such-flow-{uuid.uuid4().hex[:6]}/nightly", env=up), 4)
    assert "not found" in line


# -- start: the health server's address --------------------------------------------------------


def test_start_health_port_in_use(down: dict[str, str], busy_port: int) -> None:
    line = one_error(cli("start", "--pool", "p", "--health-port", str(busy_port), env=down), 2)
    assert f"port {busy_port} is in use" in line and "--health-port" in line


def test_start_unknown_health_host(down: dict[str, str]) -> None:
    env = {**down, "FLOW_AGENT_HEALTH_HOST": "zzz.invalid", "FLOW_AGENT_HEALTH_PORT": str(closed_port())}
    line = one_error(cli("start", "--pool", "p", env=env), 2)
    assert "cannot serve /healthz on zzz.invalid" in line and "FLOW_AGENT_HEALTH_HOST" in line


# -- settings: errors name only options that exist -------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["kill_grace", "log_level", "prefetch_seconds", "heartbeat_interval", "retry_max", "server_port"],
)
def test_setting_without_a_flag_names_only_its_variable(down: dict[str, str], field: str) -> None:
    env = {**down, f"FLOW_AGENT_{field.upper()}": "x"}
    line = one_error(cli("start", env=env), 2)
    assert f"FLOW_AGENT_{field.upper()}" in line
    assert "--" not in line and "flag" not in line, line


def test_setting_with_a_flag_names_both(down: dict[str, str]) -> None:
    line = one_error(cli("start", env={**down, "FLOW_AGENT_LIMIT": "x"}), 2)
    assert "flag --limit or FLOW_AGENT_LIMIT" in line
    line = one_error(cli("start", "--poll-interval", "-1", env=down), 2)
    assert "flag --poll-interval or FLOW_AGENT_POLL_INTERVAL" in line
