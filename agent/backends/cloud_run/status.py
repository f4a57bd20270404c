"""How an execution ended, read from its conditions and its tasks' last attempt results.

Prefect read only the `Completed` condition and reported every failure as exit code 1.
The exit code and signal are in each task's `last_attempt_result` (`exit_code`,
`term_signal`, `status.message`); a memory kill shows as exit 137 / SIGKILL or as Cloud
Run's "Memory limit of ... exceeded" message, and a task stopped at the job's timeout says
"The configured timeout was reached": both are named in the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from google.cloud.run_v2 import Condition

from agent.outcome import Outcome, Reason

__all__ = ["condition_message", "has_time", "outcome_of", "started"]

_SUCCEEDED: Final = Condition.State.CONDITION_SUCCEEDED
_FAILED: Final = Condition.State.CONDITION_FAILED
_CANCELLED: Final = Condition.ExecutionReason.CANCELLED
_SIGKILL: Final = 9


def has_time(message: Any, field: str) -> bool:
    return type(message).pb(message).HasField(field)


def _condition(execution: Any, kind: str) -> Any | None:
    return next((c for c in execution.conditions if c.type_ == kind), None)


def condition_message(execution: Any) -> str:
    """The platform's own words: the failed conditions' messages, de-duplicated."""
    messages: list[str] = []
    for condition in execution.conditions:
        if int(condition.state) == _FAILED and condition.message and condition.message not in messages:
            messages.append(condition.message)
    return "; ".join(messages)


def started(execution: Any) -> bool:
    begun = _condition(execution, "Started")
    return (
        has_time(execution, "start_time")
        or execution.running_count > 0
        or (begun is not None and int(begun.state) == _SUCCEEDED)
    )


def outcome_of(execution: Any, tasks: Sequence[Any], *, killed: bool, timeout: int | None) -> Outcome:
    """The outcome of a completed execution (`completion_time` set)."""
    completed = _condition(execution, "Completed")
    cancelled = execution.cancelled_count > 0 or (
        completed is not None and int(completed.execution_reason) == _CANCELLED
    )
    if killed or cancelled:
        who = "flow-agent" if killed else "someone other than this agent"
        return Outcome(Reason.KILLED, detail=f"Cloud Run execution {execution.name} was cancelled by {who}")
    if execution.failed_count == 0 and execution.succeeded_count >= max(execution.task_count, 1):
        return Outcome(Reason.EXITED, exit_code=0)
    said = condition_message(execution)
    attempts = [t.last_attempt_result for t in tasks if has_time(t, "last_attempt_result")]
    failed = [a for a in attempts if a.exit_code or a.term_signal or a.status.code]
    if not failed and not started(execution):
        return Outcome(
            Reason.START_FAILED, detail=f"Cloud Run: {said or 'the execution failed before it started'}"
        )
    return _failed_attempt(failed[0] if failed else None, said, timeout)


def _failed_attempt(attempt: Any | None, said: str, timeout: int | None) -> Outcome:
    exit_code: int | None = None
    words = [said] if said else []
    signal = 0
    if attempt is not None:
        exit_code, signal = int(attempt.exit_code), int(attempt.term_signal)
        if attempt.status.message and attempt.status.message not in said:
            words.insert(0, attempt.status.message)
        if signal:
            words.append(f"the container was terminated by signal {signal}")
            exit_code = exit_code or 128 + signal
    text = "; ".join(words)
    if "timeout" in text.lower():
        limit = f" of {timeout} s" if timeout else ""
        text = f"Cloud Run stopped the task at the job's timeout{limit}: {text}"
    elif text:
        text = f"Cloud Run: {text}"
    oom = exit_code == 137 or signal == _SIGKILL or "memory limit" in text.lower()
    if oom:
        return Outcome(Reason.OOM, exit_code=exit_code, detail=text)
    if exit_code == 0:  # failed without a code of its own: say so rather than claim success
        exit_code = None
    return Outcome(Reason.EXITED, exit_code=exit_code, detail=text)
