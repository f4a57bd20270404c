"""sd_notify over a real unix datagram socket, the way systemd listens for it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent.observe.sdnotify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier(path)
    assert notifier.ready("serving pools etl,\nreports")
    assert received(sock) == "READY=1\nSTATUS=serving pools etl, reports"
    assert notifier.status("draining: 2 runs in flight")
    assert received(sock) == "STATUS=draining: 2 runs in flight"
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"
    notifier.close()


def test_watchdog_loop_pings_at_half_the_period(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier(path, watchdog_usec=100_000)
    assert notifier.watchdog_interval == pytest.approx(0.05)

    async def scenario() -> None:
        with anyio.move_on_after(0.3):
            await notifier.watchdog_loop()

    anyio.run(scenario)
    sock.settimeout(0.5)
    pings = [received(sock) for _ in range(3)]
    assert pings == ["WATCHDOG=1"] * 3


def test_watchdog_loop_is_quiet_while_unhealthy(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier(path, watchdog_usec=20_000)

    async def scenario() -> None:
        with anyio.move_on_after(0.1):
            await notifier.watchdog_loop(healthy=lambda: False)

    anyio.run(scenario)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux", reason="Linux only")
def test_abstract_namespace_socket() -> None:
    name = f"flow-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        SystemdNotifier(f"@{name}").watchdog()
        assert received(sock) == "WATCHDOG=1"


def test_without_a_socket_nothing_happens() -> None:
    notifier = SystemdNotifier(None, watchdog_usec=1_000_000)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    anyio.run(notifier.watchdog_loop)  # returns at once


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    assert not SystemdNotifier(str(tmp_path / "gone.sock")).ready()


def test_from_environ() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}
    mine = SystemdNotifier.from_environ(env, pid=42)
    assert (mine.socket_path, mine.watchdog_interval) == ("/run/systemd/notify", 1.0)
    assert SystemdNotifier.from_environ(env, pid=43).watchdog_interval is None  # meant for another
    assert SystemdNotifier.from_environ({"WATCHDOG_USEC": "junk"}, pid=1).watchdog_usec is None
    assert not SystemdNotifier.from_environ({}, pid=1).enabled
