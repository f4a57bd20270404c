"""How an execution ended, read from its conditions and its tasks' last attempt results.

What the service gives, per Google's reference (docs/cloud-behaviour.md, "Cloud Run"):

* The end is the `Completed` condition reaching CONDITION_SUCCEEDED or CONDITION_FAILED.
  `completion_time` and the task counts are "not guaranteed to be set in happens-before
  order", so neither alone decides the end or its success: an execution whose condition is
  not terminal yet is read again next round, and success is the condition's, not the counts'.
* A cancelled execution says so in the condition's `execution_reason` (CANCELLED) or in
  `cancelled_count`; only that evidence makes a run KILLED. A cancel that raced the end of
  the run (the agent asked, the run had already ended) reports the run's real end.
* Each task's `last_attempt_result` holds `exit_code` or `term_signal` ("at most one of
  exit_code or term_signal will be set"; `term_signal` is "set to non-zero if the container
  is terminated by the system") and a `status` whose message carries Cloud Run's words.
* A task stopped at the job's timeout says "The configured timeout was reached"; being
  stopped, it may carry a termination signal, so the timeout is decided by those words
  first and is never read as an OOM.
* Cloud Run documents memory kills only as "instances that exceed their allowed memory
  limit are terminated"; the words "Memory limit of N MiB exceeded with M MiB used" are a
  Cloud Logging entry. An OOM is therefore: those words wherever they appear (condition,
  attempt status), else a task the system terminated with SIGKILL that was neither
  cancelled nor timed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from google.cloud.run_v2 import Condition

from agent.outcome import Outcome, Reason

__all__ = ["condition_message", "ended", "has_time", "outcome_of", "started", "waiting_message"]

_SUCCEEDED: Final = Condition.State.CONDITION_SUCCEEDED
_FAILED: Final = Condition.State.CONDITION_FAILED
_PENDING: Final = Condition.State.CONDITION_PENDING
_CANCELLED: Final = Condition.ExecutionReason.CANCELLED
_SIGKILL: Final = 9
_TIMEOUT_WORDS: Final = ("configured timeout was reached", "timeout")
_MEMORY_WORDS: Final = ("memory limit of", "memory limit", "out of memory")


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


def waiting_message(execution: Any) -> str:
    """Why an execution has not started: its failed or pending conditions' messages."""
    messages: list[str] = []
    for condition in execution.conditions:
        state = int(condition.state)
        if state in (_FAILED, _PENDING) and condition.message and condition.message not in messages:
            messages.append(condition.message)
    return "; ".join(messages)


def started(execution: Any) -> bool:
    begun = _condition(execution, "Started")
    return (
        has_time(execution, "start_time")
        or execution.running_count > 0
        or (begun is not None and int(begun.state) == _SUCCEEDED)
    )


def cancelled(execution: Any) -> bool:
    completed = _condition(execution, "Completed")
    return execution.cancelled_count > 0 or (
        completed is not None
        and int(completed.execution_reason) == _CANCELLED
        and int(completed.state) in (_SUCCEEDED, _FAILED)
    )


def ended(execution: Any) -> bool:
    """Whether the execution has ended: its `Completed` condition is terminal (or it says it
    was cancelled). `completion_time` alone is not enough (not ordered with the rest)."""
    completed = _condition(execution, "Completed")
    terminal = completed is not None and int(completed.state) in (_SUCCEEDED, _FAILED)
    return terminal or cancelled(execution)


def outcome_of(execution: Any, tasks: Sequence[Any], *, killed: bool, timeout: int | None) -> Outcome | None:
    """The outcome of an ended execution; None while it has not ended (read it again)."""
    if not ended(execution):
        return None
    if cancelled(execution):
        who = "flow-agent" if killed else "someone other than this agent"
        return Outcome(Reason.KILLED, detail=f"Cloud Run execution {execution.name} was cancelled by {who}")
    completed = _condition(execution, "Completed")
    if completed is not None and int(completed.state) == _SUCCEEDED:
        return Outcome(Reason.EXITED, exit_code=0)
    said = condition_message(execution)
    attempts = [t.last_attempt_result for t in tasks if has_time(t, "last_attempt_result")]
    failed = [a for a in attempts if a.exit_code or a.term_signal or a.status.code]
    if not failed and not started(execution):
        return Outcome(
            Reason.START_FAILED, detail=f"Cloud Run: {said or 'the execution failed before it started'}"
        )
    return _failed_attempt(failed[0] if failed else None, said, timeout, execution.log_uri)


def _failed_attempt(attempt: Any | None, said: str, timeout: int | None, log_uri: str) -> Outcome:
    exit_code: int | None = None
    signal = 0
    words = [said] if said else []
    if attempt is not None:
        exit_code, signal = int(attempt.exit_code) or None, int(attempt.term_signal)
        if attempt.status.message and attempt.status.message not in said:
            words.insert(0, attempt.status.message)
        if signal:
            words.append(f"the container was terminated by the system with signal {signal}")
    text = "; ".join(words)
    lowered = text.lower()
    if any(w in lowered for w in _TIMEOUT_WORDS):
        # stopped at the timeout: its signal (if any) is the stop, not a memory kill
        limit = f" of {timeout} s" if timeout else ""
        return Outcome(
            Reason.EXITED,
            exit_code=exit_code if exit_code and exit_code != 137 else None,
            detail=f"Cloud Run stopped the task at the job's timeout{limit}: {text}",
        )
    detail = f"Cloud Run: {text}" if text else ""
    if any(w in lowered for w in _MEMORY_WORDS):
        return Outcome(Reason.OOM, exit_code=exit_code, detail=detail)
    if signal == _SIGKILL or exit_code == 137:
        # the API has no memory words: they are a Cloud Logging entry; point at it
        logs = f" ({log_uri})" if log_uri else ""
        where = f"; Cloud Run's 'Memory limit of ... exceeded' entry is in the execution's logs{logs}"
        return Outcome(Reason.OOM, exit_code=exit_code, detail=detail + where)
    if exit_code is None and signal:
        exit_code = 128 + signal  # the shell's convention, so the exit table explains it
    return Outcome(Reason.EXITED, exit_code=exit_code, detail=detail)
