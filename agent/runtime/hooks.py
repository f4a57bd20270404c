"""A flow's on_crashed and on_cancellation hooks, run when its engine could not run them.

Prefect's engine runs a flow's hooks itself when it sees the end coming (an exception, a
SIGTERM). It cannot when its process is SIGKILLed or OOM-killed, and in runner mode
(`PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS=false`, which the agent sets, as Prefect's
process worker and workspace supervisor do) it leaves an acknowledged cancel to its
supervisor. Prefect's process worker then runs the hooks in a child process; so does the
agent, here:

* on_crashed after the agent's CRASHED proposal was ACCEPTED (an ABORT means the engine
  reported the run's end itself, and ran its hooks);
* on_cancellation after a cancel whose kill the engine did not take for a crash (see
  `agent.backends.base.Delivery`), before the run is set CANCELLED, as Prefect does.

The child (hooks_child.py) imports Prefect; the agent never does. It gets the run's own
interpreter and environment (the job's env, a fresh working directory: loading the flow
runs the deployment's pull steps or copies its storage there, as the engine would), is
bounded in time, and its output and a summary go to the run's logs. Only process runs: a
container's flow code lives in its image, out of the agent's reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Final, Literal

import anyio

from agent.backends.base import Job, output_sink
from agent.observe.logging import REDACTOR, get_logger

__all__ = ["HOOK_TIMEOUT", "FlowHooks", "Which"]

Which = Literal["crashed", "cancellation"]

HOOK_TIMEOUT: Final = 120.0  # seconds for loading the flow and running all its hooks
_CHILD: Final = str(Path(__file__).with_name("hooks_child.py"))
# By path through runpy, not `python hooks_child.py`: that would put agent/runtime/ first
# on sys.path, where its modules could shadow the user's.
_BOOT: Final = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
_ENGINE_MODULES: Final = frozenset(
    {"prefect.engine", "prefect.flow_engine", "prefect.runner._workspace_supervisor"}
)
_NOT_PASSED: Final = ("PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN")
_LINE_LIMIT: Final = 1 << 20
_DRAIN: Final = 2.0  # seconds of output still read after the child exited


class FlowHooks:
    """Runs hooks for the runner. `python` is the agent's default interpreter for flows,
    used when the run's command does not name one (a custom command)."""

    def __init__(self, python: str, *, timeout: float = HOOK_TIMEOUT) -> None:
        self._python = python
        self._timeout = timeout

    @staticmethod
    def supports(job: Job) -> bool:
        return job.kind == "process"

    def python_for(self, job: Job) -> str:
        """The interpreter that runs the run's engine, so the hooks import what it does."""
        command = list(job.payload.get("command") or [])
        if len(command) >= 3 and command[1] == "-m" and command[2] in _ENGINE_MODULES:
            return str(command[0])
        return self._python

    async def run(self, which: Which, job: Job) -> None:
        """Run the flow's `which` hooks for `job`'s run; never raises (but cancellation)."""
        log = get_logger("agent.runtime.hooks", flow_run_id=job.flow_run_id, ship=True)
        env = {k: v for k, v in (job.payload.get("env") or {}).items() if k not in _NOT_PASSED}
        emit = output_sink(job.kind, job.flow_run_id, job.output)
        with tempfile.TemporaryDirectory(prefix="flow-agent-hooks-") as private:
            workdir = tempfile.mkdtemp(prefix="work-", dir=private)
            result = Path(private, "result.json")
            argv = [self.python_for(job), "-c", _BOOT, _CHILD, which, job.flow_run_id, str(result)]
            try:
                finished = await self._child(argv, workdir, env, emit)
            except OSError as exc:
                log.error(f"could not start the flow's on_{which} hooks", error=REDACTOR.mask_text(str(exc)))
                return
            if not finished:
                log.warning(
                    f"the flow's on_{which} hooks did not finish within {self._timeout:g} s; stopped them"
                )
                return
            _report(log, which, _read(result))

    async def _child(self, argv: list[str], cwd: str, env: dict[str, str], emit: Any) -> bool:
        """Run the child to its end or the timeout (then kill its group); True if it ended."""
        # Its output on a pipe of our own, not asyncio's: asyncio's `wait()` would also wait
        # for the pipe to close, which a hook's background process can hold open for long.
        out_r, out_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                start_new_session=True,  # its group is killed whole on timeout
            )
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        reader, transport = await _reader(out_r)
        try:
            with anyio.move_on_after(self._timeout):
                await _follow(proc, reader, emit)
                return True
            return False
        finally:
            transport.close()
            if proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await proc.wait()


async def _reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT, loop=loop)
    pipe = os.fdopen(fd, "rb", 0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader, transport


async def _follow(proc: asyncio.subprocess.Process, reader: asyncio.StreamReader, emit: Any) -> None:
    """Emit the child's output until it exits, and what is left of it for a moment after:
    something a hook started in the background may keep the pipe open."""
    drained = anyio.Event()

    async def pump() -> None:
        while raw := await _readline(reader):
            line = REDACTOR.mask_text(raw.decode(errors="replace")).rstrip()
            if line:
                emit(line)
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        await proc.wait()
        with anyio.move_on_after(_DRAIN):
            await drained.wait()
        tg.cancel_scope.cancel()


async def _readline(stream: asyncio.StreamReader) -> bytes:
    try:
        return await stream.readline()
    except ValueError:  # a line longer than the limit: take what is there
        return await stream.read(_LINE_LIMIT)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"loaded": False, "error": "the hook runner ended without a result (see its output above)"}
    return data if isinstance(data, dict) else {"loaded": False, "error": "unreadable result"}


def _report(log: Any, which: Which, summary: dict[str, Any]) -> None:
    """One line per hook in the run's logs, masked, then cut (never the other way round)."""
    if not summary.get("loaded"):
        error = REDACTOR.clip(str(summary.get("error") or "unknown error"), 500)
        log.warning(f"could not load the flow to run its on_{which} hooks: {error}")
        return
    hooks = [h for h in summary.get("hooks") or [] if isinstance(h, dict)]
    if not hooks:
        log.info(f"the flow has no on_{which} hooks")
    for hook in hooks:
        name = REDACTOR.clip(str(hook.get("hook")), 200)
        if hook.get("ok"):
            log.info(f"on_{which} hook {name!r} ran")
        else:
            log.error(f"on_{which} hook {name!r} failed: {REDACTOR.clip(str(hook.get('error')), 500)}")
