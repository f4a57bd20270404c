"""The event subscription: the quirks that make live events arrive at all."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.runtime.events import CANCELLING, SCHEDULED, events_url, subscription


def test_events_url_follows_the_api_scheme() -> None:
    assert events_url("http://h:4200/api") == "ws://h:4200/api/events/out"
    assert events_url("https://api.prefect.cloud/api/accounts/a/workspaces/w") == (
        "wss://api.prefect.cloud/api/accounts/a/workspaces/w/events/out"
    )


def test_subscription_reaches_far_into_the_future() -> None:
    # `occurred.until` defaults to "now" on the server, which silently drops live events
    now = datetime(2026, 11, 24, tzinfo=UTC)
    message = subscription(["p1", "p2"], now)
    occurred = message["filter"]["occurred"]
    assert occurred["until"].startswith("2027-11-24")
    assert message["backfill"] is False
    assert message["filter"]["event"]["name"] == [SCHEDULED, CANCELLING]
    assert message["filter"]["related"]["id"] == ["prefect.work-pool.p1", "prefect.work-pool.p2"]
