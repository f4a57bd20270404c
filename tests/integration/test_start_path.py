"""A uv project asking for its dependencies starts as under Prefect's worker (issue 15).

With PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES on, Prefect's process worker prepares the
workspace with its workspace supervisor, which starts the engine with `uv run --project`
and the working directory on PYTHONPATH. The plain engine could do neither. Here `uv` is a
stand-in on the job's PATH that records how it was called and runs the rest with this
interpreter (no network, no environment to build): what is checked is that the run went
through the supervisor and uv, and what its engine saw.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for

pytestmark = pytest.mark.integration

FLOW_SOURCE = """\
import json, os, time
from prefect import flow

import projdep  # only in the project's environment (the stand-in uv puts it on PYTHONPATH)

MARKS = os.environ["MARKS"]


def on_crash(flow, flow_run, state):
    with open(MARKS + "/crashed", "w") as out:
        out.write(projdep.NAME)


@flow(on_crashed=[on_crash])
def where(nap: bool = False) -> None:
    if nap:
        with open(MARKS + "/started", "w") as out:
            out.write(str(os.getpid()))
        time.sleep(300)
    seen = {k: os.environ.get(k) for k in ("PYTHONPATH", "PREFECT__FLOW_ENTRYPOINT")}
    seen["cwd"] = os.getcwd()
    with open(MARKS + "/engine.json", "w") as out:
        json.dump(seen, out)
"""

PYPROJECT = """\
[project]
name = "uv-flow"
version = "0.1.0"
dependencies = ["prefect"]
"""


def _fake_uv(directory: Path, marks: Path, lib: Path) -> None:
    """Records each call (its arguments, then ---), and runs the rest with this interpreter
    and the project's own module on PYTHONPATH, as the project's environment would have it."""
    (lib / "projdep.py").write_text('NAME = "from the project environment"\n')
    uv = directory / "uv"
    uv.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" --- >> {marks}/uv-calls\n"
        "shift 4  # run --no-default-groups --project ROOT\n"
        '[ "$1" = python ] && shift  # `uv run python ...`, else `uv run script.py ...`\n'
        f'PYTHONPATH="{lib}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} "$@"\n'
    )
    uv.chmod(0o755)


def _uv_calls(marks: Path) -> list[list[str]]:
    return [call.splitlines() for call in (marks / "uv-calls").read_text().split("---\n") if call]


def test_uv_project_runs_through_the_workspace_supervisor_and_its_crash_hooks_in_its_environment(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    project, bin_dir, marks, lib = (tmp_path / name for name in ("project", "bin", "marks", "lib"))
    for path in (project, bin_dir, marks, lib):
        path.mkdir()
    (project / "flows.py").write_text(FLOW_SOURCE)
    (project / "pyproject.toml").write_text(PYPROJECT)
    _fake_uv(bin_dir, marks, lib)
    api.create_process_pool(pool)
    env = {
        "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "true",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MARKS": str(marks),
    }
    deployment = api.create_deployment(
        api.create_flow("where"),
        f"{pool}-uv",
        pool,
        entrypoint="flows.py:where",
        path=str(project),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        job_variables={"env": env},
    )
    run_id = api.create_flow_run(deployment)["id"]

    start_agent(pool)

    run = api.wait_for_state(run_id, "COMPLETED", "FAILED", "CRASHED", timeout=120)
    assert state_type(run) == "COMPLETED", state_message(run)
    [uv_args] = _uv_calls(marks)
    assert uv_args[:4] == ["run", "--no-default-groups", "--project", str(project)]
    assert uv_args[4].endswith("_workspace_runtime_bootstrap.py")
    assert uv_args[5:] == ["engine", "flows.py:where"]
    seen = json.loads((marks / "engine.json").read_text())
    assert seen["cwd"] == str(project)
    assert str(project) in seen["PYTHONPATH"].split(os.pathsep)
    assert seen["PREFECT__FLOW_ENTRYPOINT"] == "flows.py:where"

    # SIGKILLed, its on_crashed hook needs the project's environment: the agent's hook child
    # cannot import the flow, and runs itself again under uv in the project
    crashing = api.create_flow_run(deployment, parameters={"nap": True})["id"]
    started = marks / "started"
    wait_for(lambda: started.exists() and started.read_text(), 120, message="the flow's body to start")
    os.kill(int(started.read_text()), signal.SIGKILL)
    run = api.wait_for_state(crashing, "CRASHED", "COMPLETED", "FAILED")
    assert state_type(run) == "CRASHED", state_message(run)
    wait_for((marks / "crashed").exists, 90, message="the on_crashed hook's mark")
    assert (marks / "crashed").read_text() == "from the project environment"
    hook_call = _uv_calls(marks)[-1]
    assert hook_call[:4] == ["run", "--no-default-groups", "--project", str(project)]
    assert hook_call[4:6] == ["python", "-c"]
