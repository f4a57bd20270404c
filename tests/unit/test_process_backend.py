"""The process backend with real processes: exit codes, process groups, output."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import psutil
import pytest

from agent.backends.base import BackendOptions, Job, LaunchError
from agent.backends.process import ProcessBackend
from agent.infra.process import ProcessKind, ProcessRuntime
from agent.infra.spec import RunContext
from agent.outcome import Reason

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")


def _job(command: str, **extra: object) -> Job:
    kind = ProcessKind(python=sys.executable, base_env={"PATH": os.environ["PATH"]})
    config = kind.config_from_pool({"command": command, **extra}, pool_type="process", source="test")
    payload = kind.build_payload(config, RunContext("run-1", "run", env={"SECRET": "x"}))
    return Job("run-1", "run", "process", payload, kind.runtime(config))


def _run(command: str, **extra: object):
    async def scenario():
        backend = ProcessBackend(BackendOptions(), hostname="here")
        handle = await backend.launch(_job(command, **extra))
        assert handle.pid.startswith("here:")
        return await backend.wait(handle)

    return anyio.run(scenario)


def test_exit_code_and_last_output_are_reported() -> None:
    outcome = _run("sh -c 'echo about to fail; exit 3'")
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 3
    assert "about to fail" in outcome.detail


def test_sigkill_is_a_negative_code_with_oom_warning() -> None:
    outcome = _run("sh -c 'kill -9 $$'")
    assert outcome.exit_code == -9 and outcome.oom


def test_runs_in_the_given_working_dir(tmp_path: Path) -> None:
    outcome = _run("sh -c 'pwd > here.txt'", working_dir=str(tmp_path))
    assert outcome.succeeded
    assert (tmp_path / "here.txt").read_text().strip() == str(tmp_path)


def test_missing_program_is_a_launch_error_naming_the_fix() -> None:
    with pytest.raises(LaunchError, match="command not found.*'command'"):
        _run("no-such-program-xyz")


def test_kill_takes_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"

    async def scenario():
        backend = ProcessBackend(BackendOptions(), hostname="here")
        # the shell ignores SIGTERM, so the kill must escalate; its child must die too
        handle = await backend.launch(_job(f"sh -c 'trap \"\" TERM; sleep 300 & echo $! > {marker}; wait'"))
        while not marker.exists() or not marker.read_text().strip():
            await anyio.sleep(0.05)
        grandchild = int(marker.read_text())
        await backend.kill(handle, grace=0.5)
        outcome = await backend.wait(handle)
        await backend.kill(handle, grace=0.5)  # idempotent
        return grandchild, outcome

    grandchild, outcome = anyio.run(scenario)
    assert outcome.exit_code == -9
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


def test_a_handle_from_another_host_is_refused() -> None:
    backend = ProcessBackend(BackendOptions(), hostname="here")
    handle = backend.parse_pid("elsewhere:123")
    with pytest.raises(Exception, match="elsewhere"):
        anyio.run(lambda: backend.kill(handle, 1))


def test_customizations_patch_the_launch_payload(tmp_path: Path) -> None:
    marker = tmp_path / "out.txt"
    patches = [
        {"op": "add", "path": "/env/GREETING", "value": "patched"},
        {"op": "replace", "path": "/command/2", "value": f"echo $GREETING > {marker}"},
    ]
    kind = ProcessKind(python=sys.executable, base_env={"PATH": os.environ["PATH"]})
    resolved = {"command": "sh -c 'exit 9'", "customizations": patches}
    config = kind.config_from_pool(resolved, pool_type="process", source="test")
    from agent.infra.patch import apply_customizations

    payload = apply_customizations(
        kind.build_payload(config, RunContext("run-1", "run")),
        kind.customizations(config),
        field="customizations",
        source="test",
    )

    async def scenario():
        backend = ProcessBackend(BackendOptions(), hostname="here")
        job = Job("run-1", "run", "process", payload, ProcessRuntime())
        return await backend.wait(await backend.launch(job))

    assert anyio.run(scenario).succeeded
    assert marker.read_text().strip() == "patched"


def test_a_failing_output_sink_never_stalls_the_process_or_loses_its_end() -> None:
    """More output than a pipe holds, to a sink that fails at once: the output is still read
    (a full pipe would block the flow forever), and the run ends with its own code."""
    calls: list[str] = []

    def broken(line: str) -> None:
        calls.append(line)
        raise OSError("the sink is gone")

    async def scenario():
        backend = ProcessBackend(BackendOptions(), hostname="here")
        job = _job(f"{sys.executable} -c \"[print('x' * 99, i) for i in range(3000)]; raise SystemExit(3)\"")
        handle = await backend.launch(replace(job, output=broken))
        with anyio.fail_after(60):
            return await backend.wait(handle)

    outcome = anyio.run(scenario)
    assert outcome.reason is Reason.EXITED and outcome.exit_code == 3
    assert "2999" in outcome.detail and len(calls) == 1
