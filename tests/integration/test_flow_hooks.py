"""A flow's on_crashed and on_cancellation hooks run when they should, and only then (issue 15).

Real Prefect flows on a process pool. A SIGKILL (what an OOM kill is) leaves the engine no
chance to run on_crashed: the agent runs it after its CRASHED is accepted. A cancel goes
to the engine over Prefect's control channel before the kill, so on_cancellation runs and
on_crashed does not, and nothing of the run is left running.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.prefect_api import PrefectAPI, os_pid, process_gone, state_message, state_type, wait_for

pytestmark = pytest.mark.integration

# Each hook leaves a mark file named after itself; the body says where it runs, then naps.
HOOKS_SOURCE = """\
import os
import time
from pathlib import Path

from prefect import flow

MARKS = Path(os.environ["HOOK_MARKS"])


def on_crash(flow, flow_run, state):
    (MARKS / "crashed").write_text(f"{state.type.value}|{flow_run.id}|{os.getcwd()}")


def on_cancel(flow, flow_run, state):
    (MARKS / "cancellation").write_text(f"{state.type.value}|{flow_run.id}")


def broken(flow, flow_run, state):
    raise RuntimeError("this hook fails on purpose")


@flow(on_crashed=[broken, on_crash], on_cancellation=[on_cancel])
def sleepy() -> None:
    (MARKS / "started").write_text(str(os.getpid()))
    time.sleep(300)
"""


def _deployment(api: PrefectAPI, pool: str, directory: Path, marks: Path) -> str:
    (directory / "hooked.py").write_text(HOOKS_SOURCE)
    return api.create_deployment(
        api.create_flow("hooked"),
        f"{pool}-hooked",
        pool,
        entrypoint="hooked.py:sleepy",
        path=str(directory),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}],
        job_variables={"env": {"HOOK_MARKS": str(marks)}},
    )


def _started(marks: Path) -> int:
    """The pid of the engine once the flow's body runs."""
    started = marks / "started"
    wait_for(lambda: started.exists() and started.read_text(), 120, message="the flow's body to start")
    return int(started.read_text())


def _logged(api: PrefectAPI, run_id: str, text: str) -> bool:
    return any(text in log["message"] for log in api.read_logs(run_id))


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def test_sigkilled_flow_is_crashed_and_its_crash_hooks_run(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path, marks: Path
) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(_deployment(api, pool, tmp_path, marks))["id"]
    start_agent(pool)
    engine = _started(marks)

    os.kill(engine, signal.SIGKILL)  # what the OOM killer does

    run = api.wait_for_state(run_id, "CRASHED", "COMPLETED", "FAILED", "CANCELLED")
    assert state_type(run) == "CRASHED", state_message(run)
    assert "exit code -9" in state_message(run)
    assert "OOM" in state_message(run)
    crashed = marks / "crashed"
    wait_for(crashed.exists, 90, message="the on_crashed hook's mark")
    state, seen_id, cwd = crashed.read_text().split("|")
    assert (state, seen_id) == ("CRASHED", run_id)
    assert Path(cwd) == tmp_path  # the pull step ran: the hook sees the deployment's directory
    assert not (marks / "cancellation").exists()
    # the failing hook did not stop the next one, and both outcomes are in the run's logs
    wait_for(lambda: _logged(api, run_id, "on_crashed hook 'on_crash' ran"), 30, message="the hook's log")
    assert _logged(api, run_id, "on_crashed hook 'broken' failed: RuntimeError: this hook fails on purpose")


def test_cancelled_flow_runs_its_cancellation_hooks_not_its_crash_hooks(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path, marks: Path
) -> None:
    api.create_process_pool(pool)
    run_id = api.create_flow_run(_deployment(api, pool, tmp_path, marks))["id"]
    start_agent(pool)
    engine = _started(marks)
    leader = os_pid(api.wait_for_pid(run_id))

    api.cancel(run_id)

    run = api.wait_for_state(run_id, "CANCELLED", "CRASHED", "COMPLETED", "FAILED")
    assert state_type(run) == "CANCELLED", state_message(run)
    assert (marks / "cancellation").read_text() == f"CANCELLING|{run_id}"
    assert not (marks / "crashed").exists()
    history = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    assert "CRASHED" not in [state["type"] for state in history]
    assert _logged(api, run_id, "told the engine the run is cancelled delivery=acked")
    # while its hooks ran the run was still CANCELLING: taken for one cancellation only
    requests = [log for log in api.read_logs(run_id) if log["message"].startswith("cancellation requested")]
    assert len(requests) == 1
    wait_for(lambda: process_gone(engine) and process_gone(leader), 30, message="the run's processes to end")


def test_crash_hooks_run_for_a_run_adopted_after_its_agent_died(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path, marks: Path
) -> None:
    fast = {"FLOW_AGENT_RECONCILE_INTERVAL": "1", "FLOW_AGENT_HEARTBEAT_INTERVAL": "2"}
    api.create_process_pool(pool)
    run_id = api.create_flow_run(_deployment(api, pool, tmp_path, marks))["id"]
    first = start_agent(pool, "--name", f"{pool}-a", env=fast)
    engine = _started(marks)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    start_agent(pool, "--name", f"{pool}-b", env=fast)

    def adopted() -> bool:
        return api.read_flow_run(run_id)["labels"].get("prefect.worker.name") == f"{pool}-b"

    wait_for(adopted, 60, message="the second agent to adopt the run")
    os.kill(engine, signal.SIGKILL)

    run = api.wait_for_state(run_id, "CRASHED", "COMPLETED", "FAILED", "CANCELLED")
    assert state_type(run) == "CRASHED", state_message(run)
    crashed = marks / "crashed"
    wait_for(crashed.exists, 90, message="the on_crashed hook's mark")
    assert crashed.read_text().split("|")[:2] == ["CRASHED", run_id]
