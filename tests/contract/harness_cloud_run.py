"""The Cloud Run harness: the real `run_v2` REST clients against tests/fakes/cloud_run_fake.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.backends.base import BackendOptions, Handle, Job
from agent.backends.cloud_run import CloudRunBackend
from agent.infra.cloud_run import CloudRunKind
from agent.infra.merge import resolve_job_configuration
from agent.infra.spec import RunContext

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from fakes.cloud_run_fake import CloudRunFake  # noqa: E402

_START_WITHIN = 5.0  # seconds: the contract's short start deadline (stick_waiting meets it)
_TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/cloud-run-v2.json"


class CloudRunHarness:
    kind = "cloud-run"
    supports_start_timeout = True
    supports_timeout = True  # Cloud Run stops a task at the job's `timeout` itself

    def __init__(self, tmp_path: Path) -> None:
        self.fake = CloudRunFake()
        self.fake.start()
        options = BackendOptions(watch_interval=0.05, gcp_endpoint=self.fake.url)
        self.backend = CloudRunBackend(options, start_timeout=_START_WITHIN)
        self._kind = CloudRunKind()
        self._template = json.loads(_TEMPLATE.read_text())

    def job(self, name: str) -> Job:
        variables = {"image": "us-docker.pkg.dev/demo/flows/flow:1", "credentials": {"project": "demo"}}
        resolved = resolve_job_configuration(self._template, variables, {}, source="contract")
        config = self._kind.config_from_pool(resolved, pool_type="cloud-run-v2", source="contract")
        run_id = f"{name}-0000"
        context = RunContext(run_id, name, env={"A": "b"}, labels={"prefect.io/flow-run-id": run_id})
        return Job(
            run_id, name, "cloud-run", self._kind.build_payload(config, context), self._kind.runtime(config)
        )

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        self.fake.finish_execution(handle.pid, exit_code, oom=oom)

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        self.fake.fail_to_start(handle.pid, reason)

    async def stick_waiting(self, handle: Handle, *, reason: str) -> None:
        self.fake.stick_waiting(handle.pid, reason)

    async def time_out(self, handle: Handle) -> None:
        self.fake.time_out(handle.pid)

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The execution ends on its own; a cancel sent now meets Cloud Run's answer for an
        ended execution (400 FAILED_PRECONDITION over REST)."""
        self.fake.finish_execution(handle.pid, exit_code)

    async def leftovers(self, handle: Handle) -> list[str]:
        job = handle.pid.rsplit("/executions/", 1)[0]
        return [name for name in self.fake.list_jobs() if name == job] + self.fake.list_executions(job)

    async def aclose(self) -> None:
        await self.backend.aclose()
        self.fake.close()


def make_harness(tmp_path: Path) -> CloudRunHarness:
    return CloudRunHarness(tmp_path)
