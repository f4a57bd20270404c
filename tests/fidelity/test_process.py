"""Process: Prefect 3.8.8's ProcessJobConfiguration against flow-agent's process payload.

Compared: the command a configured `command` gives, the environment (the agent's own
environment underneath, as Prefect's `{**os.environ, **env}`), the working directory and
stream_output. Not compared: how an unconfigured command starts (Prefect's workspace
supervisor; the process start path is issue 15's other part, README).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import pytest
from prefect.workers.process import ProcessWorker

from fidelity.harness import REFERENCED_ENV, SECRET_VALUE, Case, World, assert_same, both_sides

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LISTED = {
    # flow-agent's own settings are never passed to a flow (they may name its credentials)
    "env.FLOW_AGENT_*": "flow-agent's own variables stay with the agent",
}
UNCONFIGURED = {
    "command": "no command: Prefect starts its workspace supervisor, flow-agent the engine (README)",
}


async def _finish(config: Any, **_: Any) -> dict[str, Any]:
    return {
        "command": shlex.split(config.command),
        "env": config.env,
        "cwd": str(config.working_dir) if config.working_dir else None,
        "stream_output": config.stream_output,
    }


CASES = [
    Case("defaults", allowed=UNCONFIGURED),
    Case(
        "every-variable",
        {
            "name": "nightly",
            "env": {"TEAM": "data", "PREFECT_LOGGING_LEVEL": "INFO"},
            "labels": {"team": "data"},
            "command": f"{sys.executable} -m prefect.engine",
            "stream_output": False,
            "working_dir": "/tmp",
        },
    ),
    Case(
        "block-references",
        {"env": REFERENCED_ENV, "working_dir": "/tmp"},
        allowed=UNCONFIGURED,
    ),
    Case(
        "run-overrides",
        {"env": {"A": "deployment", "B": "deployment"}, "stream_output": False},
        run_vars={"env": {"B": "run", "C": "run"}, "stream_output": True},
        allowed=UNCONFIGURED,
    ),
    Case(
        "customized-template",
        {"env": {"A": "1"}},
        template_edits=[(("job_configuration", "env"), {"FROM_TEMPLATE": "yes", "A": "template"})],
        allowed=UNCONFIGURED,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_process_job_matches_prefects_configuration(world: World, case: Case) -> None:
    sides = await both_sides(world, ProcessWorker, "process", case, _finish, base_env=dict(os.environ))
    assert_same(sides, {**LISTED, **case.allowed})


async def test_env_null_unsets_the_inherited_variable_where_prefect_keeps_it(world: World) -> None:
    """README: `{"HOME": null}` removes the agent's HOME from the flow's environment;
    Prefect's `{**os.environ, **env}` keeps it (its null only drops Prefect's own value)."""
    case = Case("env-null", {"env": {"HOME": None}}, allowed=UNCONFIGURED)
    sides = await both_sides(world, ProcessWorker, "process", case, _finish, base_env=dict(os.environ))
    assert_same(sides, {**LISTED, **UNCONFIGURED, "env.HOME": "null unsets (README)"})
    assert sides.prefect["env"]["HOME"] == os.environ["HOME"]
    assert "HOME" not in sides.agent["env"]


async def test_references_are_resolved_on_both_sides(world: World) -> None:
    case = Case("refs", {"env": REFERENCED_ENV}, allowed=UNCONFIGURED)
    sides = await both_sides(world, ProcessWorker, "process", case, _finish, base_env=dict(os.environ))
    for side in (sides.prefect, sides.agent):
        assert side["env"]["TEAM"] == "data-platform"
        assert side["env"]["DB_PASSWORD"] == SECRET_VALUE
