"""A scraper that schedules its own next run, five hours later, with the next page.

Each run scrapes one page, then triggers its own deployment for `page + 1` at now + 5 h
(`scheduled_time`) and returns without waiting (`timeout=0`). The idempotency key names the
page, so if this run is retried after it already scheduled the next one, no second
successor appears. `as_subflow=False`: the next run is a successor, not a child of this one.

Try it against the local embedded server:

    flow-agent start &                 # a local Prefect server and an agent on pool "local"
    python examples/scraper.py         # registers the deployment, runs page 1
    flow-agent flow-runs ls --deployment scrape/every-5h   # page 2, scheduled in 5 hours
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import deployment

from agent.orchestrate import register_local_deployment, run_deployment

HERE = Path(__file__).resolve().parent
EVERY = timedelta(hours=5)


@flow
def scrape(page: int = 1, last_page: int = 100) -> int:
    logger = get_run_logger()
    logger.info("scraping page %s", page)
    # ... fetch and store the page here ...
    if page >= last_page:
        logger.info("last page reached; not scheduling another run")
        return page
    nxt = run_deployment(
        deployment.id or "scrape/every-5h",  # this run's own deployment
        parameters={"page": page + 1, "last_page": last_page},
        scheduled_time=datetime.now(UTC) + EVERY,
        timeout=0,
        idempotency_key=f"scrape-page-{page + 1}",
        as_subflow=False,
    )
    logger.info("page %s scheduled for %s (flow run %s)", page + 1, nxt.expected_start_time, nxt.id)
    return page


async def register() -> None:
    from agent.orchestrate.deployments import client_from_environment

    async with client_from_environment() as client:
        await register_local_deployment(
            client,
            flow_name="scrape",
            name="every-5h",
            pool="local",
            entrypoint="scraper.py:scrape",
            directory=str(HERE),
        )


def main() -> int:
    asyncio.run(register())
    first = run_deployment("scrape/every-5h", parameters={"page": 1}, timeout=300, poll_interval=2)
    print(f"page 1: {first.state_label}")
    return 0 if first.state_label == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
