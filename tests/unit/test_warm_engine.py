"""When a process run may start warm (agent/backends/process/warm.py), and what is said."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent.backends.process import warm
from agent.backends.process.warm import WarmEngine, _key, _Zygote

ENGINE = [sys.executable, "-m", "prefect.engine"]
ENV = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "PREFECT_API_URL": "http://x/api"}


def _spawn(fn):  # accepts() never spawns anything
    raise AssertionError("nothing to spawn")


def test_only_the_default_engine_command_with_the_agents_python_starts_warm() -> None:
    engine = WarmEngine(_spawn)

    assert engine.accepts(ENGINE, ENV)
    assert not engine.accepts(["sh", "-c", "python -m prefect.engine"], ENV)
    assert not engine.accepts([*ENGINE, "--extra"], ENV)
    assert not engine.accepts(["/usr/bin/python3", "-m", "prefect.engine"], ENV)


def test_turned_off_nothing_starts_warm() -> None:
    assert not WarmEngine(_spawn, enabled=False).accepts(ENGINE, ENV)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append(event)


def test_another_python_is_said_once_a_custom_command_not_at_all(monkeypatch) -> None:
    said = _Log()
    monkeypatch.setattr(warm, "log", said)
    engine = WarmEngine(_spawn)
    for _ in range(3):
        engine.accepts(["/opt/other/python", "-m", "prefect.engine"], ENV)
        engine.accepts(["sh", "-c", "exit 0"], ENV)

    assert said.lines == ["runs with another Python than the agent's start cold"]


def test_runs_share_a_warm_engine_only_with_the_same_interpreter_variables() -> None:
    assert _key({**ENV, "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT__FLOW_RUN_ID": "1"}) == _key(ENV)
    for other in (
        {"PYTHONPATH": "/elsewhere"},
        {"LANG": "de_DE.UTF-8"},
        {"PYTHONOPTIMIZE": "1"},
        {"LC_ALL": "C"},
    ):
        assert _key({**ENV, **other}) != _key(ENV), other


def test_a_warm_engine_is_stale_once_a_directory_it_imports_from_changes(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    zygote = _Zygote(None, None, frozenset())  # type: ignore[arg-type]
    zygote.paths = {str(site): site.stat().st_mtime}
    assert not zygote.stale()

    os.utime(site, (site.stat().st_atime, site.stat().st_mtime + 10))  # a package installed

    assert zygote.stale()
