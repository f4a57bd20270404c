"""How many runs of a pool are due and not claimed, and since when: the backlog.

Read with `/flow_runs/count` and one row of `/flow_runs/filter`, never with
`get_scheduled_flow_runs`, which marks the pool's queues as polled (a diagnostic look
must not make a pool nobody serves look served).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.api.client import PrefectClient
from agent.api.models import FlowRun

__all__ = ["Backlog", "due_criteria", "read_backlog"]


@dataclass(frozen=True)
class Backlog:
    due: int
    oldest_due_at: datetime | None  # when the oldest due run was due (its next scheduled start)

    def oldest_age(self, now: datetime) -> float:
        if self.oldest_due_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_due_at).total_seconds())


def due_criteria(pool: str, queues: Sequence[str], now: datetime) -> dict[str, Any]:
    """SCHEDULED runs of `pool` (and `queues`, when given) due at `now`, as the poll sees them."""
    criteria: dict[str, Any] = {
        "flow_runs": {
            "state": {"type": {"any_": ["SCHEDULED"]}},
            "next_scheduled_start_time": {"before_": now.isoformat()},
        },
        "work_pools": {"name": {"any_": [pool]}},
    }
    if queues:
        criteria["work_pool_queues"] = {"name": {"any_": list(queues)}}
    return criteria


async def read_backlog(client: PrefectClient, pool: str, queues: Sequence[str], now: datetime) -> Backlog:
    criteria = due_criteria(pool, queues, now)
    due = int(await client.request("POST", "/flow_runs/count", json=criteria) or 0)
    if not due:
        return Backlog(0, None)
    body = {**criteria, "sort": "NEXT_SCHEDULED_START_TIME_ASC", "limit": 1}
    rows = await client.request("POST", "/flow_runs/filter", json=body) or []
    oldest = FlowRun.model_validate(rows[0]).next_scheduled_start_time if rows else None
    return Backlog(due, oldest)
