"""A local run's exit status outlives the agent that launched it (real processes).

An "agent" here is a Python process that launches a run through the process backend and is
then SIGKILLed; a new ProcessBackend on the same state dir plays the restarted agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from agent.backends.base import BackendError, BackendOptions, Job
from agent.backends.process import ProcessBackend
from agent.backends.process.records import Record, RecordStore
from agent.infra.process import ProcessRuntime
from agent.outcome import Reason

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

ROOT = Path(__file__).resolve().parents[2]
HOST = "here"

# Launches one run through the backend, prints its infrastructure pid, then waits to be killed.
AGENT = """
import anyio, os, sys
from pathlib import Path
from agent.backends.base import BackendOptions, Job
from agent.backends.process import ProcessBackend
from agent.infra.process import ProcessRuntime

state, run_id, command = sys.argv[1], sys.argv[2], sys.argv[3:]
env = {"PATH": os.environ["PATH"], "PREFECT__FLOW_RUN_ID": run_id}

async def main():
    options = BackendOptions(state_dir=Path(state)) if state != "-" else BackendOptions()
    backend = ProcessBackend(options, hostname="here")
    payload = {"command": command, "env": env, "cwd": None, "stream_output": True}
    handle = await backend.launch(Job(run_id, run_id, "process", payload, ProcessRuntime()))
    print(handle.pid, flush=True)
    await anyio.sleep(3600)

anyio.run(main)
"""


def _job(run_id: str) -> Job:
    return Job(run_id, run_id, "process", {"command": ["true"]}, ProcessRuntime())


def _agent_launches(state: Path | None, run_id: str, script: str) -> str:
    """Launch `script` from an agent process, SIGKILL that agent, return the run's pid."""
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(state) if state else "-", run_id, "sh", "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None
    pid = agent.stdout.readline().strip()
    agent.kill()
    agent.wait(10)
    assert pid.startswith(f"{HOST}:"), pid
    return pid


def _wait_until(predicate, limit: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gone(pid: str) -> bool:
    number = int(pid.rsplit(":", 1)[1])
    try:
        return psutil.Process(number).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ProcessBackend]:
    yield ProcessBackend(BackendOptions(state_dir=tmp_path / "state"), hostname=HOST)


def test_a_restarted_agent_reports_the_real_exit_code(tmp_path: Path, backend: ProcessBackend) -> None:
    release = tmp_path / "release"
    script = f"while [ ! -e {release} ]; do sleep 0.02; done; echo failing now; exit 3"
    pid = _agent_launches(tmp_path / "state", "run-exit", script)

    async def scenario():
        handle = await backend.find(_job("run-exit"))
        assert handle is not None and handle.pid == pid
        running = await backend.inspect(handle)
        release.touch()  # the run ends while no agent is up
        await anyio.to_thread.run_sync(_wait_until, lambda: _gone(pid))
        ended = await backend.inspect(backend.parse_pid(pid, "run-exit"))  # as the server has it
        with anyio.fail_after(20):
            waited = await backend.wait(handle)
        return running, ended, waited, await backend.find(_job("run-exit"))

    running, ended, waited, after = anyio.run(scenario)
    assert running is None
    assert ended is not None and ended.reason is Reason.EXITED and ended.exit_code == 3
    assert "failing now" in ended.detail  # its last output, kept while no agent read it
    assert waited.exit_code == 3 and "exit code 3" in waited.message()
    assert after is None  # the record is gone once the outcome was read
    assert list((tmp_path / "state" / "process").glob("*.json")) == []


def test_a_sigkill_while_no_agent_is_up_is_minus_9_with_the_oom_warning(
    tmp_path: Path, backend: ProcessBackend
) -> None:
    release = tmp_path / "release"
    pid = _agent_launches(
        tmp_path / "state", "run-oom", f"while [ ! -e {release} ]; do sleep 0.02; done; kill -9 $$"
    )
    release.touch()
    _wait_until(lambda: _gone(pid))

    async def scenario():
        handle = await backend.find(_job("run-oom"))
        assert handle is not None and handle.pid == pid
        with anyio.fail_after(20):
            return await backend.inspect(handle), await backend.wait(handle)

    inspected, waited = anyio.run(scenario)
    for outcome in (inspected, waited):
        assert outcome is not None and outcome.exit_code == -9 and outcome.oom
        assert "OOM warning" in outcome.message()


def test_output_after_the_agent_died_does_not_break_the_run(tmp_path: Path, backend: ProcessBackend) -> None:
    # Without the supervisor relaying it, the first echo after the agent's death would meet
    # a closed pipe and the shell would die of SIGPIPE (-13).
    release = tmp_path / "release"
    script = (
        f"while [ ! -e {release} ]; do sleep 0.02; done; for i in 1 2 3 4 5; do echo line $i; done; exit 0"
    )
    pid = _agent_launches(tmp_path / "state", "run-prints", script)
    release.touch()
    _wait_until(lambda: _gone(pid))

    async def scenario():
        handle = await backend.find(_job("run-prints"))
        assert handle is not None
        return await backend.inspect(handle)

    outcome = anyio.run(scenario)
    assert outcome is not None and outcome.succeeded, outcome


def test_a_restarted_agent_can_kill_the_run_it_adopted(tmp_path: Path, backend: ProcessBackend) -> None:
    pid = _agent_launches(tmp_path / "state", "run-kill", "sleep 300")

    async def scenario():
        handle = await backend.find(_job("run-kill"))
        assert handle is not None
        await backend.kill(handle, grace=5)
        with anyio.fail_after(20):
            return await backend.wait(handle)

    outcome = anyio.run(scenario)
    assert _gone(pid)
    # the command died of the SIGTERM sent to the group; its supervisor recorded that
    assert outcome.reason is Reason.EXITED and outcome.exit_code == -signal.SIGTERM


def test_a_reused_pid_is_neither_adopted_nor_killed(tmp_path: Path, backend: ProcessBackend) -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        store = RecordStore(tmp_path / "state")
        path = store.path("run-reused")
        real = psutil.Process(stranger.pid).create_time()
        # the record's process was created long before the one now at its pid
        store.write(Record("run-reused", HOST, stranger.pid, real - 1000, "sh", marker=str(path)))
        # and a record whose time matches, but the process at its pid is not its supervisor
        other = store.path("run-other")
        store.write(Record("run-other", HOST, stranger.pid, real, "sh", marker=str(other)))

        async def scenario():
            outcomes = []
            for run_id in ("run-reused", "run-other"):
                handle = await backend.find(_job(run_id))
                assert handle is not None and handle.pid == f"{HOST}:{stranger.pid}"
                await backend.kill(handle, grace=0.5)
                with anyio.fail_after(10):
                    outcomes.append((await backend.inspect(handle), await backend.wait(handle)))
            return outcomes

        for inspected, waited in anyio.run(scenario):
            for outcome in (inspected, waited):
                assert outcome is not None and outcome.reason is Reason.LOST
                assert "without recording an exit status" in outcome.detail
        assert stranger.poll() is None, "a process that is not the run's was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_no_record_and_no_process_is_none_and_another_hosts_record_is_an_error(
    tmp_path: Path, backend: ProcessBackend
) -> None:
    RecordStore(tmp_path / "state").write(Record("run-far", "elsewhere", 4242, 1.0, "sh", marker="x"))

    async def scenario():
        assert await backend.find(_job("run-nothing")) is None
        with pytest.raises(BackendError, match="elsewhere"):
            await backend.find(_job("run-far"))

    anyio.run(scenario)


def test_without_a_state_dir_a_live_run_is_found_by_its_environment(tmp_path: Path) -> None:
    pid = _agent_launches(None, "run-env", "sleep 300")

    async def scenario():
        backend = ProcessBackend(BackendOptions(), hostname=HOST)
        handle = await backend.find(_job("run-env"))
        assert handle is not None and handle.pid == pid
        running = await backend.inspect(handle)
        await backend.kill(handle, grace=5)
        with anyio.fail_after(20):
            return running, await backend.wait(handle)

    running, ended = anyio.run(scenario)
    assert running is None and _gone(pid)
    assert ended.reason is Reason.LOST and "launched without a record" in ended.detail


def test_old_records_of_ended_runs_are_pruned_at_start(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    me = psutil.Process()
    store.write(Record("run-old", HOST, 2**22 + 7, 1.0, "sh", marker="x"))
    store.write(Record("run-new", HOST, 2**22 + 8, 1.0, "sh", marker="x"))
    store.write(Record("run-live", HOST, me.pid, me.create_time(), "python", marker=None))
    week_ago = time.time() - 8 * 86400
    for run_id in ("run-old", "run-live"):
        path = store.path(run_id)
        assert path is not None
        os.utime(path, (week_ago, week_ago))
    ProcessBackend(BackendOptions(state_dir=tmp_path / "state"), hostname=HOST)
    assert store.load("run-old") is None
    assert store.load("run-new") is not None and store.load("run-live") is not None


def test_the_supervisor_starts_nothing_when_the_agent_dies_before_go(tmp_path: Path) -> None:
    from agent.backends.process.spawn import SHIM

    marker = tmp_path / "ran"
    store = RecordStore(tmp_path / "state")
    path = store.path("run-early")
    ctl_r, ctl_w = os.pipe()
    status_r, status_w = os.pipe()
    shim = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            SHIM,
            str(ctl_r),
            str(status_w),
            "0",
            str(path),
            "--",
            "touch",
            str(marker),
        ],
        pass_fds=(ctl_r, status_w),
        start_new_session=True,
    )
    os.close(ctl_r)
    os.close(status_w)
    store.write(
        Record("run-early", HOST, shim.pid, psutil.Process(shim.pid).create_time(), "touch", marker=str(path))
    )
    os.close(ctl_w)  # the agent dies before it says "go"
    assert shim.wait(10) == 125
    assert os.read(status_r, 10) == b""
    os.close(status_r)
    assert not marker.exists()
    assert store.load("run-early") is None  # so the run is found to have no workload


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_command_gets_the_signal_dispositions_it_would_get_without_the_supervisor(tmp_path: Path) -> None:
    script = "grep -E '^Sig(Blk|Ign)' /proc/$$/status"
    direct = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout

    async def scenario():
        backend = ProcessBackend(BackendOptions(state_dir=tmp_path / "state"), hostname=HOST)
        out = tmp_path / "out"
        payload = {
            "command": ["sh", "-c", f"{script} > {out}"],
            "env": {"PATH": os.environ["PATH"]},
            "cwd": None,
        }
        handle = await backend.launch(Job("run-sig", "run-sig", "process", payload, ProcessRuntime()))
        outcome = await backend.wait(handle)
        return outcome, out.read_text()

    outcome, supervised = anyio.run(scenario)
    assert outcome.succeeded
    assert supervised == direct


def test_the_record_holds_no_environment_and_only_the_program(tmp_path: Path) -> None:
    pid = _agent_launches(tmp_path / "state", "run-secret", "sleep 300 # --password=hunter2")
    path = RecordStore(tmp_path / "state").path("run-secret")
    assert path is not None
    text = path.read_text()
    try:
        assert "hunter2" not in text and "PATH" not in text
        assert json.loads(text)["program"] == "sh"
    finally:
        os.killpg(int(pid.rsplit(":", 1)[1]), signal.SIGKILL)


def test_concurrent_launches_each_report_their_own_exit(tmp_path: Path) -> None:
    async def scenario():
        backend = ProcessBackend(BackendOptions(state_dir=tmp_path / "state"), hostname=HOST)
        outcomes: dict[int, int | None] = {}

        async def one(code: int) -> None:
            await anyio.sleep(code * 0.004)  # staggered, as runs come: each launch overlaps others
            payload = {"command": ["sh", "-c", f"echo run {code}; exit {code}"], "env": {}, "cwd": None}
            handle = await backend.launch(Job(f"run-{code}", "run", "process", payload, ProcessRuntime()))
            outcomes[code] = (await backend.wait(handle)).exit_code

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for code in range(24):
                    tg.start_soon(one, code)
        await backend.aclose()
        return outcomes

    assert anyio.run(scenario) == {code: code for code in range(24)}
    assert list((tmp_path / "state" / "process").iterdir()) == []
