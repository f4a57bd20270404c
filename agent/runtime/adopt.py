"""At start: find the runs of our pools whose remote infrastructure is still out there.

Workloads in a cloud outlive the agent (stage two of shutdown leaves them running), so a
restarted or replaced agent looks for runs of its pools that are PENDING or RUNNING with
an `infrastructure_pid` its remote backends can parse, and watches them to the end like
its own: exit codes, OOM and cancellation keep being reported across restarts. Local
processes are not adopted: a `host:pid` can be reused and two agents may share a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from anyio.abc import TaskGroup

from agent.api import FlowRun, PrefectClient, TransientError
from agent.backends.base import Backend, BackendError
from agent.infra.kinds import Kinds
from agent.observe.logging import get_logger
from agent.runtime.jobs import JobBuilder
from agent.runtime.pools import Pools
from agent.runtime.runner import Runner
from agent.runtime.slots import Slots

__all__ = ["adopt_remote_runs"]


async def _runtime_of(jobs: JobBuilder, run: FlowRun, pools: Pools) -> Any:
    """The run's runtime options (its credentials), or None if they cannot be rebuilt any more."""
    try:
        deployment = await jobs.api.read_deployment(run.deployment_id) if run.deployment_id else None
        kind, config, _source = await jobs.configure(run, pools.get(run.work_pool_name or ""), deployment)
    except Exception as exc:  # noqa: BLE001 - adoption goes on with default credentials
        log.info("adopting with default credentials", flow_run_id=run.id, reason=str(exc))
        return None
    return kind.runtime(config)

log = get_logger("agent.runtime.adopt")
_PAGE = 200


async def _unfinished_runs(api: PrefectClient, pools: list[str]) -> list[FlowRun]:
    found: list[FlowRun] = []
    offset = 0
    while True:
        body = {
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
            "work_pools": {"name": {"any_": pools}},
            "limit": _PAGE,
            "offset": offset,
        }
        page = await api.read_flow_runs(body)
        found.extend(page)
        if len(page) < _PAGE:
            return found
        offset += _PAGE


async def adopt_remote_runs(
    api: PrefectClient,
    pools: Pools,
    backends: Mapping[str, Backend],
    runner: Runner,
    slots: Slots,
    runs: TaskGroup,
    jobs: JobBuilder,
) -> int:
    """Start watching every adoptable run; how many were adopted."""
    remote_pool = any(
        Kinds.kind_of_pool_type(pools.get(name).type) not in (None, "process") for name in pools.names
    )
    if not remote_pool:  # only pools of remote kinds can have runs to adopt
        return 0
    try:
        candidates = await _unfinished_runs(api, pools.names)
    except TransientError as exc:
        log.warning("could not look for runs to adopt; skipping", error=str(exc))
        return 0
    adopted = 0
    for run in candidates:
        if not run.infrastructure_pid or runner.watching(run.id) or not run.work_pool_name:
            continue
        kind = Kinds.kind_of_pool_type(pools.get(run.work_pool_name).type)
        backend = backends.get(kind or "")
        if backend is None or not getattr(backend, "remote", False):
            continue
        try:
            handle = backend.parse_pid(run.infrastructure_pid, run.id)
        except BackendError as exc:  # another cluster, an old format: not ours to watch
            log.info("not adopting run", flow_run_id=run.id, reason=str(exc))
            continue
        handle = replace(handle, runtime=await _runtime_of(jobs, run, pools))
        slots.take()
        runs.start_soon(runner.adopt, run, backend, handle, slots.release)
        adopted += 1
    if adopted:
        log.info("adopted runs launched before this agent started", count=adopted)
    return adopted
