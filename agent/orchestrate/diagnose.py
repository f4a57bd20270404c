"""Why a flow run is not running yet, or why it ended as it did: pure reasoning over what
was read from the server and from the agents' `/status` (`run_facts`); the rules that hold
a scheduled run back are in `holdbacks`. Nothing here does I/O, so every rule is tested
with plain data (`agent/cli/why.py` does the reading).
"""

from __future__ import annotations

from agent.api.models import StateType
from agent.orchestrate.holdbacks import PAGE, ahead, held_back, left_alone
from agent.orchestrate.run_facts import (
    Cause,
    Diagnosis,
    Facts,
    PoolFacts,
    ago,
    at_time,
    online_workers,
    state_message,
)

__all__ = ["PAGE", "Cause", "Diagnosis", "Facts", "PoolFacts", "diagnose", "online_workers"]

_OOM_CODES = ("exit code -9", "exit code 137", "exit code 247")


def diagnose(facts: Facts) -> Diagnosis:
    run = facts.run
    kind = run.current_type
    label = run.state_label
    if kind is None or kind in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
        causes, headline = _waiting(facts)
    else:
        causes, headline = _started(facts)
    return Diagnosis(
        run_id=run.id,
        run_name=run.name,
        state=label,
        pool=run.work_pool_name,
        queue=run.work_queue_name,
        headline=headline,
        causes=causes,
    )


def _waiting(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    if run.current_type is StateType.PAUSED:
        return (
            [],
            f"paused by its flow ({state_message(run) or 'waiting for input'}): resume it in the Prefect UI",
        )
    if run.current_type is StateType.PENDING:
        return _pending(facts)
    if run.work_pool_name is None:
        cause = Cause(
            "no_pool",
            "the run has no work pool, so no agent will ever pick it up",
            "deploy the flow to a work pool (deployment work_pool_name) and run it from the deployment",
        )
        return [cause], "not running: it is in no work pool"
    pool = facts.pool.pool
    if pool is None:
        cause = Cause(
            "pool_missing",
            f"work pool {run.work_pool_name!r} does not exist",
            f"create it, or start an agent that creates it: flow-agent start --pool {run.work_pool_name}",
        )
        return [cause], "not running: its work pool does not exist"
    causes = held_back(facts)
    due_at = run.next_scheduled_start_time or run.expected_start_time
    if due_at is not None and due_at > facts.now and run.state_label != "AwaitingConcurrencySlot":
        headline = f"not due yet: scheduled for {at_time(due_at)} (in {ago(due_at - facts.now)})"
    elif causes:
        headline = f"not running yet ({run.state_label}): {causes[0].summary}"
    else:
        late = f", due {ago(facts.now - due_at)} ago" if due_at else ""
        before = ahead(facts)
        queue = f" ({before} due run(s) come before it)" if before else ""
        headline = (
            f"due{late} and nothing found holds it back: an agent serving pool {pool.name!r} "
            f"should claim it at its next poll{queue}"
        )
    return causes, headline


def _pending(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    claimed = state_message(run) or "claimed by a worker"
    causes = left_alone(facts)
    holder = next((a for a in facts.agents if run.id in a.in_flight), None)
    if holder is not None:
        headline = f"PENDING: {claimed}; agent {holder.name!r} is launching it"
    else:
        since = run.state.timestamp if run.state else None
        when = f" for {ago(facts.now - since)}" if since else ""
        headline = f"PENDING{when}: {claimed}; its infrastructure has not started the flow yet"
    return causes, headline


def _started(facts: Facts) -> tuple[list[Cause], str]:
    run = facts.run
    kind = run.current_type
    message = state_message(run)
    if kind is StateType.RUNNING:
        holder = next((a.name for a in facts.agents if run.id in a.in_flight), None)
        by = f" under agent {holder!r}" if holder else ""
        return left_alone(facts), f"running{by} since {at_time(run.start_time)}"
    if kind is StateType.CANCELLING:
        return [], "being cancelled: the agent running it kills its infrastructure, then it is CANCELLED"
    if kind is StateType.CRASHED:
        return _crashed(message), f"CRASHED: {message or 'no message'}"
    if kind is StateType.FAILED:
        return [], f"FAILED: {message or 'the flow raised an error'} (see the run's logs)"
    return [], f"{run.state_label}{': ' + message if message else ''}"


def _crashed(message: str) -> list[Cause]:
    if any(code in message for code in _OOM_CODES) or "OOM" in message or "out of memory" in message.lower():
        return [
            Cause(
                "oom",
                "its process was killed by SIGKILL, most often the out-of-memory killer (OOM)",
                "give the run more memory (the pool's or deployment's memory job variable), or find what "
                "else killed it with SIGKILL",
            )
        ]
    if "flow-agent was stopped" in message:
        return [Cause("agent_stopped", "the agent running it was stopped", "let runs finish before stopping")]
    return [
        Cause("crashed", message or "its infrastructure ended without a final state", "see the run's logs")
    ]
