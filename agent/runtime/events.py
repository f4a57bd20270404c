"""Sub-second reactions: the server's event stream wakes the poller and the cancel check.

Events are hints, never leases: a `Scheduled` event only makes the poller poll now (the
claim still goes through `set_state PENDING`), and a `Cancelling` event only makes the
watchdog check now. If the stream is unavailable the agent works exactly the same, at
the speed of its poll intervals, so every failure here is logged and retried, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from agent.observe.logging import get_logger
from agent.retry import backoff_delay

__all__ = ["EventStream", "events_url"]

log = get_logger("agent.runtime.events")

SCHEDULED = "prefect.flow-run.Scheduled"
CANCELLING = "prefect.flow-run.Cancelling"


def events_url(api_url: str) -> str:
    scheme, _, rest = api_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/events/out"


def subscription(pool_ids: Sequence[str], now: datetime) -> dict[str, Any]:
    # The server matches live events against `occurred.until`, which defaults to the time
    # the filter is parsed: without a far `until` no live event would ever arrive.
    return {
        "type": "filter",
        "backfill": False,
        "filter": {
            "occurred": {
                "since": (now - timedelta(seconds=60)).isoformat(),
                "until": (now + timedelta(days=365)).isoformat(),
            },
            "event": {"name": [SCHEDULED, CANCELLING]},
            "related": {"id": [f"prefect.work-pool.{pool_id}" for pool_id in pool_ids]},
        },
    }


class EventStream:
    def __init__(
        self,
        api_url: str,
        *,
        token: str | None,
        pool_ids: Callable[[], Sequence[str]],
        on_scheduled: Callable[[], None],
        on_cancelling: Callable[[str], None],
    ) -> None:
        self._url = events_url(api_url)
        self._token = token
        self._pool_ids = pool_ids
        self._on_scheduled = on_scheduled
        self._on_cancelling = on_cancelling
        self.connected = False

    async def run(self) -> None:
        """Stay subscribed forever, reconnecting with the usual backoff."""
        try:
            from websockets.asyncio.client import connect
        except ImportError:  # pragma: no cover - websockets is a declared dependency
            log.warning("websockets is not installed; new runs are found by polling only")
            return
        failures = 0
        while True:
            try:
                async with connect(self._url, subprotocols=["prefect"], open_timeout=10) as ws:
                    await self._subscribe(ws)
                    failures = 0
                    await self._consume(ws)
            except Exception as exc:  # noqa: BLE001 - a hint channel must never stop the agent
                failures += 1
                self.connected = False
                delay = backoff_delay(failures, initial=1.0, maximum=30.0, jitter=0.2)
                log.info(
                    "event stream unavailable; polling continues", error=str(exc), retry_in=round(delay, 1)
                )
                await anyio.sleep(delay)

    async def _subscribe(self, ws: Any) -> None:
        await ws.send(json.dumps({"type": "auth", "token": self._token}))
        answer = json.loads(await ws.recv())
        if answer.get("type") != "auth_success":
            raise ConnectionError(f"event stream refused our credentials: {answer.get('reason', answer)}")
        await ws.send(json.dumps(subscription(self._pool_ids(), datetime.now(UTC))))
        self.connected = True
        log.debug("subscribed to flow run events")

    async def _consume(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            event = message.get("event") or {}
            name = event.get("event")
            if name == SCHEDULED:
                self._on_scheduled()
            elif name == CANCELLING:
                resource = (event.get("resource") or {}).get("prefect.resource.id", "")
                self._on_cancelling(resource.removeprefix("prefect.flow-run."))
