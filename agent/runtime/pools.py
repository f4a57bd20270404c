"""The work pools this agent serves: made to exist, and their latest copy kept.

The copy is refreshed on every heartbeat, so a base job template edited in the UI is
used from the next heartbeat on without a restart.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from agent.api import AuthError, Conflict, PrefectClient, WorkPool
from agent.api.errors import ApiError
from agent.infra import InfraError, default_base_job_template, known_pool_types
from agent.observe.logging import get_logger

__all__ = ["PoolError", "Pools"]

log = get_logger("agent.runtime.pools")


class PoolError(Exception):
    """A pool this agent cannot serve; stops the agent at start with this message."""


class Pools:
    def __init__(
        self,
        api: PrefectClient,
        names: Sequence[str],
        *,
        create_missing: bool,
        supported_types: Collection[str],
        create_type: str = "process",
    ) -> None:
        if not names:
            raise PoolError("no work pool given: pass --pool NAME (or set FLOW_AGENT_POOLS)")
        self.names = list(dict.fromkeys(names))
        self._api = api
        self._create = create_missing
        self._supported = set(supported_types)
        self._create_type = create_type
        self._pools: dict[str, WorkPool] = {}

    def get(self, name: str) -> WorkPool:
        return self._pools[name]

    def by_id(self, pool_id: str) -> WorkPool | None:
        return next((p for p in self._pools.values() if p.id == pool_id), None)

    async def ensure_all(self) -> None:
        for name in self.names:
            await self.ensure(name)

    async def ensure(self, name: str) -> WorkPool:
        pool = await self._api.read_work_pool(name)
        if pool is None:
            pool = await self._create_pool(name)
        if not pool.base_job_template and pool.type in known_pool_types():
            # Prefect's own worker fills an empty template the same way
            template = default_base_job_template(pool.type)
            await self._api.update_work_pool(name, base_job_template=template)
            pool = pool.model_copy(update={"base_job_template": template})
        self._check_type(pool)
        self._pools[name] = pool
        return pool

    async def refresh(self, name: str) -> WorkPool:
        pool = await self._api.read_work_pool(name)
        if pool is None:
            log.warning("work pool disappeared from the server; recreating it", pool=name)
            return await self.ensure(name)
        if pool.base_job_template:
            self._pools[name] = pool
        return self._pools.get(name, pool)

    async def _create_pool(self, name: str) -> WorkPool:
        if not self._create:
            raise PoolError(
                f"work pool {name!r} does not exist; create it in the Prefect UI or with "
                f"`prefect work-pool create {name} --type process`, or drop --no-create-pools"
            )
        try:
            template = default_base_job_template(self._create_type)
        except InfraError as exc:
            raise PoolError(str(exc)) from exc
        try:
            pool = await self._api.create_work_pool(name, self._create_type, template)
        except Conflict:  # another agent created it a moment ago
            found = await self._api.read_work_pool(name)
            if found is None:
                raise
            return found
        except AuthError as exc:
            raise PoolError(f"cannot create work pool {name!r}: {exc.detail or exc}") from exc
        except ApiError as exc:
            raise PoolError(f"cannot create work pool {name!r}: {exc}") from exc
        log.info("created work pool", pool=name, type=self._create_type)
        return pool

    def _check_type(self, pool: WorkPool) -> None:
        if pool.type not in self._supported:
            raise PoolError(
                f"work pool {pool.name!r} has type {pool.type!r}, which this agent cannot launch; "
                f"supported types: {', '.join(sorted(self._supported))}. Serve it with an agent "
                "built with the matching extra, or point --pool at a pool of a supported type"
            )
