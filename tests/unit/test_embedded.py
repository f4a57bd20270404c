"""Fast unit tests for the embedded server: the missing-extra message and port choice.

No real server is started here (that is the integration suite's job).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import embedded
from agent.cli.embedded import ServerExtraMissing, embedded_server, free_port, port_is_free


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _fake_python(tmp_path: Path, exit_code: int, server: str = "") -> str:
    """A stand-in interpreter: `-c "import prefect"` exits `exit_code`; else runs `server`."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exit {exit_code}; fi\n{server}\n')
    script.chmod(0o755)
    return str(script)


def test_missing_extra_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    server = embedded_server(data_dir=tmp_path / "data", port=0, python=sys.executable)
    with pytest.raises(ServerExtraMissing) as info, server:
        pytest.fail("the body must not run")
    message = str(info.value)
    assert "pip install 'flow-agent[server]'" in message
    assert "prefect==3.8.8" in message
    assert "PREFECT_API_URL" in message
    assert not (tmp_path / "data").exists()  # checked before anything is created


def test_other_interpreter_without_prefect(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, exit_code=1)
    with pytest.raises(ServerExtraMissing, match="flow-agent\\[server\\]") as info:
        embedded._check_prefect(python)
    assert python in str(info.value)


def test_other_interpreter_with_prefect(tmp_path: Path) -> None:
    embedded._check_prefect(_fake_python(tmp_path, exit_code=0))  # does not raise


def test_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(ServerExtraMissing, match="does not exist"):
        embedded._check_prefect(str(tmp_path / "no-such-python"))


def test_is_a_runtime_error() -> None:
    assert issubclass(ServerExtraMissing, RuntimeError)


def test_busy_port_is_not_free(busy_port: int) -> None:
    assert not port_is_free(busy_port)


def test_free_port_is_free() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert port_is_free(port)


def test_requested_port_is_kept_when_free() -> None:
    port = free_port()
    assert embedded._choose_port(port) == port


def test_busy_port_is_replaced(busy_port: int) -> None:
    chosen = embedded._choose_port(busy_port)
    assert chosen != busy_port
    assert port_is_free(chosen)


def test_port_zero_picks_one() -> None:
    assert embedded._choose_port(0) > 0


def test_no_state_file_means_no_server(tmp_path: Path) -> None:
    assert embedded._read_running(tmp_path) is None


@pytest.mark.parametrize("content", ["not json", "{}", '{"pid": "x", "port": 1}'])
def test_broken_state_file_is_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / "server.json").write_text(content)
    assert embedded._read_running(tmp_path) is None


def test_state_of_an_unrelated_process_is_ignored(tmp_path: Path) -> None:
    # Our own pid is alive but is not a prefect server: a recycled pid must not be reused.
    (tmp_path / "server.json").write_text(json.dumps({"pid": embedded.os.getpid(), "port": 1}))
    assert embedded._read_running(tmp_path) is None


def test_state_is_cleared_only_by_its_owner(tmp_path: Path) -> None:
    embedded._write_state(tmp_path, pid=123, port=4200)
    embedded._clear_state(tmp_path, pid=456)
    assert (tmp_path / "server.json").exists()
    embedded._clear_state(tmp_path, pid=123)
    assert not (tmp_path / "server.json").exists()


def test_server_env(tmp_path: Path) -> None:
    env = embedded._server_env(tmp_path, {"PREFECT_API_URL": "http://x/api", "PATH": "/bin"})
    assert "PREFECT_API_URL" not in env
    assert env["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PATH"] == "/bin"


def test_server_exiting_early_reports_its_log(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, 0, server="echo 'boom: database is broken'; exit 3")
    server = embedded_server(data_dir=tmp_path / "data", port=0, python=python, echo=lambda _: None)
    with pytest.raises(embedded.ServerStartError, match="code 3") as info, server:
        pytest.fail("the body must not run")
    assert "boom: database is broken" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_server_never_healthy_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    python = _fake_python(tmp_path, 0, server=f"echo $$ > {pid_file}; exec sleep 600")
    server = embedded_server(
        data_dir=tmp_path / "data", port=0, python=python, echo=lambda _: None, timeout=1.0
    )
    with pytest.raises(embedded.ServerStartError, match="did not answer"), server:
        pytest.fail("the body must not run")
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the server stand-in {pid} was left running")
    assert not (tmp_path / "data" / "server.json").exists()
