"""Azure Container Instances: one container group per flow run, watched to its end.

`launch` sends the kind's ARM body as is (`container_groups.begin_create_or_update`) and
returns once Azure accepted it; the SDK's poller follows the create operation
(Azure-AsyncOperation) and its failure is reported with Azure's message. One watch loop per
backend reads every watched group's instance view each `watch_interval` until its container
is Terminated, its provisioning failed, or it missed its start deadline
(`task_start_timeout_seconds`); `wait` only awaits the event that loop sets.

Cleanup: the group is deleted once the run is over, whatever the ending (success, failure,
OOM, failed provisioning, start timeout, kill), unless `keep_container_group`; a kept
group that never started is stopped instead, so it cannot start a run already reported
as crashed. ACI has no grace period to configure: a kill deletes (or, kept, stops) the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import anyio
from azure.core.exceptions import HttpResponseError

from agent.backends import BackendOptions
from agent.backends.aci.azure import AzureClients, GroupRef, to_backend_error
from agent.backends.aci.status import observe, start_failure
from agent.backends.base import (
    BackendError,
    BackendUnavailable,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
)
from agent.observe.logging import get_logger
from agent.outcome import Outcome, Reason
from agent.retry import RetryPolicy

__all__ = ["AciBackend"]

T = TypeVar("T")
_DELETE_WAIT = 120.0  # seconds a cleanup waits for Azure to finish deleting a group
log = get_logger("agent.backends.aci")


@dataclass
class _Watch:
    ref: GroupRef
    client: Any
    flow_run_id: str
    keep: bool = False
    deadline: float | None = None  # monotonic; None: no start deadline (an adopted group)
    start_timeout: float = 0.0
    poller: Any = None  # the create operation's LROPoller until it is done
    started: bool = False
    waiting: str = ""
    closing: bool = False  # the end is decided; cleanup may be running
    outcome: Outcome | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    last_error: str = ""

    def end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done.set()


class AciBackend:
    kind: ClassVar[str] = "aci"
    remote: ClassVar[bool] = True

    def __init__(
        self,
        options: BackendOptions | None = None,
        *,
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`credential` (any `TokenCredential`) replaces the per-run credentials: for tests;
        `client_kwargs` go to every management client (e.g. `connection_verify`)."""
        self._options = options or BackendOptions()
        self._interval = self._options.watch_interval
        self._azure = AzureClients(
            self._options.azure_arm_endpoint, credential=credential, client_kwargs=client_kwargs
        )
        self._retry = retry or RetryPolicy()
        self._watches: dict[str, _Watch] = {}
        self._loop: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- calling the SDK ---------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T], what: str, *, retry: bool = True) -> T:
        """`fn` in a worker thread, SDK errors mapped; transient ones retried with the policy."""

        async def once() -> T:
            try:
                return await anyio.to_thread.run_sync(fn)
            except Exception as exc:  # noqa: BLE001 - mapped at the one boundary
                raise to_backend_error(exc, what) from None

        if not retry:
            return await once()
        return await self._retry.call(once, retry_on=(BackendUnavailable,))

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, job: Job) -> Handle:
        payload, config = job.payload, job.config
        try:
            ref = GroupRef(
                payload["subscription_id"], payload["resource_group"], payload["container_group_name"]
            )
            body = dict(payload["container_group"])
        except (KeyError, TypeError) as exc:
            raise LaunchError(f"the ACI payload lacks {exc}; check the customizations of the run") from None
        client = self._azure.client(
            ref.subscription_id, payload.get("api_version"), getattr(config, "aci_credentials", None)
        )
        try:
            if not body.get("location"):
                location = await self._call(
                    lambda: self._azure.location_of(client, ref), "reading the resource group"
                )
                body["location"] = location
            data = json.dumps(body).encode()  # the kind's body byte for byte, not re-serialised
            poller = await self._call(
                lambda: client.container_groups.begin_create_or_update(
                    ref.resource_group, ref.name, data, polling_interval=self._interval
                ),
                f"creating container group {ref.name!r} in resource group {ref.resource_group!r}",
            )
        except InfrastructureNotFound as exc:  # a missing resource group or subscription
            raise LaunchError(str(exc)) from None
        timeout = float(getattr(config, "task_start_timeout_seconds", 240) or 240)
        watch = _Watch(
            ref,
            client,
            job.flow_run_id,
            keep=bool(getattr(config, "keep_container_group", False)),
            deadline=time.monotonic() + timeout,
            start_timeout=timeout,
            poller=poller,
        )
        self._watches[ref.pid] = watch
        self._ensure_loop()
        return Handle(self.kind, ref.pid, job.flow_run_id)

    # -- the one watch loop ---------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            active = [w for w in self._watches.values() if not w.closing]
            if not active:
                return  # started again by the next launch or wait
            async with anyio.create_task_group() as tg:
                for watch in active:
                    tg.start_soon(self._check_safely, watch)

    async def _check_safely(self, watch: _Watch) -> None:
        # one group's surprise must not end the loop that watches all the others
        try:
            await self._check(watch)
        except Exception:  # noqa: BLE001
            log.exception("unexpected error while watching a container group", flow_run_id=watch.flow_run_id)

    async def _check(self, watch: _Watch) -> None:
        failure = self._provisioning_failure(watch)
        if failure is not None:
            self._decide(
                watch, Outcome(Reason.START_FAILED, detail=f"container group provisioning failed: {failure}")
            )
            return
        ref = watch.ref
        try:
            group = await self._call(
                lambda: watch.client.container_groups.get(ref.resource_group, ref.name),
                f"reading container group {ref.name!r}",
                retry=False,  # the next tick is the retry
            )
        except InfrastructureNotFound:
            if not watch.closing:
                lost = Outcome(
                    Reason.LOST, detail=f"container group {ref.name!r} was deleted before the run finished"
                )
                self._decide(watch, lost, cleanup=False)
            return
        except BackendError as exc:
            if str(exc) != watch.last_error:  # once per distinct problem, not every tick
                log.warning(
                    "cannot read the container group; trying again",
                    flow_run_id=watch.flow_run_id,
                    error=str(exc),
                )
                watch.last_error = str(exc)
            return
        if watch.closing:  # killed while we were reading
            return
        seen = observe(group)
        watch.started = watch.started or seen.started
        watch.waiting = seen.waiting or watch.waiting
        if seen.outcome is not None:
            self._decide(watch, seen.outcome)
        elif not watch.started and watch.deadline is not None and time.monotonic() > watch.deadline:
            self._decide(watch, start_failure(watch.start_timeout, watch.waiting))

    def _provisioning_failure(self, watch: _Watch) -> str | None:
        """Azure's message if the create operation ended Failed; None otherwise."""
        poller = watch.poller
        if poller is None or not poller.done():
            return None
        watch.poller = None
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

    def _decide(self, watch: _Watch, outcome: Outcome, *, cleanup: bool = True) -> None:
        watch.closing = True
        task = asyncio.get_running_loop().create_task(self._finish(watch, outcome, cleanup=cleanup))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, watch: _Watch, outcome: Outcome, *, cleanup: bool) -> None:
        try:
            if cleanup:
                await self._clean_up(watch, started=outcome.reason is not Reason.START_FAILED)
        finally:
            watch.end(outcome)

    async def _clean_up(self, watch: _Watch, *, started: bool) -> None:
        try:
            if not watch.keep:
                await self._delete(watch.client, watch.ref)
            elif not started:
                await self._stop(watch.client, watch.ref)
        except BackendError as exc:
            log.error(
                "could not clean up the container group; delete it by hand",
                flow_run_id=watch.flow_run_id,
                infrastructure_pid=watch.ref.pid,
                error=str(exc),
            )

    # -- deleting, stopping ----------------------------------------------------------------------

    async def _delete(self, client: Any, ref: GroupRef) -> None:
        def delete() -> None:
            poller = client.container_groups.begin_delete(
                ref.resource_group, ref.name, polling_interval=self._interval
            )
            poller.result(timeout=_DELETE_WAIT)
            if not poller.done():
                log.warning("Azure is still deleting the container group", infrastructure_pid=ref.pid)

        with contextlib.suppress(InfrastructureNotFound):  # already gone is the goal
            await self._call(delete, f"deleting container group {ref.name!r}")

    async def _stop(self, client: Any, ref: GroupRef) -> None:
        with contextlib.suppress(InfrastructureNotFound):
            await self._call(
                lambda: client.container_groups.stop(ref.resource_group, ref.name),
                f"stopping container group {ref.name!r}",
            )

    # -- wait, inspect, kill -----------------------------------------------------------------------

    def _adopt(self, handle: Handle) -> _Watch:
        """A group launched elsewhere (another agent, before a restart): the run's own
        credentials when the handle carries its config, else the default credential; no start
        deadline; deleted when it ends."""
        ref = GroupRef.parse(handle.pid)
        credentials = getattr(handle.config, "aci_credentials", None)
        client = self._azure.client(ref.subscription_id, None, credentials)
        return _Watch(ref, client, handle.flow_run_id, started=True)

    async def wait(self, handle: Handle) -> Outcome:
        watch = self._watches.get(handle.pid)
        if watch is None:
            watch = self._watches[handle.pid] = self._adopt(handle)
        self._ensure_loop()
        try:
            await watch.done.wait()
        finally:
            # done, or our waiter went away (agent stopping): the group is not ours to end
            if self._watches.get(handle.pid) is watch and (watch.done.is_set() or not watch.closing):
                del self._watches[handle.pid]
        assert watch.outcome is not None
        return watch.outcome

    async def inspect(self, handle: Handle) -> Outcome | None:
        watch = self._watches.get(handle.pid)
        if watch is not None and watch.outcome is not None:
            return watch.outcome
        ref = GroupRef.parse(handle.pid)
        client = watch.client if watch else self._azure.client(ref.subscription_id, None)
        try:
            group = await self._call(
                lambda: client.container_groups.get(ref.resource_group, ref.name), "reading"
            )
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"container group {ref.name!r} does not exist")
        return observe(group).outcome

    async def kill(self, handle: Handle, grace: float) -> None:
        watch = self._watches.get(handle.pid)
        if watch is not None and watch.closing:
            await watch.done.wait()  # already ending; its cleanup is under way
            return
        ref = GroupRef.parse(handle.pid)
        client = watch.client if watch else self._azure.client(ref.subscription_id, None)
        if watch is not None:
            watch.closing = True
        try:
            if watch is not None and watch.keep:
                await self._stop(client, ref)
            else:
                await self._delete(client, ref)
        except BackendError:
            if watch is not None:
                watch.closing = False  # still running: keep watching it
            raise
        if watch is not None:
            action = "stopped" if watch.keep else "deleted"
            watch.end(Outcome(Reason.KILLED, detail=f"flow-agent {action} the container group"))

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        return Handle(self.kind, GroupRef.parse(pid).pid, flow_run_id)

    async def aclose(self) -> None:
        # Cleanups finish first (a deleted group must not be left half way); remote runs
        # themselves keep running.
        if self._tasks:
            with anyio.move_on_after(_DELETE_WAIT):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
        await anyio.to_thread.run_sync(self._azure.close)
