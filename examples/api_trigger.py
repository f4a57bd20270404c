"""A web endpoint that triggers a flow run and answers at once (`timeout=0`).

`POST /reports/{customer}` creates a run of the `report/on-demand` deployment with the
customer as a parameter and returns its id without waiting for it; `GET /runs/{id}` tells
how it is doing. An `Idempotency-Key` header makes a client's retry (a double click, a
timed-out request sent again) return the run it already started instead of a second one.

Try it against the local embedded server:

    flow-agent start &                       # a local Prefect server and an agent on pool "local"
    pip install fastapi uvicorn
    python examples/api_trigger.py           # registers the deployment, serves on :8000
    curl -X POST -H 'Idempotency-Key: abc' localhost:8000/reports/acme
    curl localhost:8000/runs/<id>
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException
from prefect import flow, get_run_logger

from agent.api.flow_runs import read_flow_run
from agent.orchestrate import DeploymentNotFound, arun_deployment, register_local_deployment
from agent.orchestrate.deployments import client_from_environment

DEPLOYMENT = "report/on-demand"
HERE = Path(__file__).resolve().parent


@flow
def report(customer: str) -> str:
    get_run_logger().info("building the report for %s", customer)
    time.sleep(2)
    return f"report for {customer}"


app = FastAPI(title="reports")


@app.post("/reports/{customer}", status_code=202)
async def trigger(customer: str, idempotency_key: str | None = Header(default=None)) -> dict[str, str]:
    try:
        run = await arun_deployment(
            DEPLOYMENT,
            parameters={"customer": customer},
            timeout=0,  # create it and return: the agent runs it
            idempotency_key=f"report-{customer}-{idempotency_key}" if idempotency_key else None,
            tags=["api"],
        )
    except DeploymentNotFound as exc:
        raise HTTPException(503, str(exc)) from None
    return {"flow_run_id": run.id, "name": run.name, "state": run.state_label}


@app.get("/runs/{run_id}")
async def status(run_id: str) -> dict[str, str | None]:
    async with client_from_environment() as client:
        run = await read_flow_run(client, run_id)
    return {
        "flow_run_id": run.id,
        "state": run.state_label,
        "message": run.state.message if run.state else None,
    }


async def register() -> None:
    async with client_from_environment() as client:
        await register_local_deployment(
            client,
            flow_name="report",
            name="on-demand",
            pool="local",
            entrypoint="api_trigger.py:report",
            directory=str(HERE),
        )


if __name__ == "__main__":
    import uvicorn

    asyncio.run(register())
    uvicorn.run(app, host="127.0.0.1", port=8000)
