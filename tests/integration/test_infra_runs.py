"""Infrastructure resolution end to end: legacy blocks, secret references, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.prefect_api import FLOW_SOURCE, PrefectAPI, state_message, state_type, wait_for

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-value-for-flow-agent"


def _deployment(api: PrefectAPI, pool: str, name: str, **fields: Any) -> str:
    # deployments upsert by flow and name: one per pool, or tests would share them
    body = {
        "name": f"{pool}-{name}",
        "flow_id": api.create_flow("infra-tests"),
        "work_pool_name": pool,
        **fields,
    }
    return api.request("POST", "/deployments/", json=body).json()["id"]


def _flow_dir(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "flows.py").write_text(FLOW_SOURCE)
    step = {"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}
    return {"entrypoint": "flows.py:hello", "path": str(tmp_path), "pull_steps": [step]}


def test_a_process_block_deployment_runs_through_the_agent(
    api: PrefectAPI, registered: None, pool: str, start_agent, tmp_path: Path
) -> None:
    marker = tmp_path / "env.txt"
    command = f"sh -c 'echo $FROM_BLOCK > {marker} && exec {sys.executable} -m prefect.engine'"
    block = api.create_block_document("process", {"command": command, "env": {"FROM_BLOCK": "block-env"}})
    api.create_process_pool(pool)
    deployment = _deployment(
        api, pool, "legacy", infrastructure_document_id=block["id"], **_flow_dir(tmp_path)
    )
    run = api.create_flow_run(deployment)
    assert run["infrastructure_document_id"] == block["id"]

    start_agent(pool)

    final = api.wait_for_state(run["id"], "COMPLETED", "FAILED", "CRASHED", timeout=120)
    assert state_type(final) == "COMPLETED", state_message(final)
    assert marker.read_text().strip() == "block-env"


def test_a_secret_reference_reaches_the_process_and_nothing_else(
    api: PrefectAPI, pool: str, start_agent, tmp_path: Path
) -> None:
    secret = api.create_block_document("secret", {"value": SECRET})
    marker = tmp_path / "token.txt"
    api.create_process_pool(pool)
    job_variables = {
        "command": f"sh -c 'echo \"$TOKEN\" > {marker}; echo token is $TOKEN; exit 4'",
        "env": {"TOKEN": "{{ prefect.blocks.secret." + secret["name"] + " }}"},
    }
    deployment = _deployment(api, pool, "secret-ref", job_variables=job_variables)
    run = api.create_flow_run(deployment)

    agent = start_agent(pool)
    final = api.wait_for_state(run["id"], "CRASHED", timeout=90)

    assert marker.read_text().strip() == SECRET  # the process got the real value
    assert "token is ********" in agent.output()  # its output was streamed, masked
    assert SECRET not in agent.output()
    assert SECRET not in state_message(final)  # "last output" is part of the crash message
    wait_for(lambda: api.read_logs(run["id"]), 30, message="the agent's logs on the server")
    assert SECRET not in json.dumps(api.read_logs(run["id"]))
    rendered = subprocess.run(
        [sys.executable, "-m", "agent", "render", run["id"]],
        env={"PREFECT_API_URL": api.api_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert SECRET not in rendered.stdout + rendered.stderr
    assert json.loads(rendered.stdout)["payload"]["env"]["TOKEN"] == "********"


BAD_INPUTS = {
    "wrong field type": ("block", "process", {"stream_output": "maybe"}, "stream_output"),
    "missing required field": ("block", "ecs-task", {"cpu": 256}, "image"),
    "unknown block type": ("block", "secret", {"value": "x"}, "'secret'"),
    "patch to a missing path": (
        "vars",
        None,
        {"customizations": [{"op": "replace", "path": "/nope/deeper", "value": 1}]},
        "/nope/deeper",
    ),
    "placeholder with no value": (
        "vars",
        None,
        {"env": {"X": "{{ prefect.blocks.secret.no-such-block }}"}},
        "no-such-block",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_crashes_one_run_and_the_next_launches(
    api: PrefectAPI, registered: None, pool: str, start_agent, tmp_path: Path, case: str
) -> None:
    source, slug, data, named = BAD_INPUTS[case]
    api.create_process_pool(pool)
    if source == "block":
        block = api.create_block_document(slug, data)
        bad = _deployment(api, pool, "bad", infrastructure_document_id=block["id"])
    else:
        bad = _deployment(api, pool, "bad", job_variables=data)
    marker = tmp_path / "good.txt"
    good = _deployment(api, pool, "good", job_variables={"command": f"sh -c 'echo ok > {marker}'"})
    bad_run = api.create_flow_run(bad)

    start_agent(pool)
    final = api.wait_for_state(bad_run["id"], "CRASHED", timeout=60)
    api.create_flow_run(good)

    assert named in state_message(final), state_message(final)
    wait_for(marker.exists, 60, message="the next good run to launch")
