"""What only ACI knows about watching a container group (the engine does the rest).

Each watched group is read on its own (`container_groups.get`, one call per group; the
engine runs them concurrently), after a look at the create operation's poller. When that
operation ended Failed, Azure's message is the outcome unless the container ran: then its
Terminated state (exit code, OOM) is the end, and a running one is watched on. A group that is gone before its
end is LOST and nothing is cleaned up; a group that misses its start deadline is
START_FAILED with the waiting reason Azure gave. Once a run is over its group is deleted,
unless kept; a kept group that never started is stopped, so it cannot start a run already
reported as crashed. A run that ships its output has its container's log read after each
status, and once more before its group is deleted (output.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from azure.core.exceptions import HttpResponseError

from agent.backends.aci.azure import GroupRef, to_backend_error
from agent.backends.aci.output import Output
from agent.backends.aci.status import observe, start_failure
from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound
from agent.backends.engine import Watched
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import Retryable

__all__ = ["DELETE_WAIT", "AciPlatform", "Group", "Read"]

DELETE_WAIT: Final = 120.0  # seconds a cleanup waits for Azure to finish deleting a group
log = get_logger("agent.backends.aci")


@dataclass
class Group:
    """The backend's own state of one watched container group."""

    ref: GroupRef
    client: Any  # the management client with the run's credentials
    keep: bool = False  # keep_container_group
    start_timeout: float = 0.0
    poller: Any = None  # the create operation's LROPoller until it is done
    waiting: str = ""  # why the container is not running yet, in Azure's words
    failed: str | None = None  # the create operation's failure, in Azure's words
    gone: bool = False  # not found any more: nothing to delete or stop
    last_error: str = ""
    output: Output | None = None  # set when the run ships its container's output


@dataclass(frozen=True)
class Read:
    """One read of a group (None: not found)."""

    group: Any = None


class AciPlatform:
    batch_size = 1  # ARM has no batched read of container groups

    def __init__(self, sdk: SdkCalls, *, interval: float) -> None:
        self._sdk = sdk
        self._interval = interval

    def batch_key(self, watched: Watched[Group]) -> Hashable:
        return watched.pid

    async def read(self, batch: Sequence[Watched[Group]]) -> Mapping[str, Read]:
        answer: dict[str, Read] = {}
        for watched in batch:
            state = watched.state
            state.failed = _provisioning_failure(state) or state.failed  # kept until concluded
            try:
                group = await self._get(watched)
            except InfrastructureNotFound:
                if state.failed is not None:  # the failure says more than "not found"
                    answer[watched.pid] = Read()
                continue
            answer[watched.pid] = Read(group=group)
            if state.output is not None and observe(group).started:  # read after the status: a
                await self._follow(watched, group, final=False)  # Terminated one's log is whole
        return answer

    async def _follow(self, watched: Watched[Group], group: Any, *, final: bool) -> None:
        state = watched.state
        assert state.output is not None
        if not state.output.container:  # an adopted group: its (first and only) container
            first = (getattr(group, "containers", None) or [None])[0]
            state.output.container = str(getattr(first, "name", "") or "")
        await state.output.follow(self._sdk, state.client, state.ref, watched.flow_run_id, final=final)

    async def _get(self, watched: Watched[Group]) -> Any:
        state, ref = watched.state, watched.state.ref
        try:
            return await self._sdk.once(  # no retry: the next tick is the retry
                lambda: state.client.container_groups.get(ref.resource_group, ref.name),
                f"reading container group {ref.name!r}",
            )
        except InfrastructureNotFound:
            raise
        except BackendError as exc:
            if str(exc) != state.last_error:  # once per distinct problem, not every tick
                log.warning(
                    "cannot read the container group; trying again",
                    flow_run_id=watched.flow_run_id,
                    error=str(exc),
                )
                state.last_error = str(exc)
            if isinstance(exc, Retryable):
                raise
            # a refusal too is tried again next tick: the group may still be running
            raise BackendUnavailable(str(exc)) from None

    def conclude(self, watched: Watched[Group], status: Read | None) -> Outcome | None:
        state = watched.state
        if status is None or status.group is None:
            state.gone = True
            if state.failed is None:
                return Outcome(
                    Reason.LOST,
                    detail=f"container group {state.ref.name!r} was deleted before the run finished",
                )
            return Outcome(Reason.START_FAILED, detail=f"container group provisioning failed: {state.failed}")
        seen = observe(status.group)
        watched.started = watched.started or seen.started
        state.waiting = seen.waiting or state.waiting
        if seen.started or state.failed is None:
            return seen.outcome  # a container that ran ends with its own state, not the operation's
        why = state.failed
        if seen.waiting and seen.waiting not in why:
            why += f"; {seen.waiting}"
        return Outcome(Reason.START_FAILED, detail=f"container group provisioning failed: {why}")

    async def overdue(self, watched: Watched[Group], which: str) -> Outcome | None:
        if which != "start":  # ACI runs have no end deadline
            return None
        return start_failure(watched.state.start_timeout, watched.state.waiting)

    async def clean_up(self, watched: Watched[Group], outcome: Outcome) -> None:
        state = watched.state
        if state.gone:
            return
        ran = watched.started or outcome.exit_code is not None  # (a kill may see the end first)
        if state.output is not None and ran:  # the last lines, before the log goes with the group
            await self._follow(watched, None, final=True)
        try:
            if not state.keep:
                await self.delete(state)
            elif outcome.reason is Reason.START_FAILED:
                await self.stop(state)
        except BackendError as exc:
            log.error(
                "could not clean up the container group; delete it by hand",
                flow_run_id=watched.flow_run_id,
                infrastructure_pid=state.ref.pid,
                error=str(exc),
            )

    # -- deleting, stopping ----------------------------------------------------------------------

    async def remove(self, state: Group) -> str:
        """A kill: delete the group, or stop it when it is kept. Says which it did."""
        if state.keep:
            await self.stop(state)
            return "stopped"
        await self.delete(state)
        return "deleted"

    async def delete(self, state: Group) -> None:
        ref, client = state.ref, state.client

        def delete() -> None:
            poller = client.container_groups.begin_delete(
                ref.resource_group, ref.name, polling_interval=self._interval
            )
            poller.result(timeout=DELETE_WAIT)
            if not poller.done():
                log.warning("Azure is still deleting the container group", infrastructure_pid=ref.pid)

        with contextlib.suppress(InfrastructureNotFound):  # already gone is the goal
            await self._sdk(delete, f"deleting container group {ref.name!r}")

    async def stop(self, state: Group) -> None:
        ref, client = state.ref, state.client
        with contextlib.suppress(InfrastructureNotFound):
            await self._sdk(
                lambda: client.container_groups.stop(ref.resource_group, ref.name),
                f"stopping container group {ref.name!r}",
            )


def _provisioning_failure(state: Group) -> str | None:
    """Azure's message if the create operation ended Failed; None otherwise."""
    poller = state.poller
    if poller is None or not poller.done():
        return None
    state.poller = None
    try:
        poller.result(timeout=0)
    except HttpResponseError as exc:
        error = to_backend_error(exc, "")
        if isinstance(error, BackendUnavailable):
            return None  # the poll failed, not the group: the instance view decides
        code, message = getattr(exc.error, "code", None), getattr(exc.error, "message", None)
        if message:
            return f"({code}) {message}" if code else str(message)
        return str(error).removeprefix(": ")
    except Exception as exc:  # noqa: BLE001 - anything else: let the instance view decide
        log.debug("create operation poller failed", error=type(exc).__name__)
    return None
