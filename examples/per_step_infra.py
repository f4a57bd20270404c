"""Each step of a workflow in its own infrastructure, chosen per run with `job_variables`.

One deployment, `step/any`, runs any step; the parent `pipeline` triggers it once per step
and gives each run the infrastructure that step needs, as job variables: they override the
deployment's and the work pool's defaults for that one run, exactly as `prefect deploy`
job variables do. Here the pool is a local `process` pool, so the overrides are an
environment and a working directory; on other pool types the same call takes that pool's
variables, for instance:

    kubernetes:  {"image": "trainer:cuda12", "namespace": "gpu",
                  "job_manifest": ...}   # or the pool's "cpu"/"memory"/"gpu" variables
    ecs:         {"cpu": 4096, "memory": 16384, "task_definition_arn": ...}
    cloud-run:   {"cpu": "4", "memory": "16Gi", "image": ...}

Try it against the local embedded server:

    flow-agent start &                 # a local Prefect server and an agent on pool "local"
    python examples/per_step_infra.py  # registers the deployments, runs the pipeline
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from agent.orchestrate import register_local_deployment, run_deployment

HERE = Path(__file__).resolve().parent

# step -> (parameters, job variables for its run)
STEPS: dict[str, tuple[dict, dict]] = {
    "extract": ({"step": "extract"}, {"env": {"PROFILE": "small", "THREADS": "2"}}),
    "train": (
        {"step": "train"},
        {
            "env": {"PROFILE": "gpu", "CUDA_VISIBLE_DEVICES": "0", "THREADS": "16"},
            "working_dir": tempfile.gettempdir(),
        },
    ),
    "publish": ({"step": "publish"}, {"env": {"PROFILE": "small", "THREADS": "1"}}),
}


@flow
def step(step: str) -> dict[str, str]:
    """One step; it reports the infrastructure it was given."""
    seen = {
        "step": step,
        "profile": os.environ.get("PROFILE", "default"),
        "threads": os.environ.get("THREADS", "?"),
        "cwd": os.getcwd(),
    }
    get_run_logger().info("running %s on %s", step, seen)
    return seen


@flow
def pipeline() -> None:
    logger = get_run_logger()
    for name, (parameters, job_variables) in STEPS.items():
        run = run_deployment("step/any", parameters=parameters, job_variables=job_variables, poll_interval=2)
        logger.info("%s ended %s (job variables %s)", name, run.state_label, job_variables)
        if run.state_label != "Completed":
            raise RuntimeError(f"step {name} ended {run.state_label}")


async def register() -> None:
    from agent.orchestrate.deployments import client_from_environment

    async with client_from_environment() as client:
        common = {"pool": "local", "directory": str(HERE)}
        await register_local_deployment(
            client, flow_name="step", name="any", entrypoint="per_step_infra.py:step", **common
        )
        await register_local_deployment(
            client,
            flow_name="pipeline",
            name="per-step-infra",
            entrypoint="per_step_infra.py:pipeline",
            **common,
        )


def main() -> int:
    asyncio.run(register())
    run = run_deployment("pipeline/per-step-infra", timeout=600, poll_interval=2)
    print(f"pipeline ended {run.state_label}")
    return 0 if run.state_label == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
