"""Runs one flow run's on_crashed or on_cancellation hooks; the child process hooks.py starts.

Not part of the agent: the agent never imports Prefect, this file imports nothing else.
It runs with the interpreter and environment of the run's own process (the job's env,
a fresh working directory), by path through `runpy`, so no directory of the agent lands
on `sys.path`:

    python -c BOOT hooks_child.py WHICH FLOW_RUN_ID RESULT_PATH

It takes Prefect's public path (what Prefect's worker does for a configured command):
read the run, `load_flow_from_flow_run(use_placeholder_flow=False)` (pull steps and
storage as the engine would), then each hook with `flow=, flow_run=, state=` in order: the
run's state (the agent's CRASHED) for "crashed", a Cancelling state for "cancellation".
A hook's error is logged and the next hook still runs, as in Prefect. The run's logs get
Prefect's own "Running hook ..." lines; RESULT_PATH gets a JSON summary for the agent.

A uv project run with PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES (Prefect's workspace
supervisor ran its engine under `uv run`) has its dependencies in the project's
environment, not here: when the flow cannot be imported here, the child runs itself again
under `uv run --project <root>` in the directory the pull steps left, and loads the flow
from its entrypoint there without running the steps again (as Prefect's hook bootstrap).
"""

import asyncio
import inspect
import json
import os
import sys
import traceback

_CUT = 500  # characters of an error kept for the agent (it masks, then cuts again)
_ENTRYPOINT = "FLOW_AGENT_HOOK_ENTRYPOINT"  # set for the run under `uv run`
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


async def _run(which, run_id):
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_flow_run
    from prefect.logging.handlers import APILogHandler
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import Cancelling

    try:
        async with get_client() as client:
            flow_run = await client.read_flow_run(run_id)
            try:
                if os.environ.get(_ENTRYPOINT):
                    flow = _from_entrypoint(os.environ[_ENTRYPOINT])
                else:
                    flow = await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)
            except Exception as exc:  # noqa: BLE001 - reported to the agent, which logs it
                again = await _under_uv(client, flow_run) if _import_failed(exc) else None
                if again is not None:
                    return {"again": again}
                traceback.print_exc()
                return {"loaded": False, "error": _describe(exc)}
            if which == "crashed":
                hooks, state = flow.on_crashed_hooks, flow_run.state
            else:
                hooks, state = flow.on_cancellation_hooks, Cancelling(message="Flow run was cancelled.")
            logger = flow_run_logger(flow_run, flow)
            return {
                "loaded": True,
                "hooks": [await _call(h, flow, flow_run, state, logger) for h in hooks or []],
            }
    finally:
        await APILogHandler.aflush()


async def _call(hook, flow, flow_run, state, logger):
    name = getattr(hook, "__name__", None) or repr(hook)
    logger.info("Running hook %r in response to entering state %r", name, state.name)
    try:
        result = hook(flow=flow, flow_run=flow_run, state=state)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # noqa: BLE001 - a failing hook must not stop the next one
        logger.error("An error was encountered while running hook %r", name, exc_info=True)
        return {"hook": name, "ok": False, "error": _describe(exc)}
    logger.info("Hook %r finished running successfully", name)
    return {"hook": name, "ok": True}


def _from_entrypoint(entrypoint):
    from prefect.exceptions import MissingFlowError
    from prefect.flows import load_flow_from_entrypoint, load_function_and_convert_to_flow

    try:
        return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    except MissingFlowError:
        return load_function_and_convert_to_flow(entrypoint)


async def _under_uv(client, flow_run):
    """The command that runs this child again in the uv project's environment, if the run
    is such a project's (the rules of Prefect's workspace supervisor), else None."""
    if os.environ.get(_ENTRYPOINT):
        return None  # already there
    try:
        from prefect.runner._uv_command import uv_project_command  # Prefect 3.8.8's own rules
        from prefect.utilities.processutils import command_from_string
    except ImportError:
        return None
    deployment = await client.read_deployment(flow_run.deployment_id)
    path, _, name = (deployment.entrypoint or "").rpartition(":")
    root = _project_root(os.getcwd())
    auto = os.environ.get("PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES", "").strip().lower()
    if not path or root is None or auto not in ("1", "true", "t", "yes", "y", "on"):
        return None
    return _again(uv_project_command, command_from_string, root, f"{path}:{name}")


def _again(uv_project_command, command_from_string, root, entrypoint):
    argv = ["python", "-c", _BOOT, os.path.abspath(__file__), *sys.argv[-3:]]
    command = uv_project_command(root, argv, path=os.environ.get("PATH"), auto_install_dependencies=True)
    if command is None:
        return None
    return {"argv": command_from_string(command), "entrypoint": os.path.abspath(entrypoint)}


def _import_failed(exc):
    """Whether loading the flow failed on an import (Prefect wraps the script's error)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ImportError) or isinstance(getattr(seen, "user_exc", None), ImportError):
            return True
        seen = seen.__cause__
    return False


def _project_root(start):
    from pathlib import Path

    for directory in (Path(start).resolve(), *Path(start).resolve().parents):
        if (directory / "pyproject.toml").is_file():
            return directory
    return None


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"[:_CUT]


def main(argv):
    which, run_id, result_path = argv[-3:]
    try:
        summary = asyncio.run(_run(which, run_id))
    except Exception as exc:  # noqa: BLE001 - e.g. the server unreachable: tell the agent
        traceback.print_exc()
        summary = {"loaded": False, "error": _describe(exc)}
    if "again" in summary:  # in the directory the pull steps left, with the project's Python
        again = summary["again"]
        os.execvpe(again["argv"][0], again["argv"], {**os.environ, _ENTRYPOINT: again["entrypoint"]})
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
