"""The tests' cloud doubles served from another process, for bench/cloud_scale.py.

The bench measures the memory the agent's side grows by per tracked run; a double in the
same process (moto's models, a fake's stored objects, its server threads) would count in
that. A `multiprocessing` manager runs them in its own process and hands out proxies: every
method below is called there. Nothing here changes what a double does.
"""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from fakes.cloud_run_fake import CloudRunFake
from fakes.kubernetes_fake import KubernetesFake

__all__ = ["CloudRunDouble", "Doubles", "EcsDouble", "KubernetesDouble", "start_doubles"]


class EcsDouble:
    """moto (tests/support/moto_ecs.py) with the seeded throttling (ecs_throttle.py)."""

    def __init__(self) -> None:
        self._moto: Any = None
        self._throttle: Any = None
        self._calls: Any = None

    def start(self, rate: float, seed: int) -> str:
        from support.ecs_throttle import throttled
        from support.moto_ecs import moto_ecs

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
        warnings.filterwarnings("ignore", message=r"Exception\(ECSException\) with code ThrottlingException")
        self._moto = moto_ecs()
        self._moto.reset()
        self._throttle = throttled(rate, seed)
        self._calls = self._throttle.__enter__()
        return self._moto.url

    def finish_all(self) -> int:
        """Every task's containers exit 0, as ECS reports an ended task."""
        tasks = self._moto.tasks()
        for task in tasks:
            self._moto.finish(task.task_arn, exit_code=0)
        return len(tasks)

    def counts(self) -> dict[str, Any]:
        calls = self._calls
        with calls._lock:
            return {
                "calls": dict(calls.calls),
                "throttled": dict(calls.throttled),
                "describe_sizes": list(calls.describe_sizes),
                "registered": dict(calls.registered_families),
            }

    def revisions(self) -> dict[str, int]:
        families: dict[str, int] = {}
        for td in self._moto.task_definitions():
            families[td.family] = families.get(td.family, 0) + 1
        return families

    def tasks(self) -> int:
        return len(self._moto.tasks())


class KubernetesDouble(KubernetesFake):
    def serve(self, kubeconfig: str) -> str:
        self.start()
        self.auto_start = True  # pods run at once: the bench watches running runs
        return str(self.write_kubeconfig(Path(kubeconfig)))

    def requests_since(self, start: int) -> list[tuple[str, str, dict[str, str]]]:
        return list(self.requests[start:])

    def request_count(self) -> int:
        return len(self.requests)

    def finish_all(self, jobs: list[str]) -> None:
        state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        for job in jobs:
            self.set_pod_phase(job, "Succeeded", container_state=state)


class CloudRunDouble(CloudRunFake):
    def serve(self) -> str:
        self.start()
        return self.url

    def calls_since(self, start: int) -> list[str]:
        return list(self.calls[start:])

    def call_count(self) -> int:
        return len(self.calls)

    def start_all(self, names: list[str]) -> None:
        for name in names:
            self.start_execution(name)

    def finish_all(self, names: list[str]) -> None:
        for name in names:
            self.finish_execution(name, 0)


class Doubles(BaseManager):
    pass


# named: the manager would otherwise list methods by reading every attribute, properties too
Doubles.register("EcsDouble", EcsDouble, exposed=("start", "finish_all", "counts", "revisions", "tasks"))
Doubles.register(
    "KubernetesDouble",
    KubernetesDouble,
    exposed=("serve", "requests_since", "request_count", "finish_all", "stop"),
)
Doubles.register(
    "CloudRunDouble",
    CloudRunDouble,
    exposed=("serve", "calls_since", "call_count", "start_all", "finish_all", "close"),
)


def start_doubles() -> Doubles:
    """The doubles' process (spawned: it shares no threads or memory with the bench)."""
    manager = Doubles(ctx=multiprocessing.get_context("spawn"))
    manager.start()
    return manager
