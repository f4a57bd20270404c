"""The agent's end of Prefect's loopback control channel (protocol v1), for process runs.

Prefect's engine tells a SIGTERM that means "cancel" from one that means "crash" only by
an intent its supervisor delivered first (`prefect/_internal/control_listener.py`): a
plain SIGTERM makes it force CANCELLING into CRASHED and run `on_crashed`. So, as
Prefect's process worker does, the agent listens on 127.0.0.1, gives each launch a port
and a one-time token (`PREFECT__CONTROL_PORT`, `PREFECT__CONTROL_TOKEN`), and on cancel
sends the intent byte and waits for the engine's ack before it signals the group.

Wire format (v1): the engine connects once its flow run context starts and sends
`<token>\\n`, then a 5-byte hello `\\x00PF<version><capabilities>` that a v1 peer leaves
unanswered. Cancel is `c`; the engine answers `a` once the intent is committed. Nothing
else is sent either way: outcome receipts (v2) are not negotiated.

Tokens are `<channel secret>.<counter>`: the secret is registered once with the redactor,
so a token printed by a command that never consumed it is masked in every log without
one mask per run.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from agent.backends.base import Delivery
from agent.observe.logging import REDACTOR, get_logger

__all__ = ["CONTROL_ENV", "HOOKS_VARIABLE", "ControlChannel"]

_HELLO_PREFIX: Final = b"\x00"
_HELLO_REST: Final = 4  # b"PF" + version + capabilities
_TOKEN_LIMIT: Final = 256
_AUTH_TIMEOUT: Final = 5.0  # seconds for a connection to say its token
_ACK_TIMEOUT: Final = 1.0  # Prefect's own bound; the engine acks from a waiting thread
_INTENTS: Final = {"cancel": b"c", "reschedule": b"r", "relinquish": b"q"}
_GONE: Final = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)

# Set on every process launch, as Prefect's `EngineCommandStarter` does. "false": the
# agent, not the engine, drives an acknowledged CANCELLING to CANCELLED and runs the
# on_cancellation hooks (Prefect's workspace supervisor forces the same value, so both
# start paths behave alike); engine-detected crashes stay the engine's either way.
CONTROL_ENV: Final = ("PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN")
HOOKS_VARIABLE: Final = "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


@dataclass
class _Session:
    stream: SocketStream | None = None
    scope: anyio.CancelScope | None = None  # the connection's handler: cancelled to drop it
    acked: anyio.Event = field(default_factory=anyio.Event)
    pending: bool = False

    def drop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class ControlChannel:
    """One loopback listener per agent, one session per launched run. `spawn` runs the
    listener in the backend's task group (the watch engine's)."""

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._secret = secrets.token_hex(16)
        REDACTOR.add(self._secret)
        self._counter = itertools.count(1)
        self._listener: SocketListener | None = None
        self._serving: anyio.CancelScope | None = None  # the listener's server, once it runs
        self._port: int | None = None
        self._tokens: dict[str, str] = {}  # unused token -> flow run id
        self._sessions: dict[str, _Session] = {}  # flow run id -> its session
        self._lock = anyio.Lock()
        self._log = get_logger("agent.backends.process.control")

    async def register(self, flow_run_id: str) -> dict[str, str]:
        """The variables that let this launch's engine connect; {} when no listener could
        be bound (cancellation then falls back to the plain kill, as Prefect's does)."""
        port = await self._listening()
        if port is None:
            return {}
        self.unregister(flow_run_id)
        token = f"{self._secret}.{next(self._counter)}"
        self._tokens[token] = flow_run_id
        self._sessions[flow_run_id] = _Session()
        return {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token, HOOKS_VARIABLE: "false"}

    def unregister(self, flow_run_id: str) -> None:
        session = self._sessions.pop(flow_run_id, None)
        for token in [t for t, run in self._tokens.items() if run == flow_run_id]:
            del self._tokens[token]
        if session is not None:
            session.drop()

    async def deliver(self, flow_run_id: str, intent: str = "cancel") -> Delivery:
        """Send `intent` to the run's engine and wait (bounded) for its ack."""
        session = self._sessions.get(flow_run_id)
        if session is None or session.stream is None:
            return Delivery.NOT_CONNECTED
        if session.pending:
            return Delivery.NO_ACK  # one intent per session: the engine ignores a second
        session.pending = True
        try:
            await session.stream.send(_INTENTS[intent])
        except (OSError, *_GONE):
            return Delivery.NOT_CONNECTED
        with anyio.move_on_after(_ACK_TIMEOUT):
            await session.acked.wait()
            return Delivery.ACKED
        return Delivery.NO_ACK

    async def aclose(self) -> None:
        for run_id in list(self._sessions):
            self.unregister(run_id)
        if self._serving is not None:
            self._serving.cancel()  # the listener closes as its server ends

    # -- listening -------------------------------------------------------------------------

    async def _listening(self) -> int | None:
        async with self._lock:  # started on the first launch: it needs the running loop
            if self._listener is None:
                try:
                    self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
                except OSError as exc:
                    self._log.warning(
                        "cannot listen on 127.0.0.1 for Prefect's control channel; "
                        "cancellations will kill without telling the engine first",
                        error=str(exc),
                    )
                    return None
                self._port = self._listener.extra(SocketAttribute.local_port)
                self._spawn(self._serve_all)
            return self._port

    async def _serve_all(self) -> None:
        listener = self._listener
        if listener is not None:
            with anyio.CancelScope() as self._serving:
                async with listener:
                    await listener.serve(self._serve)

    async def _serve(self, stream: SocketStream) -> None:
        session = None
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                with anyio.fail_after(_AUTH_TIMEOUT):
                    line = await buffered.receive_until(b"\n", _TOKEN_LIMIT)
                run_id = self._tokens.pop(line.strip().decode("ascii", errors="replace"), None)
                session = self._sessions.get(run_id) if run_id else None
                if session is None or session.stream is not None:
                    return  # unknown or used token: a replay never takes over a session
                with anyio.CancelScope() as session.scope:
                    session.stream = stream
                    await self._read(buffered, session)
            except (TimeoutError, OSError, *_GONE):
                pass  # a peer that is gone or broke the protocol: its session ends
            finally:
                if session is not None and session.stream is stream:
                    session.stream = None

    @staticmethod
    async def _read(buffered: BufferedByteReceiveStream, session: _Session) -> None:
        while True:
            data = await buffered.receive_exactly(1)
            if data == _HELLO_PREFIX:  # a v2 hello: a v1 peer answers nothing
                await buffered.receive_exactly(_HELLO_REST)
            elif data == b"a" and session.pending:
                session.acked.set()
                return
            else:
                return  # anything else breaks the protocol: drop the session
