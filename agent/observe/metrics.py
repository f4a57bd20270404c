"""Every Prometheus metric of the agent, defined once, in a registry of its own.

Label values come only from fixed vocabularies (outcomes, HTTP status codes, the kinds
of `agent.registry`) and from the configured pool names, so no secret and no unbounded
value (a run id, an error message) can ever become a label: anything outside a
vocabulary is counted as "other".

| metric | type | labels |
|---|---|---|
| `flow_agent_runs_claimed_total` | counter | `pool` |
| `flow_agent_runs_launched_total` | counter | `backend` |
| `flow_agent_runs_ended_total` | counter | `backend`, `outcome` |
| `flow_agent_launch_latency_seconds` | histogram | `backend` (claim → infrastructure pid reported) |
| `flow_agent_runs_in_flight` | gauge | |
| `flow_agent_free_slots` | gauge | -1 when the agent has no `--limit` (unlimited) |
| `flow_agent_api_errors_total` | counter | `status` (HTTP status code, or "network") |
| `flow_agent_last_poll_timestamp_seconds` | gauge | unix time of the last successful poll; 0 before |
| `flow_agent_scheduled_backlog` | gauge | `pool`: due SCHEDULED runs of its queues, at the last look |
| `flow_agent_oldest_due_run_age_seconds` | gauge | `pool`: how late the oldest due run is; 0 when none |
| `flow_agent_limit_full` | gauge | 1 while due runs wait because the agent's `--limit` is full |
| `flow_agent_limit_full_episodes_total` | counter | times the `--limit` became full with due runs waiting |

The backlog gauges are what an autoscaler (KEDA, HPA) scales agents on: see
deploy/kubernetes/autoscaling/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.registry import REGISTRY

__all__ = ["API_ERROR_NETWORK", "OUTCOMES", "Metrics", "outcome_label"]

# How a claimed run ended, as counted (a run is counted once, when its report is done).
OUTCOMES = frozenset({"completed", "crashed", "oom", "cancelled", "failed_to_launch"})
API_ERROR_NETWORK = "network"  # connection refused or reset, timeouts, DNS: no HTTP status
_OTHER = "other"
_UNLIMITED = -1

# claim → pid reported: ~0.1 s for a process, up to minutes for a cloud task or a pod
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_MAX_POOL_LABEL = 128


def outcome_label(outcome: Any, *, cancelled: bool = False) -> str:
    """The `outcome` label for an `agent.outcome.Outcome` (anything with `succeeded` and
    `oom`): completed (exit 0), oom, crashed; `cancelled=True` when the user cancelled it."""
    if cancelled:
        return "cancelled"
    if outcome.succeeded:
        return "completed"
    return "oom" if outcome.oom else "crashed"


class Metrics:
    """The agent's metrics. `registry` is what /metrics renders (never the global one)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._claimed = Counter(
            "flow_agent_runs_claimed", "Flow runs claimed (PENDING accepted).", ["pool"], registry=r
        )
        self._claims_lost = Counter(
            "flow_agent_claims_lost",
            "Claims lost: another agent claimed the run first (or the poll was stale).",
            ["pool"],
            registry=r,
        )
        self._launched = Counter(
            "flow_agent_runs_launched",
            "Flow runs whose infrastructure was launched.",
            ["backend"],
            registry=r,
        )
        self._ended = Counter(
            "flow_agent_runs_ended",
            "Claimed flow runs that ended, by outcome: completed (exit 0), crashed, oom, "
            "cancelled, failed_to_launch.",
            ["backend", "outcome"],
            registry=r,
        )
        self._latency = Histogram(
            "flow_agent_launch_latency_seconds",
            "From the claim to the infrastructure pid reported to the server.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge("flow_agent_runs_in_flight", "Flow runs claimed and not ended.", registry=r)
        self._free = Gauge(
            "flow_agent_free_slots", "Free run slots; -1 when unlimited (no --limit).", registry=r
        )
        self._api_errors = Counter(
            "flow_agent_api_errors",
            "Failed Prefect API requests (every attempt), by HTTP status or 'network'.",
            ["status"],
            registry=r,
        )
        self._last_poll = Gauge(
            "flow_agent_last_poll_timestamp_seconds",
            "Unix time of the last successful poll; 0 before the first.",
            registry=r,
        )
        self._backlog = Gauge(
            "flow_agent_scheduled_backlog",
            "Due SCHEDULED flow runs of the agent's pool and queues, at the last look.",
            ["pool"],
            registry=r,
        )
        self._oldest_due = Gauge(
            "flow_agent_oldest_due_run_age_seconds",
            "Seconds since the oldest due SCHEDULED run was due; 0 when none is due.",
            ["pool"],
            registry=r,
        )
        self._limit_full = Gauge(
            "flow_agent_limit_full",
            "1 while due flow runs wait because the agent's --limit is full, else 0.",
            registry=r,
        )
        self._limit_full_episodes = Counter(
            "flow_agent_limit_full_episodes",
            "Times the agent's --limit became full while due flow runs were waiting.",
            registry=r,
        )
        self._free.set(_UNLIMITED)

    # -- what the poller, the runner and the client call -----------------------------------------

    def claimed(self, pool: str) -> None:
        self._claimed.labels(pool=_pool(pool)).inc()

    def claim_lost(self, pool: str) -> None:
        self._claims_lost.labels(pool=_pool(pool)).inc()

    def launched(self, kind: str, seconds: float) -> None:
        """A run's infrastructure exists and its pid is reported, `seconds` after the claim."""
        kind = _kind(kind)
        self._launched.labels(backend=kind).inc()
        self._latency.labels(backend=kind).observe(max(0.0, seconds))

    def ended(self, kind: str, outcome: str) -> None:
        self._ended.labels(backend=_kind(kind), outcome=outcome if outcome in OUTCOMES else _OTHER).inc()

    def api_error(self, status: int | str) -> None:
        """`status`: the HTTP status code, or "network" when there was no response."""
        self._api_errors.labels(status=_status(status)).inc()

    def polled(self) -> None:
        self._last_poll.set(self._clock())

    def set_in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def set_backlog(self, pool: str, due: int, oldest_age: float) -> None:
        """`due` runs of `pool` are due now; the oldest has been due `oldest_age` seconds."""
        self._backlog.labels(pool=_pool(pool)).set(max(0, due))
        self._oldest_due.labels(pool=_pool(pool)).set(max(0.0, oldest_age) if due else 0.0)

    def set_limit_full(self, full: bool, *, new_episode: bool = False) -> None:
        self._limit_full.set(1 if full else 0)
        if new_episode:
            self._limit_full_episodes.inc()

    def set_free_slots(self, n: int | None) -> None:
        """`None` (unlimited) is exported as -1."""
        self._free.set(_UNLIMITED if n is None else n)


def _kind(kind: str) -> str:
    # the registry is a fixed table of kinds, so this stays a bounded vocabulary
    return kind if kind in REGISTRY else _OTHER


def _pool(pool: str) -> str:
    # Pool names come from the agent's own configuration, not from run data.
    return pool[:_MAX_POOL_LABEL] if pool else _OTHER


def _status(status: int | str) -> str:
    if status == API_ERROR_NETWORK:
        return API_ERROR_NETWORK
    try:
        code = int(status)
    except (TypeError, ValueError):
        return _OTHER
    return str(code) if 100 <= code <= 599 else _OTHER
