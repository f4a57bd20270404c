"""Starting a run through Prefect's workspace supervisor, as Prefect's process worker does.

The process kind asks for the supervisor (`python -m prefect.runner._workspace_supervisor`,
see infra/process.py) when a run wants its uv project's dependencies. The supervisor takes
one argument, a config file that exists only per launch, so the backend writes it here:
`{"flow_run_id", "workspace_root", "manifest_path", "command": null}` (0600, in a private
attempt directory next to nothing else), as `WorkspaceResolvingEngineCommandStarter` does.
The workspace root is the run's working directory, the supervisor's cwd.

The module is private to Prefect (3.8.8 has it; its predecessors are gone), so whether the
run's interpreter has it is asked first, once per interpreter, without importing Prefect:
one that has not gets the plain engine and a warning that says what the run loses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Final

import anyio

from agent.infra.process import SUPERVISOR_MODULE
from agent.observe.logging import get_logger

__all__ = ["Prepared", "prepare", "discard"]

_PROBE_TIMEOUT: Final = 30.0
# Locates prefect without importing it (find_spec of a top-level package imports nothing).
_PROBE: Final = (
    "import importlib.util as u, os, sys\n"
    "s = u.find_spec('prefect')\n"
    "roots = list(s.submodule_search_locations or []) if s else []\n"
    "sys.exit(0 if any(os.path.isfile(os.path.join(r, 'runner', '_workspace_supervisor.py'))"
    " for r in roots) else 1)\n"
)

Prepared = tuple[list[str], str | None]  # (the command to start, the attempt dir to remove)


async def prepare(command: Sequence[str], *, flow_run_id: str, cwd: str, env: Mapping[str, str]) -> Prepared:
    """`command` as it is, unless it asks for the supervisor: then with its config file."""
    if list(command[1:]) != ["-m", SUPERVISOR_MODULE]:
        return list(command), None
    python = command[0]
    if not await anyio.to_thread.run_sync(
        _has_supervisor, python, env.get("PYTHONPATH", ""), env.get("PATH", "")
    ):
        get_logger("agent.backends.process", flow_run_id=flow_run_id, ship=True).warning(
            f"{python} has no {SUPERVISOR_MODULE} (Prefect 3.8.8 has it): running the engine "
            "directly, so no `uv run` for the project's dependencies"
        )
        return [python, "-m", "prefect.engine"], None
    return await anyio.to_thread.run_sync(_write_config, python, flow_run_id, cwd)


def _write_config(python: str, flow_run_id: str, cwd: str) -> Prepared:
    attempt = tempfile.mkdtemp(prefix="flow-agent-attempt-")  # 0700
    config = {
        "flow_run_id": flow_run_id,
        "workspace_root": str(Path(cwd).resolve()),
        "manifest_path": os.path.join(attempt, "workspace.json"),
        "command": None,
    }
    path = os.path.join(attempt, "supervisor.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(config, out)
    return [python, "-m", SUPERVISOR_MODULE, path], attempt


def discard(attempt: str | None) -> None:
    if attempt:
        shutil.rmtree(attempt, ignore_errors=True)


@lru_cache(maxsize=16)
def _has_supervisor(python: str, pythonpath: str, path: str) -> bool:
    env = {"PATH": path, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    try:
        done = subprocess.run(  # noqa: S603 - the run's own interpreter, a fixed script
            [python, "-c", _PROBE], env=env, capture_output=True, timeout=_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False  # the launch itself then says why the interpreter cannot start
    return done.returncode == 0
