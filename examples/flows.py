"""Example Prefect 3 flows used by `flow-agent demo` and the integration tests.

These are plain Prefect flows: the agent never imports this file. Each run executes it in
a child process (`python -m prefect.engine`), which loads the deployment's entrypoint
(`flows.py:<name>`) after the `set_working_directory` pull step moved it here.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

__all__ = ["fails", "hello", "hog", "sleepy"]


@flow(log_prints=True)
def hello(name: str = "world") -> str:
    """Logs a greeting and returns it: the run ends COMPLETED."""
    greeting = f"Hello, {name}!"
    get_run_logger().info(greeting)
    return greeting


@flow
def fails() -> None:
    """Raises: the engine reports the run FAILED and exits non-zero."""
    get_run_logger().info("About to fail on purpose")
    raise ValueError("This flow fails on purpose (flow-agent demo)")


@flow
def hog() -> None:
    """Runs until something kills it (the demo SIGKILLs it, as the kernel OOM killer would).

    It does not allocate memory for real: a demo must not endanger the machine it runs on.
    """
    get_run_logger().info("Pretending to use all the memory; waiting to be killed")
    while True:
        time.sleep(1)


@flow
def sleepy(seconds: float = 300) -> float:
    """Sleeps, so a test can cancel it or stop the agent while it runs."""
    get_run_logger().info("Sleeping for %s seconds", seconds)
    time.sleep(seconds)
    return seconds
