"""Azure Container Instances: one container group per flow run, watched to its end.

`launch` sends the kind's ARM body as is (`container_groups.begin_create_or_update`) and
returns once Azure accepted it; the SDK's poller follows the create operation
(Azure-AsyncOperation) and its failure is reported with Azure's message. The one watch
engine reads every watched group's instance view each `watch_interval` until its container
is Terminated, its provisioning failed, or it missed its start deadline
(`task_start_timeout_seconds`); what is ACI's own about that is in `watch.py`.

Cleanup: the group is deleted once the run is over, whatever the ending (success, failure,
OOM, failed provisioning, start timeout, kill), unless `keep_container_group`; a kept
group that never started is stopped instead. ACI has no grace period to configure: a kill
deletes (or, kept, stops) the group.

Output: with `stream_output` (or a job's own sink: a direct run) the container's log is
read each round and its new lines emitted once, in order, masked, then drained before the
group is deleted (`output.py`); an adopted run ships to its flow run's logs the same way.

`find` looks a run's group up by its name, which the kind derives from the flow run id
(`<flow name slug>-<flow run id>`), in the payload's resource group, and checks the group's
run id tag or its container's `PREFECT__FLOW_RUN_ID`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import anyio.to_thread

from agent.backends.aci.azure import AzureClients, GroupRef, to_backend_error
from agent.backends.aci.output import Output
from agent.backends.aci.status import observe, run_ids
from agent.backends.aci.watch import DELETE_WAIT, AciPlatform, Group
from agent.backends.base import (
    BackendError,
    BackendOptions,
    Handle,
    InfrastructureNotFound,
    Job,
    LaunchError,
    output_sink,
)
from agent.backends.engine import Watched, WatchEngine
from agent.backends.sdk import SdkCalls
from agent.infra.aci import AciRuntime
from agent.outcome import Outcome, Reason

__all__ = ["AciBackend"]


class AciBackend:
    kind: ClassVar[str] = "aci"
    remote: ClassVar[bool] = True
    runtime_type: ClassVar[type] = AciRuntime

    def __init__(
        self,
        options: BackendOptions,
        *,
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """`credential` (any `TokenCredential`) replaces the per-run credentials: for tests;
        `client_kwargs` go to every management client (e.g. `connection_verify`)."""
        self._interval = options.watch_interval
        self._azure = AzureClients(
            options.azure_arm_endpoint, credential=credential, client_kwargs=client_kwargs
        )
        self._sdk = SdkCalls(options.retry, to_backend_error)
        self._platform = AciPlatform(self._sdk, interval=options.watch_interval)
        self._engine: WatchEngine[Group] = WatchEngine(
            "aci",
            self._platform,
            interval=options.watch_interval,
            retry=options.retry,
            close_timeout=DELETE_WAIT,
        )

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, job: Job[AciRuntime]) -> Handle[AciRuntime]:
        ref, body = _request(job.payload)
        runtime = job.runtime
        client = self._azure.client(ref.subscription_id, job.payload.get("api_version"), runtime.credentials)
        try:
            if not body.get("location"):
                body["location"] = await self._sdk(
                    lambda: self._azure.location_of(client, ref), "reading the resource group"
                )
            data = json.dumps(body).encode()  # the kind's body byte for byte, not re-serialised
            poller = await self._sdk(
                lambda: client.container_groups.begin_create_or_update(
                    ref.resource_group, ref.name, data, polling_interval=self._interval
                ),
                f"creating container group {ref.name!r} in resource group {ref.resource_group!r}",
            )
        except InfrastructureNotFound as exc:  # a missing resource group or subscription
            raise LaunchError(str(exc)) from None
        handle = Handle(self.kind, ref.pid, job.flow_run_id, runtime=runtime)
        state = Group(
            ref,
            client,
            keep=runtime.keep_container_group,
            start_timeout=runtime.start_timeout_seconds,
            poller=poller,
            output=_output(job, runtime, _container_name(body)),
        )
        self._engine.track(Watched(handle, state, start_within=runtime.start_timeout_seconds))
        return handle

    # -- wait, inspect, kill, find ---------------------------------------------------------------

    async def wait(self, handle: Handle) -> Outcome:
        watched = self._engine.get(handle.pid)
        if watched is None:  # launched elsewhere (another agent, before a restart)
            watched = self._engine.track(self._adopted(handle))
        try:
            return await self._engine.wait(watched)
        finally:
            if not watched.done.is_set():  # our waiter went away (agent stopping): not ours to end
                self._engine.untrack(watched)

    async def inspect(self, handle: Handle) -> Outcome | None:
        watched = self._engine.get(handle.pid)
        if watched is not None and watched.outcome is not None:
            return watched.outcome
        state = watched.state if watched is not None else self._group(handle)
        ref = state.ref
        try:
            group = await self._sdk(
                lambda: state.client.container_groups.get(ref.resource_group, ref.name), "reading"
            )
        except InfrastructureNotFound:
            return Outcome(Reason.LOST, detail=f"container group {ref.name!r} does not exist")
        return observe(group).outcome

    async def kill(self, handle: Handle, grace: float) -> None:
        watched = self._engine.get(handle.pid)
        if watched is not None and watched.ending:
            await self._engine.wait(watched)  # already ending; its cleanup is under way
            return
        state = watched.state if watched is not None else self._group(handle)
        if watched is not None:
            watched.ending = True  # the watch loop leaves it alone while we delete it
            ended = await self._ended_on_its_own(state)
            if ended is not None:  # the container ended just before the kill: that is the truth
                watched.ending = False
                self._engine.end(watched, ended)  # cleaned up like any end
                await self._engine.wait(watched)
                return
        try:
            action = await self._platform.remove(state)
        except BackendError:
            if watched is not None:
                watched.ending = False  # still running: keep watching it
            raise
        if watched is not None:
            self._engine.finish(
                watched, Outcome(Reason.KILLED, detail=f"flow-agent {action} the container group")
            )

    async def _ended_on_its_own(self, state: Group) -> Outcome | None:
        """The container's own end when it is Terminated already; None when it is not (or
        cannot be read now: the kill goes ahead)."""
        ref = state.ref
        try:
            group = await self._sdk.once(
                lambda: state.client.container_groups.get(ref.resource_group, ref.name), "reading"
            )
        except BackendError:
            return None
        seen = observe(group)
        return seen.outcome if seen.started else None

    async def find(self, job: Job[AciRuntime]) -> Handle[AciRuntime] | None:
        """The group is named after the run (the kind derives its name from the flow run id),
        so one GET in the payload's resource group answers; a group of that name that says it
        belongs to another run is not this run's (ARM names are unique: ours cannot exist)."""
        ref, _ = _request(job.payload)
        client = self._azure.client(
            ref.subscription_id, job.payload.get("api_version"), job.runtime.credentials
        )
        try:
            group = await self._sdk(
                lambda: client.container_groups.get(ref.resource_group, ref.name),
                f"looking up container group {ref.name!r}",
            )
        except InfrastructureNotFound:  # no such group (or resource group): launching made none
            return None
        owners = run_ids(group)
        if owners and job.flow_run_id.lower() not in owners:
            return None
        return Handle(self.kind, ref.pid, job.flow_run_id, runtime=job.runtime)

    def parse_pid(self, pid: str, flow_run_id: str = "") -> Handle:
        return Handle(self.kind, GroupRef.parse(pid).pid, flow_run_id)

    async def aclose(self) -> None:
        await self._engine.aclose()  # cleanups finish first; the groups themselves keep running
        await anyio.to_thread.run_sync(self._azure.close)

    # -- helpers -----------------------------------------------------------------------------------

    def _adopted(self, handle: Handle) -> Watched[Group]:
        """A group launched elsewhere. With its run's options it gets the start deadline again,
        counted from now: a container that waits forever (Waiting with a startTime is not
        started) is not watched forever. Without them there is no deadline to honour."""
        group = self._group(handle)
        runtime = handle.runtime if isinstance(handle.runtime, AciRuntime) else None
        if runtime is None or not runtime.start_timeout_seconds:
            return Watched(handle, group, started=True)
        group.start_timeout = runtime.start_timeout_seconds
        return Watched(handle, group, start_within=runtime.start_timeout_seconds)

    def _group(self, handle: Handle) -> Group:
        """A group this backend did not launch: the run's own credentials and cleanup flag when
        the handle carries its runtime options (an adopted run's are rebuilt from its pool and
        deployment), else the agent's default credential; no start deadline."""
        ref = GroupRef.parse(handle.pid)
        runtime = handle.runtime if isinstance(handle.runtime, AciRuntime) else None
        client = self._azure.client(ref.subscription_id, None, runtime.credentials if runtime else None)
        streams = runtime is not None and runtime.stream_output
        output = Output(output_sink(self.kind, handle.flow_run_id)) if streams else None
        return Group(ref, client, keep=runtime.keep_container_group if runtime else False, output=output)


def _output(job: Job[AciRuntime], runtime: AciRuntime, container: str) -> Output | None:
    """Where the container's output goes: the job's sink (a direct run), else the run's logs
    when the run asks for it (`stream_output`); None: not read at all."""
    if job.output is None and not runtime.stream_output:
        return None
    return Output(output_sink("aci", job.flow_run_id, job.output), container)


def _container_name(body: Mapping[str, Any]) -> str:
    try:
        return str(body["properties"]["containers"][0]["name"] or "")
    except (KeyError, IndexError, TypeError):
        return ""  # learnt from the group at the first read


def _request(payload: Mapping[str, Any]) -> tuple[GroupRef, dict[str, Any]]:
    """The group a payload names, and the body to create it with."""
    try:
        ref = GroupRef(payload["subscription_id"], payload["resource_group"], payload["container_group_name"])
        return ref, dict(payload["container_group"])
    except (KeyError, TypeError) as exc:
        raise LaunchError(f"the ACI payload lacks {exc}; check the customizations of the run") from None
