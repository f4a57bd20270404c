"""The exit-code table and the messages people read in the UI."""

from __future__ import annotations

import pytest

from agent.outcome import Outcome, Reason, explain_exit_code


@pytest.mark.parametrize("code", [-9, 137, 247])
def test_memory_kills_carry_an_oom_warning(code: int) -> None:
    outcome = Outcome(Reason.EXITED, exit_code=code)
    assert outcome.oom
    assert f"exit code {code}" in outcome.message()
    assert "OOM" in outcome.message()
    assert "memory" in outcome.resolution().lower()


@pytest.mark.parametrize("code", [1, 3, 127, 143, -15])
def test_other_failures_do_not_claim_oom(code: int) -> None:
    outcome = Outcome(Reason.EXITED, exit_code=code)
    assert not outcome.oom and not outcome.succeeded
    assert outcome.message().startswith(f"exit code {code}: ")


def test_zero_is_success() -> None:
    assert Outcome(Reason.EXITED, exit_code=0).succeeded


def test_unknown_codes_and_signals_still_explain_themselves() -> None:
    assert "unexpected" in explain_exit_code(3).explanation
    assert "SIGHUP" in explain_exit_code(-1).explanation


def test_native_oom_signal_without_exit_code() -> None:
    outcome = Outcome(Reason.OOM, detail="OOMKilled")
    assert outcome.oom and "OOMKilled" in outcome.message()


def test_backend_detail_is_kept() -> None:
    message = Outcome(Reason.START_FAILED, detail="CannotPullContainerError").message()
    assert "never started" in message and "CannotPullContainerError" in message
