"""The composition root: build the parts, run the loops, stop in stages.

Stage one (first SIGTERM/SIGINT): stop claiming, let launches in progress finish and be
reported, let running runs go on for `shutdown_grace`. Stage two (second signal or the
grace expiring): kill the local processes still running and report them; remote workloads
keep running and the next agent adopts them. A third signal exits at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import anyio
from anyio.abc import TaskGroup

from agent import __version__
from agent.aio import first_completed
from agent.api import AuthError, PrefectClient
from agent.backends import BackendOptions, Backends, load_backends
from agent.backends.base import Backend
from agent.observe.health import HealthState, serve_health
from agent.observe.logging import REDACTOR, get_logger, set_log_sink
from agent.observe.metrics import Metrics
from agent.observe.sdnotify import SystemdNotifier
from agent.observe.shipper import LogShipper
from agent.registry import REGISTRY
from agent.retry import Interrupted, retry_scope
from agent.runtime.audit import StartAudit
from agent.runtime.deployments import DeploymentCache
from agent.runtime.events import EventStream
from agent.runtime.hooks import FlowHooks
from agent.runtime.jobs import JobBuilder
from agent.runtime.labels import OwnerLabels
from agent.runtime.ownership import Owner
from agent.runtime.poller import Poller
from agent.runtime.pools import PoolError, Pools
from agent.runtime.reconcile import Reconciler
from agent.runtime.runner import Runner
from agent.runtime.slots import Slots
from agent.runtime.watchdog import Watchdog
from agent.settings import Settings

__all__ = ["Agent", "serve"]

log = get_logger("agent.runtime.app")


_LAST_FLUSH_BUDGET = 2.0  # seconds of retrying for the log lines still buffered at exit

# Legacy Prefect 2 work queues live in pools of this type; their runs name an
# infrastructure block, which picks the backend.
LEGACY_POOL_TYPE = "prefect-agent"


def servable_pool_types(backends: Mapping[str, Backend]) -> set[str]:
    types = {t for entry in REGISTRY if entry.kind in backends for t in entry.pool_types}
    return types | {LEGACY_POOL_TYPE}


def backend_options(settings: Settings) -> BackendOptions:
    """What every backend gets from the agent's settings (the user's retry policy included)."""
    return BackendOptions(
        retry=settings.retry_policy,
        state_dir=settings.state_dir,
        watch_interval=settings.watch_interval,
        gcp_endpoint=settings.gcp_endpoint,
        azure_arm_endpoint=settings.azure_arm_endpoint,
        kubeconfig=settings.kubeconfig,
        warm_start=settings.warm_start,
    )


class Agent:
    """All the parts of one running agent, wired from one Settings object."""

    def __init__(
        self,
        settings: Settings,
        api: PrefectClient,
        *,
        environ: Mapping[str, str],
        metrics: Metrics,
        notifier: SystemdNotifier,
    ) -> None:
        assert settings.api_url is not None
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.notifier = notifier
        self.backends: Backends = load_backends(backend_options(settings))
        self.pools = Pools(
            api,
            settings.pools,
            create_missing=settings.create_pools,
            supported_types=servable_pool_types(self.backends),
        )
        self.slots = Slots(settings.limit)
        self.jobs = JobBuilder.from_settings(api, settings, environ=environ, on_secret=REDACTOR.add)
        self.audit = StartAudit(
            api, interval=settings.cancel_check_interval, busy=lambda: self.poller.draining
        )
        self.owner = Owner.me(settings.name)
        self.labels = OwnerLabels(api, self.owner)
        self.stop = anyio.Event()
        self.force = anyio.Event()
        self._build_loops()
        self._build_observers()
        metrics.set_free_slots(self.slots.free)

    def _build_loops(self) -> None:
        settings, api = self.settings, self.api
        self.runner = Runner(
            api,
            self.backends,
            self.jobs,
            DeploymentCache(api),
            self.audit,
            kill_grace=settings.kill_grace,
            metrics=self.metrics,
            redact=REDACTOR.mask,
            labels=self.labels,
            hooks=FlowHooks(settings.python),
        )
        self.poller = Poller(
            api,
            self.pools,
            self.slots,
            self.runner,
            queues=settings.queues,
            interval=settings.poll_interval,
            prefetch=settings.prefetch_seconds,
            claim_concurrency=settings.claim_concurrency,
            metrics=self.metrics,
            worker_name=settings.name,
            claim_message=self.owner.claim_message(),
        )
        self.reconciler = Reconciler(
            api,
            self.pools,
            self.backends,
            self.jobs,
            self.runner,
            self.slots,
            self.owner,
            interval=settings.reconcile_interval,
            launch_grace=settings.request_timeout,
        )
        self.watchdog = Watchdog(
            api,
            self.pools,
            self.runner,
            worker_name=settings.name,
            heartbeat_interval=settings.heartbeat_interval,
            cancel_interval=settings.cancel_check_interval,
        )

    def _build_observers(self) -> None:
        settings = self.settings
        assert settings.api_url is not None
        self.events = EventStream(
            settings.api_url,
            token=settings.auth_token(),
            pool_ids=lambda: [self.pools.get(name).id for name in self.pools.names],
            on_scheduled=self.poller.wake,
            on_cancelling=self.watchdog.wake,
        )
        self.health = HealthState(
            poll_interval=settings.poll_interval,
            last_poll=lambda: self.poller.last_poll,
            reached=lambda: self.poller.last_poll is not None or self.watchdog.last_heartbeat is not None,
            metrics=self.metrics,
            # a full agent does not poll and a draining one stops: neither is a hung loop
            paused=self._paused,
            status=self.status,
        )

    def status(self) -> dict[str, object]:
        """What /status answers: what this agent is doing, for `flow-agent why` and `status`."""
        return {
            "name": self.settings.name,
            "version": __version__,
            "instance": self.owner.instance,
            "pools": list(self.pools.names),
            "queues": list(self.settings.queues),
            "limit": self.slots.limit,
            "free_slots": self.slots.free,
            "in_flight": self.runner.in_flight_ids,
            "limit_full": self.poller.limit_full,
            "draining": self.stop.is_set(),
            "left_alone": dict(self.reconciler.left_alone),
        }

    def _paused(self) -> str | None:
        if self.stop.is_set():
            return "draining"
        return "no free slot" if self.slots.free == 0 else None

    async def _ensure_pools(self) -> bool:
        """Wait for the server as long as it takes (an outage at start is not fatal), trying
        at least once per poll interval; False if told to stop first."""
        try:
            with retry_scope(stop=self.stop, persistent=True, maximum=self.settings.poll_interval):
                await self.pools.ensure_all()
        except Interrupted:
            return False
        return not self.stop.is_set()

    async def run(self) -> None:
        if not await self._ensure_pools():
            return
        # No heartbeat first: heartbeats run in their own loop, and a failing one must not
        # hold back the polls.
        self.notifier.ready(f"serving {', '.join(self.pools.names)}")
        log.info(
            "flow-agent started",
            name=self.settings.name,
            pools=self.pools.names,
            queues=self.settings.queues or "all",
            limit=self.settings.limit,
            api_url=self.settings.api_url,
        )
        async with anyio.create_task_group() as services:
            services.start_soon(self.watchdog.heartbeat_loop)
            services.start_soon(self.audit.run)
            services.start_soon(self.labels.run)
            services.start_soon(self.notifier.watchdog_loop)
            if self.settings.events:
                services.start_soon(self.events.run)
            async with anyio.create_task_group() as runs:
                services.start_soon(self.watchdog.cancel_loop, runs)
                services.start_soon(self._reconcile, runs)
                await self.poller.run(self.stop, runs)
                if await self._drain():
                    runs.cancel_scope.cancel()  # stop watching what was left running
            await self.audit.flush()
            await self.labels.flush()
            services.cancel_scope.cancel()

    async def _reconcile(self, runs: TaskGroup) -> None:
        """Take over what dead agents left, until this one stops claiming."""
        await first_completed(lambda: self.reconciler.run(runs), self.stop.wait)

    async def _drain(self) -> int:
        """Stop in stages; the number of remote runs left running."""
        self.notifier.stopping("draining")
        in_flight = len(self.runner.in_flight_ids)
        log.info("stopping: no new claims", in_flight=in_flight, grace=self.settings.shutdown_grace)
        await self.runner.wait_launches()
        with anyio.move_on_after(self.settings.shutdown_grace):
            await first_completed(self.runner.wait_idle, self.force.wait)
        if not self.runner.in_flight_ids:
            return 0
        log.warning("stopping runs still in flight", count=len(self.runner.in_flight_ids))
        return await self.runner.kill_all()


async def _signals(agent: Agent, tg: TaskGroup) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        count = 0
        async for signum in received:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                log.info(f"{name} received: draining; send it again to kill running flow runs")
                agent.stop.set()
            elif count == 2:
                log.warning(f"{name} received again: killing running flow runs")
                agent.force.set()
            else:
                log.error(f"{name} received a third time: exiting now")
                os._exit(1)


async def serve(
    settings: Settings, *, environ: Mapping[str, str], notifier: SystemdNotifier | None = None
) -> int:
    """Run one agent until it is stopped; the process exit status."""
    assert settings.api_url is not None
    metrics = Metrics()
    api = PrefectClient.from_settings(settings, on_error=metrics.api_error)
    shipper = LogShipper(api, interval=settings.log_flush_interval)
    set_log_sink(shipper)
    agent = Agent(settings, api, environ=environ, metrics=metrics, notifier=notifier or SystemdNotifier(None))
    status = 0
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, agent, tg)
            tg.start_soon(shipper.run)
            if settings.health_port is not None:
                await tg.start(serve_health, agent.health, settings.health_host, settings.health_port)
            try:
                await agent.run()
            finally:
                tg.cancel_scope.cancel()
    except* AuthError as group:
        log.error(str(group.exceptions[0]))
        status = 2
    except* PoolError as group:
        log.error(str(group.exceptions[0]))
        status = 2
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            # the last lines get a few retries, but a server that is down must not hold the exit
            with retry_scope(budget=_LAST_FLUSH_BUDGET):
                await shipper.flush()
            for backend in agent.backends.built():
                await backend.aclose()
            await api.aclose()
    log.info("flow-agent stopped", status=status)
    return status
