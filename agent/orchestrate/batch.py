"""Batch operations on flow runs: select by filter, then delete or cancel 50 at a time.

How a batch runs:

1. **Select.** `POST /flow_runs/filter` pages (200 a page) with the criteria: state types or
   names, deployments (resolved to ids), flow names, tags (all of them), work pools, and the
   expected start time older/newer than a duration. The caller shows what matched (and
   stops there for a dry run).
2. **Act, 50 at a time.** `POST /flow_runs/bulk_delete` or `bulk_set_state` with a filter
   of the selected ids *and* the criteria again (the "guard"), so a run that changed in
   between (it started, it ended) is left alone instead of being deleted or cancelled
   on stale information. One transaction per 50 runs: no parallel-write contention, so a
   SQLite server does not answer with bursts of 503s, and the 503s it does give are retried
   by the client's retry policy (the request is idempotent: the guard re-selects).
3. **Fallback.** A server without the bulk routes (404/405) gets the same guard as a filter
   read, then one `DELETE /flow_runs/{id}` or `set_state` per run, one after the other.

Cancel proposes CANCELLING with `force=True` (what the Prefect UI does): agents see it, kill
the infrastructure and report CANCELLED. The server itself turns a SCHEDULED run without
infrastructure straight into CANCELLED. Only SCHEDULED, PENDING, RUNNING and PAUSED runs
are cancelled; finished runs never are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.api.client import PrefectClient
from agent.api.deployments import find_deployment, read_deployments
from agent.api.errors import ApiError
from agent.api.flow_runs import (
    bulk_delete_flow_runs,
    bulk_set_flow_run_state,
    count_flow_runs,
    delete_flow_run,
    filter_flow_runs,
)
from agent.api.flows import read_flows
from agent.api.models import BULK_LIMIT, FILTER_PAGE, RunInfo, RunStateResult, SetStateStatus, StateType

__all__ = [
    "CANCELLABLE",
    "BatchResult",
    "RunFilter",
    "Selection",
    "cancel_flow_runs",
    "chunked",
    "delete_flow_runs",
    "describe_runs",
    "select_flow_runs",
    "split_states",
]

CANCELLABLE: tuple[StateType, ...] = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
)
_CANCELLED = (StateType.CANCELLING, StateType.CANCELLED)

Progress = Callable[[int], None]


def split_states(states: Iterable[str]) -> tuple[list[str], list[str]]:
    """`["failed", "Late", "crashed"]` -> (types ["FAILED", "CRASHED"], names ["Late"]).

    A word that is a state type (any case) filters on the type; anything else on the state
    name (`Late`, `AwaitingRetry`, `Retrying`...), first letter capitalised if given in lower case.
    """
    types: list[str] = []
    names: list[str] = []
    for raw in states:
        for part in str(raw).split(","):
            word = part.strip()
            if not word:
                continue
            if word.upper() in StateType.__members__:
                types.append(word.upper())
            else:
                names.append(word[0].upper() + word[1:] if word.islower() else word)
    return list(dict.fromkeys(types)), list(dict.fromkeys(names))


@dataclass(frozen=True)
class RunFilter:
    """What to select. Every given criterion must hold; values within one criterion are
    alternatives, except tags (a run must have all of them)."""

    states: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()  # ids or "flow-name/deployment-name"
    flows: tuple[str, ...] = ()  # flow names
    tags: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()  # work pool names
    older_than: timedelta | None = None  # expected start time before now - older_than
    newer_than: timedelta | None = None  # expected start time after now - newer_than

    @property
    def is_empty(self) -> bool:
        return not (
            self.states
            or self.deployments
            or self.flows
            or self.tags
            or self.pools
            or self.older_than is not None
            or self.newer_than is not None
        )

    def state_criteria(self, only: Sequence[StateType] | None = None) -> dict[str, Any] | None:
        """The `state` part of a FlowRunFilter; `only` restricts the state types (cancel)."""
        types, names = split_states(self.states)
        if only is not None:
            allowed = [t.value for t in only]
            if types:
                types = [t for t in types if t in allowed] or ["__none__"]  # matches nothing
            elif names:
                return {"operator": "and_", "type": {"any_": allowed}, "name": {"any_": names}}
            else:
                return {"type": {"any_": allowed}}
        if types and names:
            # a type OR a name; with `only`, the select step drops runs of other types
            return {"operator": "or_", "type": {"any_": types}, "name": {"any_": names}}
        if types:
            return {"type": {"any_": types}}
        if names:
            return {"name": {"any_": names}}
        return None

    def flow_run_criteria(
        self,
        *,
        deployment_ids: Sequence[str] = (),
        now: datetime | None = None,
        only: Sequence[StateType] | None = None,
    ) -> dict[str, Any]:
        """The FlowRunFilter (what the bulk endpoints accept): everything but flows and pools."""
        current = (now or datetime.now(UTC)).astimezone(UTC)
        criteria: dict[str, Any] = {}
        state = self.state_criteria(only)
        if state is not None:
            criteria["state"] = state
        if self.deployments:
            criteria["deployment_id"] = {"any_": list(deployment_ids)}
        if self.tags:
            criteria["tags"] = {"all_": list(self.tags)}
        window: dict[str, str] = {}
        if self.older_than is not None:
            window["before_"] = (current - self.older_than).isoformat()
        if self.newer_than is not None:
            window["after_"] = (current - self.newer_than).isoformat()
        if window:
            criteria["expected_start_time"] = window
        return criteria

    def body(
        self,
        *,
        deployment_ids: Sequence[str] = (),
        now: datetime | None = None,
        only: Sequence[StateType] | None = None,
    ) -> dict[str, Any]:
        """The body of `POST /flow_runs/filter` and `/flow_runs/count`."""
        body: dict[str, Any] = {
            "flow_runs": self.flow_run_criteria(deployment_ids=deployment_ids, now=now, only=only)
        }
        if self.flows:
            body["flows"] = {"name": {"any_": list(self.flows)}}
        if self.pools:
            body["work_pools"] = {"name": {"any_": list(self.pools)}}
        return body


def chunked(items: Sequence[str], size: int = BULK_LIMIT) -> list[list[str]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


@dataclass
class Selection:
    runs: list[RunInfo]
    total: int  # how many match in all (more than len(runs) when a limit cut the list)
    filter: RunFilter
    deployment_ids: list[str]
    now: datetime

    @property
    def ids(self) -> list[str]:
        return [run.id for run in self.runs]

    def guard(self, only: Sequence[StateType] | None = None) -> dict[str, Any]:
        """The FlowRunFilter each bulk call re-checks besides the ids: a run that no longer
        matches (it started, it ended) is left alone."""
        return self.filter.flow_run_criteria(deployment_ids=self.deployment_ids, now=self.now, only=only)


@dataclass
class BatchResult:
    done: list[str] = field(default_factory=list)
    skipped: int = 0  # selected, but no longer matched (changed meanwhile, or gone)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    used_bulk: bool = True
    error: str | None = None  # the batch stopped early: the server stopped answering


async def select_flow_runs(
    client: PrefectClient,
    flt: RunFilter,
    *,
    limit: int | None = None,
    only: Sequence[StateType] | None = None,
    now: datetime | None = None,
) -> Selection:
    """The runs matching `flt` (newest expected start first), at most `limit`."""
    deployment_ids = [(await find_deployment(client, ref)).id for ref in flt.deployments]
    current = now or datetime.now(UTC)
    body = flt.body(deployment_ids=deployment_ids, now=current, only=only)
    total = await count_flow_runs(client, body)
    wanted = total if limit is None else min(limit, total)
    runs: dict[str, RunInfo] = {}
    offset = 0
    while len(runs) < wanted:
        page = await filter_flow_runs(
            client,
            body,
            limit=min(FILTER_PAGE, wanted - len(runs)),
            offset=offset,
            sort="EXPECTED_START_TIME_DESC",
        )
        if not page:
            break
        for run in page:
            runs.setdefault(run.id, run)
        offset += len(page)
    selected = list(runs.values())[:wanted]
    if only is not None:
        allowed = set(only)
        selected = [run for run in selected if run.current_type in allowed]
    return Selection(selected, max(total, len(selected)), flt, deployment_ids, current)


async def describe_runs(client: PrefectClient, runs: Sequence[RunInfo]) -> dict[str, tuple[str, str]]:
    """{run id: (flow name, deployment name)} for a table, in two requests."""
    flows = {f.id: f.name for f in await read_flows(client, ids={r.flow_id for r in runs if r.flow_id})}
    deployment_ids = {r.deployment_id for r in runs if r.deployment_id}
    deployments = {d.id: d.name for d in await read_deployments(client, deployment_ids)}
    return {
        run.id: (flows.get(run.flow_id or "", ""), deployments.get(run.deployment_id or "", ""))
        for run in runs
    }


def _with_ids(guard: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    return {**guard, "id": {"any_": ids}}


async def delete_flow_runs(
    client: PrefectClient, selection: Selection, *, on_progress: Progress | None = None
) -> BatchResult:
    """Delete the selected runs that still match the guard, 50 per request."""
    result = BatchResult()
    guard = selection.guard()
    for chunk in chunked(selection.ids):
        criteria = _with_ids(guard, chunk)
        try:
            deleted = await bulk_delete_flow_runs(client, criteria) if result.used_bulk else None
            if deleted is None:
                result.used_bulk = False
                deleted = await _delete_one_by_one(client, criteria, result)
        except ApiError as exc:
            result.error = str(exc)
            return result
        result.done.extend(deleted)
        result.skipped += len(chunk) - len(deleted) - sum(1 for i, _ in result.failed if i in chunk)
        if on_progress is not None:
            on_progress(len(chunk))
    return result


async def _delete_one_by_one(
    client: PrefectClient, criteria: dict[str, Any], result: BatchResult
) -> list[str]:
    still = await filter_flow_runs(client, {"flow_runs": criteria}, limit=BULK_LIMIT)
    deleted = []
    for run in still:
        if await delete_flow_run(client, run.id):
            deleted.append(run.id)
    return deleted


async def cancel_flow_runs(
    client: PrefectClient,
    selection: Selection,
    *,
    message: str = "Cancelled by `flow-agent flow-runs cancel`",
    on_progress: Progress | None = None,
) -> BatchResult:
    """Propose CANCELLING (forced) to the selected runs that are still cancellable.

    A SCHEDULED run without infrastructure comes back CANCELLED at once (the server's rule);
    a running one is CANCELLING until its agent has killed the infrastructure.
    """
    result = BatchResult()
    guard = selection.guard(CANCELLABLE)
    # never a finished run, even from a selection made without `only=CANCELLABLE`
    ids = [run.id for run in selection.runs if run.current_type in CANCELLABLE]
    result.skipped += len(selection.runs) - len(ids)
    for chunk in chunked(ids):
        criteria = _with_ids(guard, chunk)
        try:
            outcomes = (
                await bulk_set_flow_run_state(
                    client, criteria, StateType.CANCELLING, message=message, force=True
                )
                if result.used_bulk
                else None
            )
            if outcomes is None:
                result.used_bulk = False
                outcomes = await _cancel_one_by_one(client, criteria, message)
        except ApiError as exc:
            result.error = str(exc)
            return result
        for outcome in outcomes:
            state = outcome.state.type if outcome.state else None
            if outcome.status is SetStateStatus.ACCEPT or state in _CANCELLED:
                result.done.append(outcome.flow_run_id)
            else:
                where = state.value if state else None
                reason = outcome.reason or f"{outcome.status.value} into {where}"
                result.failed.append((outcome.flow_run_id, reason))
        result.skipped += len(chunk) - len(outcomes)
        if on_progress is not None:
            on_progress(len(chunk))
    return result


async def _cancel_one_by_one(
    client: PrefectClient, criteria: dict[str, Any], message: str
) -> list[RunStateResult]:
    still = await filter_flow_runs(client, {"flow_runs": criteria}, limit=BULK_LIMIT)
    outcomes = []
    for run in still:
        answer = await client.set_state(run.id, StateType.CANCELLING, message=message, force=True)
        outcomes.append(
            RunStateResult(
                flow_run_id=run.id, status=answer.status, state=answer.state, details=answer.details
            )
        )
    return outcomes
