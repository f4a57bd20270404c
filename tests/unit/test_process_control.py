"""The agent's end of Prefect's control channel, against Prefect's own listener (issue 15)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio

from agent.backends.base import Delivery
from agent.backends.process.control import HOOKS_VARIABLE, ControlChannel
from agent.observe.logging import REDACTOR

# Prefect's engine side: connect as the engine does at the start of its flow run context,
# then say which intent was committed once one is.
ENGINE = """\
import time
from prefect._internal import control_listener
from prefect.utilities.engine import capture_sigterm
with capture_sigterm():  # what arms the engine's SIGTERM bridge and connects
    print("connected", flush=True)
    deadline = time.monotonic() + 20
    while control_listener.get_intent() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    print(control_listener.get_intent(), flush=True)
"""


@contextlib.asynccontextmanager
async def _channel() -> AsyncIterator[ControlChannel]:
    """A channel whose listener runs in a task group of the test's (the backend's engine's
    in the agent)."""
    async with anyio.create_task_group() as tg:
        channel = ControlChannel(lambda fn: tg.start_soon(fn))
        try:
            yield channel
        finally:
            await channel.aclose()
            tg.cancel_scope.cancel()


async def _connected(channel: ControlChannel, run_id: str) -> None:
    with anyio.fail_after(20):
        while channel._sessions[run_id].stream is None:  # noqa: SLF001 - waiting for the engine
            await anyio.sleep(0.02)


def test_prefects_engine_acknowledges_a_cancel() -> None:
    async def scenario() -> tuple[Delivery, str]:
        async with _channel() as channel:
            env = await channel.register("run-1")
            assert env[HOOKS_VARIABLE] == "false"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", ENGINE, env=env, stdout=subprocess.PIPE
            )
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"connected\n"
            await _connected(channel, "run-1")
            delivery = await channel.deliver("run-1", "cancel")
            said = (await proc.stdout.read()).decode().strip()
            await proc.wait()
            return delivery, said

    delivery, said = anyio.run(scenario)
    assert delivery is Delivery.ACKED
    assert said == "cancel"


def test_an_engine_that_never_connected_gets_the_plain_kill() -> None:
    async def scenario() -> Delivery:
        async with _channel() as channel:
            await channel.register("run-1")
            return await channel.deliver("run-1", "cancel")

    assert anyio.run(scenario) is Delivery.NOT_CONNECTED


def test_a_silent_peer_is_no_ack_within_the_bound_and_a_token_is_used_once() -> None:
    async def scenario() -> tuple[Delivery, float, bytes]:
        async with _channel() as channel:
            env = await channel.register("run-1")
            port, token = int(env["PREFECT__CONTROL_PORT"]), env["PREFECT__CONTROL_TOKEN"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(token.encode() + b"\n\x00PF\x02\x01")  # a v2 hello, then silence
            await writer.drain()
            await _connected(channel, "run-1")
            # a second connection with the same token is turned away
            replay_reader, replay_writer = await asyncio.open_connection("127.0.0.1", port)
            replay_writer.write(token.encode() + b"\n")
            await replay_writer.drain()
            replay = await replay_reader.read()
            start = anyio.current_time()
            delivery = await channel.deliver("run-1", "cancel")
            took = anyio.current_time() - start
            assert await reader.readexactly(1) == b"c"  # v1: the intent byte, no hello answer
            writer.close()
            replay_writer.close()
            return delivery, took, replay

    delivery, took, replay = anyio.run(scenario)
    assert delivery is Delivery.NO_ACK
    assert 0.9 <= took < 3.0
    assert replay == b""


def test_an_unregistered_run_drops_its_connection() -> None:
    async def scenario() -> tuple[bytes, Delivery]:
        async with _channel() as channel:
            env = await channel.register("run-1")
            reader, writer = await asyncio.open_connection("127.0.0.1", int(env["PREFECT__CONTROL_PORT"]))
            writer.write(env["PREFECT__CONTROL_TOKEN"].encode() + b"\n")
            await writer.drain()
            await _connected(channel, "run-1")
            channel.unregister("run-1")  # the run's process ended
            with anyio.fail_after(5):
                closed = await reader.read()
            writer.close()
            return closed, await channel.deliver("run-1", "cancel")

    assert anyio.run(scenario) == (b"", Delivery.NOT_CONNECTED)


def test_the_token_is_masked_in_logs() -> None:
    async def scenario() -> str:
        async with _channel() as channel:
            env = await channel.register("run-1")
            return env["PREFECT__CONTROL_TOKEN"]

    token = anyio.run(scenario)
    assert token.split(".")[0] not in REDACTOR.mask_text(f"env: PREFECT__CONTROL_TOKEN={token}")


def test_unregistered_runs_are_not_connected() -> None:
    async def scenario() -> Delivery:
        async with _channel() as channel:
            return await channel.deliver("unknown", "cancel")

    assert anyio.run(scenario) is Delivery.NOT_CONNECTED


def _env_seen(env: dict[str, str]) -> dict[str, str]:
    """The variables a process run's command sees, launched by the process backend."""
    from agent.backends.base import BackendOptions, Job
    from agent.backends.process.backend import ProcessBackend
    from agent.infra.process import ProcessRuntime

    lines: list[str] = []
    payload = {"command": ["sh", "-c", "env"], "env": {"PATH": "/usr/bin:/bin", **env}, "cwd": None}
    job = Job("run-1", "run", "process", payload, ProcessRuntime(), output=lines.append)

    async def scenario() -> None:
        backend = ProcessBackend(BackendOptions(), hostname="here")
        try:
            await backend.wait(await backend.launch(job))
        finally:
            await backend.aclose()

    anyio.run(scenario)
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_a_flow_runs_process_gets_the_channel_after_its_env() -> None:
    seen = _env_seen({"PREFECT__FLOW_RUN_ID": "run-1", HOOKS_VARIABLE: "true"})
    assert seen["PREFECT__CONTROL_PORT"].isdigit()
    assert seen["PREFECT__CONTROL_TOKEN"].startswith("********.")  # masked: its secret part
    assert seen[HOOKS_VARIABLE] == "false"  # the agent's, over the job's, as Prefect's worker does


def test_a_process_that_is_no_flow_run_gets_no_channel() -> None:
    seen = _env_seen({})  # a direct run (flow-agent infra run): no flow run, no engine
    assert not {"PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN", HOOKS_VARIABLE} & set(seen)
