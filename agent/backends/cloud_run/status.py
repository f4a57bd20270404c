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
  limit are terminated"; the words "Memory limit of N MiB exceeded with M MiB used" are an
  entry of the execution's system log in Cloud Logging (`run.googleapis.com/varlog/system`),
  never a field of the Admin API. A task the system ended with SIGKILL (`term_signal` 9, or
  exit 137) that was neither cancelled nor timed out (`sigkilled`) is therefore explained
  by that log (`SystemLog`, read by system_log.py): its memory entry makes an OOM in its
  words; a log read without one makes a SIGKILL by the system, not an OOM; an unread log
  (refused, failed) leaves the older heuristic: OOM, pointing at the execution's logs.
  Memory words in the API's own messages still decide an OOM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.cloud.run_v2 import Condition

from agent.outcome import Outcome, Reason

__all__ = [
    "SystemLog",
    "condition_message",
    "ended",
    "has_time",
    "outcome_of",
    "sigkilled",
    "started",
    "waiting_message",
]

_SUCCEEDED: Final = Condition.State.CONDITION_SUCCEEDED
_FAILED: Final = Condition.State.CONDITION_FAILED
_PENDING: Final = Condition.State.CONDITION_PENDING
_CANCELLED: Final = Condition.ExecutionReason.CANCELLED
_SIGKILL: Final = 9
_TIMEOUT_WORDS: Final = ("configured timeout was reached", "timeout")
_MEMORY_WORDS: Final = ("memory limit of", "memory limit", "out of memory")


@dataclass(frozen=True)
class SystemLog:
    """What the execution's system log (Cloud Logging) says about a SIGKILL, once read:
    `memory` the memory-limit entry's words ("" when there is none), `said` the system's
    own words about the kill (e.g. "Container terminated on signal 9."), if any."""

    memory: str = ""
    said: str = ""


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


def _failed_tasks(tasks: Sequence[Any]) -> list[Any]:
    def failed(attempt: Any) -> bool:
        return bool(attempt.exit_code or attempt.term_signal or attempt.status.code)

    return [t for t in tasks if has_time(t, "last_attempt_result") and failed(t.last_attempt_result)]


def sigkilled(execution: Any, tasks: Sequence[Any]) -> Any | None:
    """The task of an ended execution that the system ended with SIGKILL (`term_signal` 9 or
    exit 137), neither cancelled nor stopped at its timeout nor already said to be a memory
    kill by the API: the end only the execution's system log can explain. None otherwise."""
    if not ended(execution) or cancelled(execution):
        return None
    completed = _condition(execution, "Completed")
    if completed is not None and int(completed.state) == _SUCCEEDED:
        return None
    failed = _failed_tasks(tasks)
    if not failed:
        return None
    attempt = failed[0].last_attempt_result
    if int(attempt.term_signal) != _SIGKILL and int(attempt.exit_code) != 137:
        return None
    lowered = " ".join((condition_message(execution), attempt.status.message)).lower()
    if any(w in lowered for w in _TIMEOUT_WORDS + _MEMORY_WORDS):
        return None
    return failed[0]


def outcome_of(
    execution: Any,
    tasks: Sequence[Any],
    *,
    killed: bool,
    timeout: int | None,
    system: SystemLog | None = None,
) -> Outcome | None:
    """The outcome of an ended execution; None while it has not ended (read it again).
    `system`: the execution's system log as read after a SIGKILL end; None when unread."""
    if not ended(execution):
        return None
    if cancelled(execution):
        who = "flow-agent" if killed else "someone other than this agent"
        return Outcome(Reason.KILLED, detail=f"Cloud Run execution {execution.name} was cancelled by {who}")
    completed = _condition(execution, "Completed")
    if completed is not None and int(completed.state) == _SUCCEEDED:
        return Outcome(Reason.EXITED, exit_code=0)
    said = condition_message(execution)
    failed = _failed_tasks(tasks)
    if not failed and not started(execution):
        return Outcome(
            Reason.START_FAILED, detail=f"Cloud Run: {said or 'the execution failed before it started'}"
        )
    attempt = failed[0].last_attempt_result if failed else None
    return _failed_attempt(attempt, said, timeout, execution.log_uri, system)


def _failed_attempt(
    attempt: Any | None, said: str, timeout: int | None, log_uri: str, system: SystemLog | None
) -> Outcome:
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
        return _sigkill(exit_code, detail, log_uri, system)
    if exit_code is None and signal:
        exit_code = 128 + signal  # the shell's convention, so the exit table explains it
    return Outcome(Reason.EXITED, exit_code=exit_code, detail=detail)


def _sigkill(exit_code: int | None, detail: str, log_uri: str, system: SystemLog | None) -> Outcome:
    """A SIGKILL end, explained by the system log when it was read."""
    logs = f" ({log_uri})" if log_uri else ""
    if system is None:  # unread: the API alone, where a memory kill looks like this
        where = f"; Cloud Run's 'Memory limit of ... exceeded' entry is in the execution's logs{logs}"
        return Outcome(Reason.OOM, exit_code=exit_code, detail=detail + where)
    if system.memory:
        words = f"{detail}; Cloud Logging: {system.memory}{logs}"
        return Outcome(Reason.OOM, exit_code=exit_code, detail=words)
    # no memory entry: not an OOM. No 137 either (the exit table reads 137 as one); the code
    # the container gave, if any, stays in the words
    how = "exited with code 137 (a process in it was killed with SIGKILL)" if exit_code == 137 else "SIGKILL"
    own = f" ({system.said})" if system.said else ""
    return Outcome(
        Reason.EXITED,
        detail=f"{detail}; {how}{own}: the execution's system log has no memory-limit entry, so this "
        f"is not an out-of-memory kill; Cloud Run ends a container with SIGKILL when it outlives the "
        f"grace period after a stop (SIGTERM){logs}",
    )
