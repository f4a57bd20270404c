"""The Kubernetes harness: the real `kubernetes` client over HTTP against tests/fakes/kubernetes_fake."""

from __future__ import annotations

from pathlib import Path

from fakes.kubernetes_fake import KubernetesFake

from agent.backends.base import BackendOptions, Handle, Job
from agent.backends.kubernetes import KubernetesBackend
from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.kubernetes import KubernetesKind
from agent.infra.spec import RunContext

START_DEADLINE = 2  # seconds: pod_watch_timeout_seconds for every contract job


class KubernetesHarness:
    kind = "kubernetes"
    supports_start_timeout = True
    supports_timeout = True  # the Job's activeDeadlineSeconds

    def __init__(self, tmp_path: Path) -> None:
        self.fake = KubernetesFake().start()
        self.kubeconfig = str(self.fake.write_kubeconfig(tmp_path / "kubeconfig"))
        self.backend = KubernetesBackend(BackendOptions(watch_interval=0.1, kubeconfig=self.kubeconfig))
        self._kind = KubernetesKind()

    def job(self, name: str) -> Job:
        variables = {"image": "prefecthq/prefect:3-latest", "pod_watch_timeout_seconds": START_DEADLINE}
        resolved = resolve_job_configuration(
            default_base_job_template("kubernetes"), variables, None, source="contract"
        )
        config = self._kind.config_from_pool(resolved, pool_type="kubernetes", source="contract")
        ctx = RunContext(
            name, name, labels={"prefect.io/flow-run-id": name, "prefect.io/flow-run-name": name}
        )
        return Job(
            name, name, "kubernetes", self._kind.build_payload(config, ctx), self._kind.runtime(config)
        )

    @staticmethod
    def _where(handle: Handle) -> tuple[str, str]:
        namespace, job = handle.pid.split(":")[-2:]
        return namespace, job

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        _, job = self._where(handle)
        self.fake.set_pod_phase(job, "Running")
        reason = "OOMKilled" if oom else ("Completed" if exit_code == 0 else "Error")
        state = {"terminated": {"exitCode": exit_code, "reason": reason}}
        self.fake.set_pod_phase(job, "Succeeded" if exit_code == 0 else "Failed", container_state=state)

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        _, job = self._where(handle)
        self.fake.waiting(job, reason="ErrImagePull", message=reason)

    async def stick_waiting(self, handle: Handle, *, reason: str) -> None:
        """A scheduled pod (with its startTime) whose container waits in ImagePullBackOff."""
        _, job = self._where(handle)
        why, _, message = reason.partition(": ")
        self.fake.waiting(job, reason=why if message else "ImagePullBackOff", message=message or reason)

    async def time_out(self, handle: Handle) -> None:
        _, job = self._where(handle)
        self.fake.set_pod_phase(job, "Running")
        self.fake.deadline_exceeded(job)

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The pod ends and the job controller marks the job before the kill's delete."""
        await self.finish(handle, exit_code=exit_code)

    async def leftovers(self, handle: Handle) -> list[str]:
        return self.fake.leftovers(*self._where(handle))

    async def aclose(self) -> None:
        await self.backend.aclose()
        self.fake.stop()


def make_harness(tmp_path: Path) -> KubernetesHarness:
    return KubernetesHarness(tmp_path)
