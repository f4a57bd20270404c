"""Cloud Run runs end to end: the real agent, the real Prefect server, the real `run_v2` REST
clients against the Cloud Run Admin v2 fake (tests/fakes/cloud_run_fake.py). What remains
in the fake after each run is checked: the per-run job is deleted on every ending.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes.cloud_run_fake import CloudRunFake
from support.prefect_api import PrefectAPI, state_message, state_type, wait_for

from agent.backends.base import BackendError, BackendOptions, Job
from agent.backends.cloud_run import CloudRunBackend
from agent.infra.cloud_run import CloudRunKind
from agent.infra.merge import resolve_job_configuration
from agent.infra.spec import RunContext
from agent.outcome import Reason

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/cloud-run-v2.json"
PARENT = "projects/demo/locations/us-central1"
VARIABLES = {"image": "us-docker.pkg.dev/demo/flows/flow:1", "credentials": {"project": "demo"}}


@pytest.fixture(scope="module")
def fake() -> Iterator[CloudRunFake]:
    with CloudRunFake() as started:
        yield started


def _env(fake: CloudRunFake) -> dict[str, str]:
    return {"FLOW_AGENT_GCP_ENDPOINT": fake.url, "FLOW_AGENT_WATCH_INTERVAL": "0.2"}


def _set_state(api: PrefectAPI, run_id: str, type_: str) -> None:
    body = {"state": {"type": type_, "name": type_.title()}, "force": True}
    api.request("POST", f"/flow_runs/{run_id}/set_state", json=body)


def _execution_of(api: PrefectAPI, run_id: str, parent: str = PARENT) -> str:
    pid = api.wait_for_pid(run_id, timeout=30)["infrastructure_pid"]
    assert pid.startswith(parent + "/jobs/") and "/executions/" in pid, pid
    return pid


def _job_gone(fake: CloudRunFake, execution: str) -> None:
    job = execution.rsplit("/executions/", 1)[0]
    wait_for(lambda: job not in fake.list_jobs(), 20, message=f"job {job} deleted")
    assert fake.list_executions(job) == []


def _pool_deployment(api: PrefectAPI, pool: str, **variables: Any) -> str:
    template = json.loads(TEMPLATE.read_text())
    body = {"name": pool, "type": "cloud-run-v2", "base_job_template": template}
    api.request("POST", "/work_pools/", json=body)
    flow_id = api.create_flow("cloud-run-tests")
    return api.create_deployment(flow_id, f"{pool}-d", pool, job_variables={**VARIABLES, **variables})


def test_pool_runs_end_truthfully_and_leave_nothing_behind(
    api: PrefectAPI, pool: str, start_agent, fake: CloudRunFake
) -> None:
    deployment = _pool_deployment(api, pool)
    runs = {case: api.create_flow_run(deployment)["id"] for case in ("success", "exit1", "oom")}
    start_agent(pool, env=_env(fake))
    executions = {case: _execution_of(api, run_id) for case, run_id in runs.items()}

    _set_state(api, runs["success"], "RUNNING")  # what the engine in the container would do
    _set_state(api, runs["success"], "COMPLETED")
    fake.finish_execution(executions["success"], 0)
    fake.finish_execution(executions["exit1"], 1)
    fake.finish_execution(executions["oom"], 137, oom=True)

    crashed = api.wait_for_state(runs["exit1"], "CRASHED", timeout=30)
    assert "exit code 1" in state_message(crashed)
    oom = api.wait_for_state(runs["oom"], "CRASHED", timeout=30)
    assert "OOM" in state_message(oom) and "Memory limit" in state_message(oom)
    for execution in executions.values():
        _job_gone(fake, execution)
    assert state_type(api.read_flow_run(runs["success"])) == "COMPLETED"


def test_start_failures_and_cancel_are_reported_and_cleaned_up(
    api: PrefectAPI, pool: str, start_agent, fake: CloudRunFake
) -> None:
    deployment = _pool_deployment(api, pool)
    runs = {case: api.create_flow_run(deployment)["id"] for case in ("pull", "cancel")}
    # the start deadline follows the job's timeout
    runs["pending"] = api.create_flow_run(deployment, job_variables={"timeout": 3})["id"]
    start_agent(pool, env=_env(fake))
    executions = {case: _execution_of(api, run_id) for case, run_id in runs.items()}

    fake.fail_to_start(executions["pull"], "Image 'us-docker.pkg.dev/demo/flows/flow:1' not found.")
    fake.start_execution(executions["cancel"])
    api.cancel(runs["cancel"])

    pulled = api.wait_for_state(runs["pull"], "CRASHED", timeout=30)
    assert "not found" in state_message(pulled), state_message(pulled)
    pending = api.wait_for_state(runs["pending"], "CRASHED", timeout=30)
    assert "did not start within 3 s" in state_message(pending), state_message(pending)
    api.wait_for_state(runs["cancel"], "CANCELLED", timeout=30)
    for execution in executions.values():
        _job_gone(fake, execution)


def test_a_cloud_run_job_block_launches_through_the_v2_api(
    api: PrefectAPI, pool: str, start_agent, fake: CloudRunFake
) -> None:
    registered = subprocess.run(
        [sys.executable, "-m", "agent", "blocks", "register"],
        env={"PREFECT_API_URL": api.api_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert registered.returncode == 0, registered.stderr
    data = {
        "image": "gcr.io/demo/flows:1",
        "region": "europe-west1",
        "credentials": {"project": "demo"},
        "cpu": 1,
        "memory": 512,
        "memory_unit": "Mi",
    }
    block = api.create_block_document("cloud-run-job", data)
    api.create_process_pool(pool)
    body = {
        "name": f"{pool}-block",
        "flow_id": api.create_flow("cloud-run-tests"),
        "work_pool_name": pool,
        "infrastructure_document_id": block["id"],
    }
    deployment = api.request("POST", "/deployments/", json=body).json()["id"]
    run_id = api.create_flow_run(deployment)["id"]
    start_agent(pool, env=_env(fake))

    execution = _execution_of(api, run_id, "projects/demo/locations/europe-west1")
    job = fake.jobs[execution.rsplit("/executions/", 1)[0]]
    container = job.template.template.containers[0]
    assert container.resources.limits["memory"] == "512Mi" and job.template.template.max_retries == 3
    assert job.labels["prefect-io-flow-run-id"] == run_id
    fake.finish_execution(execution, 1)
    crashed = api.wait_for_state(run_id, "CRASHED", timeout=30)
    assert "exit code 1" in state_message(crashed)
    _job_gone(fake, execution)


# -- in-process: lost responses must not make a second job or a second execution ---------------


def _job(name: str) -> Job:
    kind = CloudRunKind()
    resolved = resolve_job_configuration(json.loads(TEMPLATE.read_text()), VARIABLES, {}, source="test")
    config = kind.config_from_pool(resolved, pool_type="cloud-run-v2", source="test")
    run_id = f"{name}-1111"
    context = RunContext(run_id, name, labels={"prefect.io/flow-run-id": run_id})
    return Job(run_id, name, "cloud-run", kind.build_payload(config, context), kind.runtime(config))


def test_lost_responses_are_retried_without_duplicates(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = CloudRunBackend(BackendOptions(watch_interval=0.05, gcp_endpoint=fake.url))
        try:
            fake.inject("create_job", 503, after=True)  # created, answer lost -> 409 -> reused
            fake.inject("run_job", 503, after=True)  # started, answer lost -> adopted
            before = len(fake.calls)
            handle = await backend.launch(_job("lost-answers"))
            calls = fake.calls[before:]
            assert calls.count("create_job") == 2 and "get_job" in calls
            assert calls.count("run_job") == 1 and "list_executions" in calls
            job = handle.pid.rsplit("/executions/", 1)[0]
            assert fake.list_executions(job) == [handle.pid]
            fake.finish_execution(handle.pid, 0, message="")
            with anyio.fail_after(20):
                assert (await backend.wait(handle)).succeeded
            assert job not in fake.list_jobs()
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_timeout_says_so(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = CloudRunBackend(BackendOptions(watch_interval=0.05, gcp_endpoint=fake.url))
        try:
            handle = await backend.launch(_job("timed-out"))
            message = "Task timed-out-task0 failed with message: The configured timeout was reached."
            fake.finish_execution(handle.pid, 143, message=message)  # SIGTERM from the runtime
            with anyio.fail_after(20):
                outcome = await backend.wait(handle)
            assert outcome.exit_code == 143 and not outcome.oom
            assert "timeout of 600 s" in outcome.message(), outcome.message()
            assert "The configured timeout was reached" in outcome.message()
        finally:
            await backend.aclose()

    anyio.run(scenario)


# -- find: another agent looks a run's execution up from the run alone ------------------------


def _backend(fake: CloudRunFake) -> CloudRunBackend:
    return CloudRunBackend(BackendOptions(watch_interval=0.05, gcp_endpoint=fake.url))


def test_a_new_backend_finds_the_execution_alive_and_after_it_ended(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        launching = _backend(fake)
        handle = await launching.launch(_job("found-later"))
        await launching.aclose()  # the launching agent is gone; its execution goes on
        job = handle.pid.rsplit("/executions/", 1)[0]

        finder = _backend(fake)
        try:
            before = len(fake.calls)
            found = await finder.find(_job("found-later"))  # rebuilt from the run, not remembered
            assert found is not None and found.pid == handle.pid
            assert found.flow_run_id == "found-later-1111" and found.runtime is not None
            assert await finder.inspect(found) is None  # alive
            assert set(fake.calls[before:]) <= {"get_job", "list_executions", "get_execution"}

            fake.finish_execution(handle.pid, 1)
            again = await finder.find(_job("found-later"))
            assert again is not None and again.pid == handle.pid
            outcome = await finder.inspect(again)
            assert outcome is not None and outcome.exit_code == 1 and "exit code 1" in outcome.message()
            assert fake.list_executions(job) == [handle.pid]  # nothing launched a second time
            with anyio.fail_after(20):
                assert (await finder.wait(again)).exit_code == 1
            # adopted with the run's options (no keep_job): its job is cleaned up as by its launcher
            assert await finder.find(_job("found-later")) is None
        finally:
            await finder.aclose()

    anyio.run(scenario)


def test_find_returns_only_this_runs_execution(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            theirs = await backend.launch(_job("someone-else"))
            assert await backend.find(_job("nobody-launched-me")) is None  # no job by that name

            # a job by our name that another run made (its flow-run label is not ours)
            ours = _job("impostor")
            payload = {**ours.payload, "job_id": _job("someone-else").payload["job_id"]}
            assert (
                await backend.find(
                    Job(ours.flow_run_id, ours.flow_run_name, ours.kind, payload, ours.runtime)
                )
                is None
            )

            fake.inject("get_job", 503)  # a transient failure is retried with the agent's policy
            found = await backend.find(_job("someone-else"))
            assert found is not None and found.pid == theirs.pid

            fake.finish_execution(theirs.pid, 0)
            with anyio.fail_after(20):
                assert (await backend.wait(theirs)).succeeded
            assert await backend.find(_job("someone-else")) is None  # ended, and its job deleted
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_find_says_when_it_cannot_tell(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            fake.inject("get_job", 403)  # permission denied is not "no workload"
            with pytest.raises(BackendError, match="Cloud Run jobs.get"):
                await backend.find(_job("forbidden"))
        finally:
            await backend.aclose()

    anyio.run(scenario)


# -- the service's answers as documented: timeout, a cancel racing the end, failed creation ----


def test_a_timeout_with_a_kill_signal_is_a_timeout_not_an_oom(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            handle = await backend.launch(_job("sigkilled-at-timeout"))
            fake.time_out(handle.pid)  # term_signal 9 and "The configured timeout was reached."
            with anyio.fail_after(20):
                outcome = await backend.wait(handle)
            assert not outcome.oom and outcome.reason is not Reason.OOM, outcome
            assert "timeout of 600 s" in outcome.message() and "signal 9" in outcome.message()
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_an_oom_has_a_signal_and_no_exit_code_and_points_at_the_logs(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            handle = await backend.launch(_job("memory-killed"))
            fake.finish_execution(handle.pid, oom=True)
            attempt = fake.tasks[handle.pid][0].last_attempt_result
            assert attempt.term_signal == 9 and attempt.exit_code == 0  # at most one of them
            with anyio.fail_after(20):
                outcome = await backend.wait(handle)
            assert outcome.reason is Reason.OOM and "console.cloud.google.com/logs" in outcome.detail
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_cancel_that_races_the_end_reports_the_real_end(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            for exit_code in (0, 1):
                handle = await backend.launch(_job(f"raced-{exit_code}"))
                fake.finish_execution(handle.pid, exit_code)
                before = len(fake.calls)
                await backend.kill(handle, 1.0)  # REST: 400 FAILED_PRECONDITION, as BadRequest
                assert "cancel_execution" in fake.calls[before:]
                with anyio.fail_after(20):
                    outcome = await backend.wait(handle)
                assert outcome.reason is Reason.EXITED and outcome.exit_code == exit_code, outcome
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_stuck_execution_meets_its_start_deadline_with_the_reason_and_is_cleaned_up(
    fake: CloudRunFake,
) -> None:
    async def scenario() -> None:
        options = BackendOptions(watch_interval=0.05, gcp_endpoint=fake.url)
        backend = CloudRunBackend(options, start_timeout=0.5)
        try:
            handle = await backend.launch(_job("stuck"))
            fake.stick_waiting(handle.pid, "Quota exceeded for total allowable CPU per project per region.")
            with anyio.fail_after(20):
                outcome = await backend.wait(handle)
            assert outcome.reason is Reason.START_FAILED and "Quota exceeded" in outcome.message()
            _job_gone(fake, handle.pid)
        finally:
            await backend.aclose()

    anyio.run(scenario)


def test_a_job_whose_creation_failed_is_deleted_but_never_another_runs(fake: CloudRunFake) -> None:
    async def scenario() -> None:
        backend = _backend(fake)
        try:
            job = _job("creation-failed")
            name = f"{PARENT}/jobs/{job.payload['job_id']}"
            fake.inject("create_job", 400, after=True)  # created, then the call fails
            with pytest.raises(BackendError):
                await backend.launch(job)
            assert name not in fake.list_jobs()

            theirs = await backend.launch(_job("owner"))
            impostor = _job("impostor-2")
            payload = {**impostor.payload, "job_id": _job("owner").payload["job_id"]}
            with pytest.raises(BackendError, match="belongs to another flow run"):
                await backend.launch(
                    Job("impostor-2-1111", "impostor-2", "cloud-run", payload, impostor.runtime)
                )
            assert theirs.pid.rsplit("/executions/", 1)[0] in fake.list_jobs()
            await backend.kill(theirs, 1.0)
            with anyio.fail_after(20):
                await backend.wait(theirs)
        finally:
            await backend.aclose()

    anyio.run(scenario)
