"""FlowHooks, the agent's side of running a flow's hooks: which interpreter, what the run's
logs say, the time bound. The child here is a stand-in interpreter (a shell script) that
answers as hooks_child.py would; the real child runs in tests/integration/test_flow_hooks.py."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import psutil
import structlog

from agent.backends.base import Job
from agent.infra.process import ProcessRuntime
from agent.observe.logging import REDACTOR
from agent.runtime.hooks import FlowHooks

SECRET = "hooks-secret-value-0123"


def _job(command: list[str], lines: list[str], env: dict[str, str] | None = None) -> Job:
    payload = {"command": command, "env": {"PATH": "/usr/bin:/bin", **(env or {})}, "cwd": None}
    return Job("run-1", "run", "process", payload, ProcessRuntime(), output=lines.append)


def _python(tmp_path: Path, body: str) -> str:
    """A stand-in interpreter: argv is -c BOOT CHILD WHICH RUN_ID RESULT."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_the_runs_engine_interpreter_runs_the_hooks_else_the_agents() -> None:
    hooks = FlowHooks("/agent/python")
    assert hooks.python_for(_job(["/venv/bin/python", "-m", "prefect.engine"], [])) == "/venv/bin/python"
    supervisor = ["/venv/bin/python", "-m", "prefect.runner._workspace_supervisor"]
    assert hooks.python_for(_job(supervisor, [])) == "/venv/bin/python"
    assert hooks.python_for(_job(["sh", "-c", "python -m prefect.engine"], [])) == "/agent/python"


def test_each_hook_is_one_line_in_the_runs_logs_and_the_output_is_masked(tmp_path: Path) -> None:
    REDACTOR.add(SECRET)
    result = '{"loaded": true, "hooks": [{"hook": "alert", "ok": true}, ' + (
        '{"hook": "cleanup", "ok": false, "error": "RuntimeError: token ' + SECRET + '"}]}'
    )
    python = _python(
        tmp_path,
        f'echo "hook $4 for $5 sees $CONTROL_LEFT and {SECRET}"\necho \'{result}\' > "$6"\n',
    )
    lines: list[str] = []
    job = _job(["sh", "-c", "true"], lines, env={"CONTROL_LEFT": "env-passed"})
    with structlog.testing.capture_logs() as logs:
        anyio.run(FlowHooks(python).run, "crashed", job)

    assert lines == ["hook crashed for run-1 sees env-passed and ********"]
    said = [(log["log_level"], log["event"]) for log in logs if log.get("flow_run_id") == "run-1"]
    assert ("info", "on_crashed hook 'alert' ran") in said
    assert ("error", "on_crashed hook 'cleanup' failed: RuntimeError: token ********") in said


def test_a_flow_that_cannot_be_loaded_says_why(tmp_path: Path) -> None:
    python = _python(tmp_path, 'echo \'{"loaded": false, "error": "ValueError: no entrypoint"}\' > "$6"\n')
    with structlog.testing.capture_logs() as logs:
        anyio.run(FlowHooks(python).run, "cancellation", _job(["x"], []))
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == [
        "could not load the flow to run its on_cancellation hooks: ValueError: no entrypoint"
    ]


def test_hooks_that_run_too_long_are_stopped_with_what_they_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    python = _python(tmp_path, f"sleep 60 &\necho $! > {pids}\nwait\n")
    with structlog.testing.capture_logs() as logs:
        anyio.run(FlowHooks(python, timeout=1.0).run, "crashed", _job(["x"], []))
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == [
        "the flow's on_crashed hooks did not finish within 1 s; stopped them"
    ]
    grandchild = int(pids.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_an_interpreter_that_cannot_start_is_said(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        anyio.run(FlowHooks(str(tmp_path / "missing-python")).run, "crashed", _job(["x"], []))
    assert [log["event"] for log in logs if log["log_level"] == "error"] == [
        "could not start the flow's on_crashed hooks"
    ]


def test_a_hook_that_leaves_something_running_in_the_background_still_finishes(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    result = '{"loaded": true, "hooks": [{"hook": "notify", "ok": true}]}'
    python = _python(tmp_path, f"sleep 30 &\necho $! > {pids}\necho '{result}' > \"$6\"\n")
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        anyio.run(FlowHooks(python, timeout=60).run, "crashed", _job(["x"], []))
    took = time.monotonic() - started
    psutil.Process(int(pids.read_text())).kill()
    assert "on_crashed hook 'notify' ran" in [log["event"] for log in logs]
    assert took < 10  # not the 60 s bound: the child's exit is the end
