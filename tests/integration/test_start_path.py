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
import sys
from pathlib import Path

import pytest
from support.prefect_api import PrefectAPI, state_message, state_type

pytestmark = pytest.mark.integration

FLOW_SOURCE = """\
import json, os, sys
from prefect import flow


@flow
def where() -> None:
    seen = {k: os.environ.get(k) for k in ("PYTHONPATH", "PREFECT__FLOW_ENTRYPOINT")}
    seen["cwd"] = os.getcwd()
    with open(os.environ["MARKS"] + "/engine.json", "w") as out:
        json.dump(seen, out)
"""

PYPROJECT = """\
[project]
name = "uv-flow"
version = "0.1.0"
dependencies = ["prefect"]
"""


def _fake_uv(directory: Path, marks: Path) -> None:
    uv = directory / "uv"
    uv.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {marks}/uv-args\n"
        "shift 4  # run --no-default-groups --project ROOT\n"
        f'exec {sys.executable} "$@"\n'
    )
    uv.chmod(0o755)


def test_uv_project_runs_through_the_workspace_supervisor(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    project, bin_dir, marks = tmp_path / "project", tmp_path / "bin", tmp_path / "marks"
    for path in (project, bin_dir, marks):
        path.mkdir()
    (project / "flows.py").write_text(FLOW_SOURCE)
    (project / "pyproject.toml").write_text(PYPROJECT)
    _fake_uv(bin_dir, marks)
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
    uv_args = (marks / "uv-args").read_text().splitlines()
    assert uv_args[:4] == ["run", "--no-default-groups", "--project", str(project)]
    assert uv_args[4].endswith("_workspace_runtime_bootstrap.py")
    assert uv_args[5:] == ["engine", "flows.py:where"]
    seen = json.loads((marks / "engine.json").read_text())
    assert seen["cwd"] == str(project)
    assert str(project) in seen["PYTHONPATH"].split(os.pathsep)
    assert seen["PREFECT__FLOW_ENTRYPOINT"] == "flows.py:where"
