"""Run `python -m agent start` as a subprocess, the way a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from support.server import tail

__all__ = ["AgentProcess", "DEFAULT_ENV"]

# Fast loops so scenarios finish quickly; never used to assert durations.
DEFAULT_ENV = {
    "FLOW_AGENT_POLL_INTERVAL": "0.5",
    "FLOW_AGENT_CANCEL_CHECK_INTERVAL": "0.5",
    "FLOW_AGENT_HEARTBEAT_INTERVAL": "5",
    "FLOW_AGENT_KILL_GRACE": "3",
    "FLOW_AGENT_LOG_FORMAT": "json",
}

# Inherited variables that would change what the agent talks to.
_CLEARED = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE")
_CLEARED_PREFIX = "FLOW_AGENT_"


class AgentProcess:
    """`with AgentProcess(url, pool, log_path) as agent:` starts the agent; leaving the block
    stops it (SIGTERM, SIGKILL after 20 s) and kills anything it left behind."""

    def __init__(
        self,
        api_url: str,
        pool: str,
        log_path: Path,
        *extra_args: str,
        env: dict[str, str] | None = None,
        prefect_home: Path | None = None,
    ) -> None:
        self.api_url = api_url
        self.pool = pool
        self.log_path = Path(log_path)
        self.args = [sys.executable, "-m", "agent", "start", "--pool", pool, *extra_args]
        self.env = {
            k: v for k, v in os.environ.items() if k not in _CLEARED and not k.startswith(_CLEARED_PREFIX)
        }
        self.env.update(DEFAULT_ENV)
        self.env["PREFECT_API_URL"] = api_url
        if prefect_home is not None:
            self.env["PREFECT_HOME"] = str(prefect_home)  # for launched Prefect engines
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._descendants: dict[int, psutil.Process] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AgentProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            print(self.describe())
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "agent not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.process is not None, "agent not started"
        self._remember_descendants()
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the agent to exit; return its exit code (TimeoutExpired if it does not)."""
        assert self.process is not None, "agent not started"
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; then kill whatever the agent left running."""
        if self.process is None:
            return None
        if self.alive():
            self._remember_descendants()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._kill_leftovers()
        return self.process.returncode

    # -- children --------------------------------------------------------------------------------

    def descendants(self) -> list[psutil.Process]:
        """Processes the agent currently has running (launched runs and their children)."""
        if not self.alive():
            return []
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in found:
            self._descendants.setdefault(child.pid, child)
        return found

    def _remember_descendants(self) -> None:
        self.descendants()

    def _kill_leftovers(self) -> None:
        for child in self._descendants.values():
            try:
                if child.is_running():  # same pid *and* same create time
                    child.kill()
            except psutil.Error:
                pass
        self._descendants.clear()

    # -- output ----------------------------------------------------------------------------------

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines (anything else is kept as {"event": <raw line>})."""
        parsed = []
        for raw in self.output().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            parsed.append(line if isinstance(line, dict) else {"event": raw, "raw": True})
        return parsed

    def events(self, flow_run_id: str | None = None) -> list[str]:
        return [
            str(line.get("event"))
            for line in self.lines()
            if flow_run_id is None or line.get("flow_run_id") == flow_run_id
        ]

    def describe(self, lines: int = 80) -> str:
        return (
            f"--- agent {self.args[4:]} (pid {self.process.pid if self.process else None}, "
            f"exit {self.returncode}) log tail: {self.log_path}\n{tail(self.log_path, lines)}"
        )
