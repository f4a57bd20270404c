"""What `why` and `status` print on a terminal (the JSON is asserted by the integration tests)."""

from __future__ import annotations

import pytest
from rich.console import Console
from test_diagnose import agent, facts, run  # same folder: prepended to sys.path by pytest

import agent.cli.why as why_module
from agent.cli.status import render
from agent.orchestrate.diagnose import diagnose


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Console:
    console = Console(record=True, width=100, color_system=None)
    monkeypatch.setattr(why_module, "out", console)
    return console


def test_why_prints_the_state_headline_causes_and_fixes(screen: Console) -> None:
    f = facts(
        run(),
        agents=[agent(limit=1, free_slots=0, in_flight=["x"])],
        unreachable={"http://b:8080": "refused"},
    )
    why_module.show(diagnose(f), f)
    text = screen.export_text()
    assert "run-r1 (r1): Scheduled, pool 'p', queue 'default'" in text
    assert "not running yet (Scheduled):\n  - every agent serving it is at its --limit" in text
    assert "fix: raise --limit (FLOW_AGENT_LIMIT)" in text
    assert "agent http://b:8080 did not answer /status: refused" in text


def test_status_screen() -> None:
    report = {
        "pools": [
            {
                "name": "p",
                "paused": True,
                "due": 1,
                "agents": [],
                "waiting": [
                    {"id": "r1", "name": "run-r1", "state": "Late", "reason": "work pool 'p' is paused"}
                ],
                "crashed": [{"id": "r2", "name": "run-r2", "message": "exit code -9: SIGKILL, possibly OOM"}],
            },
            {"name": "gone", "error": "work pool 'gone' does not exist"},
        ],
        "agents_unreachable": {},
    }
    console = Console(record=True, width=120, color_system=None)
    console.print(render(report))
    text = console.export_text()
    assert "Work pool p (paused): 1 due" in text
    assert "no agent online" in text
    assert "Late         run-r1 (r1): work pool 'p' is paused" in text
    assert "CRASHED      run-r2 (r2): exit code -9: SIGKILL, possibly OOM" in text
    assert "work pool 'gone' does not exist" in text
