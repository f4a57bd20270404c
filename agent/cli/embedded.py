"""The local Prefect server started when PREFECT_API_URL is unset.

Prefect is only ever a *child* here: `python -m prefect server start` in its own session,
its SQLite database under `data_dir/prefect`, its output in `data_dir/server.log`. A small
state file (`data_dir/server.json`) records the server we started so that a second
flow-agent on the same data directory reuses it instead of opening the same SQLite file
from a second server process.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil

__all__ = ["ServerExtraMissing", "ServerStartError", "embedded_server", "free_port", "port_is_free"]

HOST = "127.0.0.1"
START_TIMEOUT = 90.0
STOP_GRACE = 10.0
_STATE_FILE = "server.json"
_LOCK_FILE = "server.lock"
_LOG_FILE = "server.log"


class ServerExtraMissing(RuntimeError):
    """Prefect (the `server` extra) is not installed where the server would run."""

    def __init__(self, python: str, detail: str = "") -> None:
        where = "this environment" if python == sys.executable else f"the environment of {python}"
        message = (
            f"No Prefect server is configured and Prefect is not installed in {where}"
            f"{f' ({detail})' if detail else ''}.\n"
            "Either install the local server extra:\n"
            "    pip install 'flow-agent[server]'    # installs prefect==3.8.8\n"
            "or point the agent at an existing server:\n"
            "    export PREFECT_API_URL=http://<host>:4200/api"
        )
        super().__init__(message)


class ServerStartError(RuntimeError):
    """The server process exited or never became healthy; carries the end of its log."""


# -- checks ------------------------------------------------------------------------------


def _check_prefect(python: str) -> None:
    if python == sys.executable:
        if importlib.util.find_spec("prefect") is None:
            raise ServerExtraMissing(python)
        return
    # Another interpreter: only it can tell whether it has prefect installed.
    try:
        done = subprocess.run([python, "-c", "import prefect"], capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ServerExtraMissing(python, "that interpreter does not exist") from None
    except subprocess.TimeoutExpired:
        raise ServerExtraMissing(python, "`import prefect` did not finish in 60 s") from None
    if done.returncode != 0:
        raise ServerExtraMissing(python)


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether `host:port` can be bound now (a hint: another process may take it later).

    With SO_REUSEADDR, as the server (uvicorn) binds: the TIME_WAIT sockets a server that
    just stopped leaves behind do not make the port look busy, a listener still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/api/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return "(no server log)"


# -- the state file: which server, if any, this data_dir already has ---------------------


def _read_running(data_dir: Path) -> int | None:
    """The port of a live, healthy server we started earlier from this data_dir."""
    try:
        state = json.loads((data_dir / _STATE_FILE).read_text())
        pid, port = int(state["pid"]), int(state["port"])
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    # A recycled pid would not be a prefect server; a live one must also answer.
    if "prefect" not in cmdline or "server" not in cmdline:
        return None
    return port if _healthy(port) else None


def _write_state(data_dir: Path, pid: int, port: int) -> None:
    tmp = data_dir / f"{_STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "port": port, "started_at": time.time()}))
    tmp.replace(data_dir / _STATE_FILE)


def _clear_state(data_dir: Path, pid: int) -> None:
    path = data_dir / _STATE_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_text())["pid"]) == pid:
            path.unlink()


@contextlib.contextmanager
def _startup_lock(data_dir: Path) -> Iterator[None]:
    # Two agents starting at once must not both decide "no server yet" and start one each.
    with (data_dir / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- the child process ----------------------------------------------------------------------


def _server_env(data_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    env = dict(environ)
    env.pop("PREFECT_API_URL", None)  # the server must not think it is a client of another
    env["PREFECT_HOME"] = str(data_dir / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def _spawn(python: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    command = [python, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    # The child inherits the agent's environment (it is the user's Prefect, after all).
    env = _server_env(data_dir, dict(os.environ))
    (data_dir / "prefect").mkdir(parents=True, exist_ok=True)
    with (data_dir / _LOG_FILE).open("ab") as log:
        # A new session: Ctrl-C in the terminal reaches the agent only, which then stops
        # the server itself, after the runs that still need it have reported.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServerStartError(
                f"The local Prefect server exited with code {code} before it was ready. "
                f"Last lines of {log}:\n{_tail(log)}"
            )
        if _healthy(port, timeout=1.0):
            return
        time.sleep(0.25)
    raise ServerStartError(
        f"The local Prefect server did not answer /api/health within {timeout:.0f} s. "
        f"Last lines of {log}:\n{_tail(log)}"
    )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Gone already (ESRCH), or (EPERM) no longer ours: nothing left to stop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM the whole group (uvicorn and services are children), then SIGKILL."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    # The leader may be gone while a grandchild still holds the port and the database.
    _signal_group(proc.pid, signal.SIGKILL)


def _choose_port(port: int) -> int:
    return port if port and port_is_free(port) else free_port()


@contextlib.contextmanager
def embedded_server(
    *,
    data_dir: Path,
    port: int,
    python: str,
    echo: Callable[[str], None] = print,
    timeout: float = START_TIMEOUT,
) -> Iterator[str]:
    """Yields the api url (http://127.0.0.1:PORT/api).

    Stops the server on exit, also when the body raises or on KeyboardInterrupt, unless
    the server was already running (started by another flow-agent on this data_dir): what
    we did not start, we do not stop.
    """
    _check_prefect(python)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / _LOG_FILE
    proc: subprocess.Popen[bytes] | None = None
    try:
        with _startup_lock(data_dir):
            running = _read_running(data_dir)
            if running is not None:
                echo(f"Reusing the local Prefect server already running from {data_dir}")
                chosen = running
            else:
                chosen = _choose_port(port)
                if port and chosen != port:
                    echo(f"Port {port} is busy; the local Prefect server uses {chosen}")
                echo(f"Starting a local Prefect server (log: {log})")
                proc = _spawn(python, data_dir, chosen)
                _wait_healthy(proc, chosen, log, timeout)
                _write_state(data_dir, proc.pid, chosen)
        echo(f"Prefect UI: http://{HOST}:{chosen}")
        yield f"http://{HOST}:{chosen}/api"
    finally:
        if proc is not None:
            _stop(proc)
            _clear_state(data_dir, proc.pid)
