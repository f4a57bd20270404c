"""The process start path: the engine, or Prefect's workspace supervisor for uv projects."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import anyio
import pytest

from agent.backends.process import workspace
from agent.infra.process import SUPERVISOR_MODULE, ProcessKind
from agent.infra.spec import RunContext

KIND = ProcessKind(python="/opt/venv/bin/python", base_env={"PATH": "/usr/bin:/bin"})


def _command(env: dict[str, str | None], command: str | None = None) -> list[str]:
    resolved = {"env": env, **({"command": command} if command else {})}
    config = KIND.config_from_pool(resolved, pool_type="process", source="test")
    return KIND.build_payload(config, RunContext("run-1", "run"))["command"]


@pytest.mark.parametrize("value", ["true", "True", "1", "yes", "on"])
def test_a_run_asking_for_its_dependencies_gets_the_supervisor(value: str) -> None:
    env = {"PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": value}
    assert _command(env) == ["/opt/venv/bin/python", "-m", SUPERVISOR_MODULE]


@pytest.mark.parametrize("env", [{}, {"PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "false"}])
def test_other_runs_get_the_engine(env: dict[str, str]) -> None:
    assert _command(env) == ["/opt/venv/bin/python", "-m", "prefect.engine"]


def test_a_configured_command_is_kept() -> None:
    env = {"PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "true"}
    assert _command(env, "python flow.py") == ["python", "flow.py"]


def test_the_supervisor_gets_a_private_config_naming_the_run_and_its_workspace(tmp_path: Path) -> None:
    command = [sys.executable, "-m", SUPERVISOR_MODULE]
    env = {"PATH": os.environ["PATH"]}
    prepared, attempt = anyio.run(
        lambda: workspace.prepare(command, flow_run_id="run-1", cwd=str(tmp_path), env=env)
    )
    try:
        assert attempt is not None
        assert prepared[:3] == command and len(prepared) == 4
        config_path = Path(prepared[3])
        assert config_path.parent == Path(attempt)
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(attempt).stat().st_mode) == 0o700
        assert json.loads(config_path.read_text()) == {
            "flow_run_id": "run-1",
            "workspace_root": str(tmp_path.resolve()),
            "manifest_path": str(Path(attempt, "workspace.json")),
            "command": None,
        }
    finally:
        workspace.discard(attempt)
    assert not Path(attempt).exists()


def test_an_interpreter_without_the_supervisor_runs_the_engine(tmp_path: Path) -> None:
    python = tmp_path / "python"  # a Python that finds no prefect
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    python.chmod(0o755)
    command = [str(python), "-m", SUPERVISOR_MODULE]
    prepared, attempt = anyio.run(
        lambda: workspace.prepare(command, flow_run_id="run-1", cwd=str(tmp_path), env={"PATH": "/usr/bin"})
    )
    assert (prepared, attempt) == ([str(python), "-m", "prefect.engine"], None)


def test_other_commands_are_left_alone(tmp_path: Path) -> None:
    command = ["sh", "-c", "exit 0"]
    prepared = anyio.run(lambda: workspace.prepare(command, flow_run_id="r", cwd=str(tmp_path), env={}))
    assert prepared == (command, None)
