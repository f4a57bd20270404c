"""systemd's notify protocol (sd_notify): READY=1, WATCHDOG=1, STOPPING=1, STATUS=...

One datagram per message to the unix socket systemd names in `$NOTIFY_SOCKET` (a path,
or `@name` for the abstract namespace). The socket path and the watchdog period
(`$WATCHDOG_USEC`) are constructor arguments: the CLI reads the environment, nothing
here does. Without a socket every method does nothing, so callers never check. A
failed send is logged, never raised: systemd being away must not stop the agent.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping

import anyio

from agent.observe.logging import get_logger

__all__ = ["SystemdNotifier"]

log = get_logger("agent.sdnotify")


class SystemdNotifier:
    def __init__(self, socket_path: str | None, *, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, pid: int) -> SystemdNotifier:
        """For the CLI: `SystemdNotifier.from_environ(os.environ, pid=os.getpid())`.

        `$WATCHDOG_PID`, when set, names the process the watchdog is meant for; another
        process (a child that inherited the variables) must not ping it."""
        usec: int | None = None
        with contextlib.suppress(ValueError):
            usec = int(environ.get("WATCHDOG_USEC", "") or 0) or None
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if watchdog_pid and watchdog_pid != str(pid):
            usec = None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the period systemd waits, as it advises."""
        return None if self.watchdog_usec is None or not self.enabled else self.watchdog_usec / 2e6

    # -- messages ----------------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", status)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", status)

    def status(self, text: str) -> bool:
        return self.notify(None, text)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def notify(self, message: str | None, status: str | None = None) -> bool:
        """Send one datagram; True if it was sent."""
        if self.socket_path is None:
            return False
        lines = [m for m in (message, _status(status)) if m]
        if not lines:
            return False
        try:
            sock = self._socket()
            sock.sendto("\n".join(lines).encode(), _address(self.socket_path))
        except OSError as exc:
            log.warning("could not notify systemd", socket=self.socket_path, error=str(exc))
            return False
        return True

    async def watchdog_loop(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping every `watchdog_interval` while `healthy()` (always, if not given); returns
        at once without a watchdog. Run it in the app's service task group."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            await anyio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)  # systemd reads promptly; never stall the event loop
            self._sock = sock
        return self._sock


def _address(path: str) -> str | bytes:
    if path.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return b"\0" + path[1:].encode()
    return path


def _status(text: str | None) -> str | None:
    if not text:
        return None
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start a new field
