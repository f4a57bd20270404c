"""Slots, secret redaction and settings: small parts the loops rely on."""

from __future__ import annotations

import anyio
import pytest

from agent.observe.logging import Redactor
from agent.runtime.slots import Slots
from agent.settings import Settings


def test_slots_never_exceed_the_limit() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take()
    assert slots.free == 0
    slots.release()
    assert slots.free == 1


def test_unlimited_slots() -> None:
    slots = Slots(None)
    assert all(slots.try_take() for _ in range(1000))
    assert slots.free is None


def test_wait_free_wakes_on_release() -> None:
    async def scenario() -> None:
        slots = Slots(1)
        slots.try_take()
        async with anyio.create_task_group() as tg:
            tg.start_soon(slots.wait_free)
            await anyio.sleep(0.01)
            slots.release()
        assert slots.free == 1

    anyio.run(scenario)


def test_releasing_more_than_taken_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        Slots(1).release()


def test_redactor_masks_secrets_everywhere_in_a_line() -> None:
    redact = Redactor(["s3cr3t-key", "abc"])  # too short to mask without wrecking words
    event = {"event": "auth with s3cr3t-key", "nested": {"list": ["x s3cr3t-key y"]}, "n": 1}
    masked = redact(None, "info", event)
    assert "s3cr3t-key" not in repr(masked)
    assert masked["n"] == 1
    assert redact(None, "info", {"event": "abc"})["event"] == "abc"


def test_settings_read_prefect_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api/")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:hunter22")
    monkeypatch.setenv("FLOW_AGENT_POOLS", "a, b")
    settings = Settings(limit=4)
    assert settings.api_url == "http://127.0.0.1:4200/api"
    assert settings.pools == ["a", "b"] and settings.limit == 4
    assert "hunter22" in settings.secrets() and "admin:hunter22" in settings.secrets()
    assert "hunter22" not in repr(settings)


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOW_AGENT_LIMIT", "9")
    assert Settings(limit=2).limit == 2


def test_bad_api_url_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "localhost:4200")
    with pytest.raises(ValueError, match="http://"):
        Settings()
