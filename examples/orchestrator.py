"""A data-warehouse refresh: one parent flow triggers other teams' deployments and waits.

The parent `refresh_warehouse` starts one ingestion run per source at the same time, waits
for all of them, then runs the dbt-style `build` and `test` steps one after the other. Each
step is its own deployment (owned by another team, on its own infrastructure); the parent
only knows their names. Every child run is linked to the parent (the Prefect UI shows them
as subflows of it), and each trigger carries an idempotency key derived from the parent run,
so a retried parent finds the children it already started instead of starting them again.

Try it against the local embedded server:

    flow-agent start &                  # a local Prefect server and an agent on pool "local"
    python examples/orchestrator.py     # registers the four deployments, runs the parent

or point both at a server with PREFECT_API_URL.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from agent.orchestrate import arun_deployment, register_local_deployment, run_deployment

POOL = "local"
HERE = Path(__file__).resolve().parent
SOURCES = ("orders", "customers", "payments")


# -- the children: in real life, other teams' deployments ------------------------------------


@flow
def ingest(source: str, rows: int = 1000) -> int:
    """Load one source system into the raw schema."""
    get_run_logger().info("loading %s rows from %s", rows, source)
    time.sleep(1)
    return rows


@flow
def dbt(command: str = "build", select: str = "marts") -> str:
    """Stand-in for `dbt build --select marts` / `dbt test --select marts`."""
    get_run_logger().info("dbt %s --select %s", command, select)
    time.sleep(1)
    return f"dbt {command} ok"


# -- the parent ----------------------------------------------------------------------------------


@flow
async def refresh_warehouse(sources: list[str] | None = None, select: str = "marts") -> dict[str, str]:
    sources = list(sources or SOURCES)
    logger = get_run_logger()
    key = f"refresh-{flow_run.id}"  # same key when the parent is retried: no second child

    # 1. every ingestion at once; wait for all of them
    ingested = await asyncio.gather(
        *(
            arun_deployment(
                "ingest/warehouse-ingest",
                parameters={"source": source},
                idempotency_key=f"{key}-ingest-{source}",
                poll_interval=2,
            )
            for source in sources
        )
    )
    outcome = {f"ingest {source}": run.state_label for source, run in zip(sources, ingested, strict=True)}
    if any(run.current_type.value != "COMPLETED" for run in ingested):
        raise RuntimeError(f"ingestion did not complete, not building: {outcome}")

    # 2. then the transformations, in order; stop at the first that does not complete
    for command in ("build", "test"):
        run = await arun_deployment(
            f"dbt/warehouse-dbt-{command}",
            parameters={"command": command, "select": select},
            idempotency_key=f"{key}-dbt-{command}",
            poll_interval=2,
            timeout=3600,  # waits at most an hour, then returns the run as it stands
        )
        outcome[f"dbt {command}"] = run.state_label
        if run.current_type.value != "COMPLETED":
            raise RuntimeError(f"dbt {command} ended {run.state_label}: {outcome}")
    logger.info("warehouse refreshed: %s", outcome)
    return outcome


# -- setup and a run, from the command line ---------------------------------------------------------


async def register() -> None:
    from agent.orchestrate.deployments import client_from_environment

    async with client_from_environment() as client:
        common = {"pool": POOL, "directory": str(HERE)}
        await register_local_deployment(
            client, flow_name="ingest", name="warehouse-ingest", entrypoint="orchestrator.py:ingest", **common
        )
        for command in ("build", "test"):
            await register_local_deployment(
                client,
                flow_name="dbt",
                name=f"warehouse-dbt-{command}",
                entrypoint="orchestrator.py:dbt",
                parameters={"command": command},
                **common,
            )
        await register_local_deployment(
            client,
            flow_name="refresh-warehouse",
            name="nightly",
            entrypoint="orchestrator.py:refresh_warehouse",
            **common,
        )


def main() -> int:
    asyncio.run(register())
    print("Triggering refresh-warehouse/nightly; the agent serving pool 'local' runs it")
    seen: list[str] = []

    def show(run) -> None:  # called after every poll: print the changes
        if not seen or seen[-1] != run.state_label:
            seen.append(run.state_label)
            print(f"  {run.name}: {run.state_label}")

    run = run_deployment("refresh-warehouse/nightly", timeout=600, poll_interval=2, on_update=show)
    print(f"refresh-warehouse ended {run.state_label}")
    return 0 if run.current_type and run.current_type.value == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
