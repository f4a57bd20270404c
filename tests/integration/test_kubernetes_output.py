"""Kubernetes output (issue 16): the pods' logs through the real `kubernetes` client over
HTTP against the API double (tests/fakes), whose pod log endpoint follows as the API
reference documents (tests/fakes/kubernetes_logs.py).

No Prefect server: the backend is driven directly, as the runner and `infra run` do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from agent.backends.base import BackendOptions, Handle, Job
from agent.backends.kubernetes import KubernetesBackend
from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.kubernetes import KubernetesKind
from agent.infra.spec import RunContext
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "s3cr3t-k8s-output-canary-value"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    from contract.harness_kubernetes import make_harness

    made = make_harness(tmp_path)
    yield made
    await made.aclose()


def _job(name: str, *, output: Callable[[str], None] | None = None, **variables: Any) -> Job:
    kind = KubernetesKind()
    variables = {"image": "prefecthq/prefect:3-latest", "pod_watch_timeout_seconds": 10, **variables}
    resolved = resolve_job_configuration(default_base_job_template("kubernetes"), variables, None, source="t")
    config = kind.config_from_pool(resolved, pool_type="kubernetes", source="t")
    ctx = RunContext(name, name, labels={"prefect.io/flow-run-id": name, "prefect.io/flow-run-name": name})
    job = Job(name, name, "kubernetes", kind.build_payload(config, ctx), kind.runtime(config))
    return dataclasses.replace(job, output=output)


async def _running(harness: Any, job: Job) -> tuple[Handle, str]:
    handle = await harness.backend.launch(job)
    name = handle.pid.split(":")[-1]
    harness.fake.set_pod_phase(name, "Running")
    return handle, name


def _exit(harness: Any, name: str, code: int) -> None:
    state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
    harness.fake.set_pod_phase(name, "Succeeded" if code == 0 else "Failed", container_state=state)


async def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.02)


async def _wait(backend: Any, handle: Handle) -> Outcome:
    with anyio.fail_after(30):
        return await backend.wait(handle)


async def test_lines_arrive_in_order_once_and_complete_with_the_exit_code(harness: Any) -> None:
    REDACTOR.add(SECRET)
    lines: list[str] = []
    handle, name = await _running(harness, _job("run-lines", output=lines.append))
    harness.fake.write_output(name, "line 1", "line 2")
    await _until(lambda: len(lines) == 2)
    harness.fake.write_output(name, f"token={SECRET}", "", "last words")  # then it exits at once
    _exit(harness, name, 3)
    outcome = await _wait(harness.backend, handle)
    assert outcome.exit_code == 3, outcome
    assert lines == ["line 1", "line 2", "token=********", "last words"]
    assert harness.fake.leftovers("default", name) == []  # read before the job was deleted


async def test_a_cut_stream_is_resumed_without_duplicates(harness: Any) -> None:
    lines: list[str] = []
    handle, name = await _running(harness, _job("run-cut", output=lines.append))
    harness.fake.write_output(name, "a", "b", same_time=True)
    await _until(lambda: len(lines) == 2)
    harness.fake.logs.cut()  # the answer ends; lines sharing the last time follow
    harness.fake.write_output(name, "c", "d", same_time=True)
    await _until(lambda: harness.fake.logs.requests >= 2)
    harness.fake.logs.cut()
    harness.fake.write_output(name, "e")
    _exit(harness, name, 0)
    assert (await _wait(harness.backend, handle)).exit_code == 0
    assert lines == ["a", "b", "c", "d", "e"]


async def test_stream_output_off_reads_no_log(harness: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        handle, name = await _running(harness, _job("run-quiet", stream_output=False))
        harness.fake.write_output(name, "not for us")
        await anyio.sleep(0.3)
        _exit(harness, name, 0)
        assert (await _wait(harness.backend, handle)).exit_code == 0
    assert [e for e in logs if e.get("stream") == "output"] == []
    assert harness.fake.logs.requests == 0


async def test_a_denied_read_says_so_once_and_the_run_still_ends_right(harness: Any) -> None:
    harness.fake.logs.forbidden = True
    lines: list[str] = []
    with structlog.testing.capture_logs() as logs:
        handle, name = await _running(harness, _job("run-denied", output=lines.append))
        harness.fake.write_output(name, "unread")
        await anyio.sleep(0.3)
        _exit(harness, name, 2)
        outcome = await _wait(harness.backend, handle)
    assert outcome.exit_code == 2, outcome
    assert lines == []
    warnings = [e for e in logs if e["log_level"] == "warning" and "output is unavailable" in e["event"]]
    assert len(warnings) == 1, warnings
    assert "403" in warnings[0]["event"] and '["pods/log"]' in warnings[0]["event"]
    assert warnings[0]["flow_run_id"] == "run-denied"


async def test_an_adopted_run_ships_its_lines_to_its_flow_runs_log(harness: Any) -> None:
    job = _job("run-adopted")
    first = KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig=harness.kubeconfig))
    handle = await first.launch(dataclasses.replace(job, output=lambda line: None))
    await first.aclose()  # the launching agent is gone
    name = handle.pid.split(":")[-1]
    harness.fake.set_pod_phase(name, "Running")
    harness.fake.write_output(name, "before the restart")
    other = KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig=harness.kubeconfig))
    try:
        adopted = Handle("kubernetes", handle.pid, "run-adopted", job.runtime)  # the run's, rebuilt
        with structlog.testing.capture_logs() as logs:
            outcomes: list[Outcome] = []

            async def wait() -> None:
                outcomes.append(await _wait(other, adopted))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.5)
                harness.fake.write_output(name, "after the restart")
                _exit(harness, name, 0)
        mine = [
            e for e in logs if e.get("stream") == "output" and e.get("logger") == "agent.backends.kubernetes"
        ]
        assert [e["event"] for e in mine] == ["before the restart", "after the restart"], mine
        assert {e["flow_run_id"] for e in mine} == {"run-adopted"}
        assert outcomes[0].exit_code == 0
    finally:
        await other.aclose()


async def test_a_pod_that_ends_before_launch_returns_is_read_to_its_end(harness: Any) -> None:
    """The whole run happens while the create's answer is on its way: the pod runs, prints
    and fails, and the create answers only once the agent has ended the run and deleted the
    job (or after 10 s). Its lines must be read before that delete."""
    fake, lines = harness.fake, []
    held: list[bool] = []

    def run_to_the_end(name: str) -> None:  # the fake's server thread, the client waiting
        fake.set_pod_phase(name, "Running")
        fake.write_output(name, "hi", "there")
        _exit(harness, name, 3)
        held.append(fake.until(lambda: not fake.leftovers("default", name), timeout=10))

    fake.during_create = run_to_the_end
    handle = await harness.backend.launch(_job("run-early", output=lines.append))
    outcome = await _wait(harness.backend, handle)
    assert held == [True]  # the run was over before launch returned
    assert outcome.exit_code == 3, outcome
    assert lines == ["hi", "there"]
    assert harness.fake.leftovers("default", handle.pid.split(":")[-1]) == []


async def test_a_job_whose_end_outruns_its_pods_news_is_still_read(harness: Any) -> None:
    """The pods watch lags behind the jobs watch: the job's Failed condition arrives while
    the agent has seen its pod at most Pending (its watch, and its one list of the job's
    pods, came before the pod ran). The drain reads the pods as the API has them then."""
    fake, lines = harness.fake, []
    handle = await harness.backend.launch(_job("run-lagging", output=lines.append))
    name = handle.pid.split(":")[-1]

    def seen(selector: str, *, watch: bool) -> bool:
        return any(
            path.endswith("/pods")
            and q.get("labelSelector") == selector
            and (q.get("watch") == "true") == watch
            for _, path, q in list(fake.requests)
        )

    await _until(lambda: seen("prefect.io/flow-run-id", watch=True) and seen(f"job-name={name}", watch=False))
    fake.lagging.add("pods")
    try:
        fake.set_pod_phase(name, "Running")
        fake.write_output(name, "only", "once")
        _exit(harness, name, 4)
        outcome = await _wait(harness.backend, handle)
    finally:
        fake.lagging.discard("pods")
    assert outcome.exit_code == 4, outcome
    assert lines == ["only", "once"]
    assert harness.fake.leftovers("default", name) == []
