"""What a container group's instance view says about a run: pure, no I/O.

ACI reports the container's `current_state` (`Waiting` / `Running` / `Terminated`, with
`exit_code` and `detail_status`) and recent `events`. There is no documented OOM reason:
exit 137 (SIGKILL) is the memory kill, and a `detail_status` that names it
("OOMKilled") counts as well.

Only the state says the container ran: `start_time` is the time the *current state*
started (the SDK's `ContainerState` docstring), and Azure's own example
ContainerGroups_Get_Container_Groups_Get_Failed.json shows `Waiting` with a `startTime`
(docs/cloud-behaviour.md, "ACI"). A group whose provisioning Failed before its container
ran did not start; one that ran ends with its container's Terminated state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.outcome import Outcome, Reason

__all__ = ["RUN_ID_ENV", "RUN_ID_TAG", "Observation", "observe", "run_ids", "start_failure"]

_STARTED = frozenset({"running", "terminated"})
# The kind tags a group with the run's labels, "/" replaced (Azure forbids it in tag names),
# and gives its container the run's Prefect environment.
RUN_ID_TAG = "prefect.io_flow-run-id"
RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"


@dataclass(frozen=True)
class Observation:
    started: bool  # the container ran (or runs)
    outcome: Outcome | None  # set once the run is over
    waiting: str  # why it is not running yet, in Azure's words ("" when unknown)


def observe(group: Any) -> Observation:
    """Read a `ContainerGroup` model returned by `container_groups.get`."""
    container = (getattr(group, "containers", None) or [None])[0]
    view = getattr(container, "instance_view", None)
    current = getattr(view, "current_state", None)
    state = str(getattr(current, "state", "") or "")
    detail = str(getattr(current, "detail_status", "") or "")
    started = state.lower() in _STARTED  # not start_time: a Waiting state has one too
    if state.lower() == "terminated":
        return Observation(True, _terminated(getattr(current, "exit_code", None), detail), "")
    provisioning = str(getattr(group, "provisioning_state", "") or "")
    waiting = _waiting(detail, getattr(view, "events", None) or [])
    if provisioning.lower() == "failed" and not started:
        why = waiting or "no reason given"
        return Observation(
            False, Outcome(Reason.START_FAILED, detail=f"container group provisioning failed: {why}"), why
        )
    return Observation(started, None, waiting)


def _terminated(exit_code: int | None, detail: str) -> Outcome:
    if exit_code is None:
        return Outcome(
            Reason.LOST, detail=f"the container terminated without an exit code ({detail or 'no detail'})"
        )
    words = f"Azure: {detail}" if detail else ""
    if exit_code == 137 or "oom" in detail.lower():
        return Outcome(Reason.OOM, exit_code=exit_code, detail=words)
    return Outcome(Reason.EXITED, exit_code=exit_code, detail=words if exit_code else "")


def _waiting(detail: str, events: list[Any]) -> str:
    """The waiting reason and the last warning event, without repeating one in the other."""
    parts = [detail] if detail and detail.lower() not in ("pending", "waiting") else []
    for event in reversed(events):
        message = str(getattr(event, "message", "") or "")
        if message and str(getattr(event, "type", "")).lower() == "warning":
            if message not in parts:
                parts.append(message)
            break
    return "; ".join(parts)


def start_failure(timeout: float, waiting: str) -> Outcome:
    why = f": {waiting}" if waiting else " (no reason reported by Azure)"
    return Outcome(Reason.START_FAILED, detail=f"the container did not start within {timeout:g} s{why}")


def run_ids(group: Any) -> set[str]:
    """The flow run ids a container group says it belongs to: its run id tag and the plain
    `PREFECT__FLOW_RUN_ID` of its containers (Azure shows plain values back, never secure
    ones). Only compared, never shown: the other env values are not read."""
    found = set()
    tag = (getattr(group, "tags", None) or {}).get(RUN_ID_TAG)
    if tag:
        found.add(str(tag).lower())
    for container in getattr(group, "containers", None) or []:
        for variable in getattr(container, "environment_variables", None) or []:
            if getattr(variable, "name", None) == RUN_ID_ENV and getattr(variable, "value", None):
                found.add(str(variable.value).lower())
    return found
