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
"""

import asyncio
import inspect
import json
import sys
import traceback

_CUT = 500  # characters of an error kept for the agent (it masks, then cuts again)


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
                flow = await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)
            except Exception as exc:  # noqa: BLE001 - reported to the agent, which logs it
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


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"[:_CUT]


def main(argv):
    which, run_id, result_path = argv[-3:]
    try:
        summary = asyncio.run(_run(which, run_id))
    except Exception as exc:  # noqa: BLE001 - e.g. the server unreachable: tell the agent
        traceback.print_exc()
        summary = {"loaded": False, "error": _describe(exc)}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
