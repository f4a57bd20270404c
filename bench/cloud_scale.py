"""Cloud backends at scale (issue 18): 1,000 runs tracked at once by one backend.

    .venv/bin/python bench/cloud_scale.py [--runs 1000] [--backends ecs kubernetes cloud-run]
                                          [--throttle 0.2] [--configs 4] [--out bench/out/cloud]

Each backend is driven directly through the seam, as the runner drives it: Jobs built by
the backend's kind from a pool configuration (`agent/infra`), `launch` (up to 50 at once,
the poller's claim concurrency is of that order), then `wait` on every handle while the
double makes the workloads run and end. The doubles are the tests' own:

* **ECS**: moto in this process (tests/support/moto_ecs.py) with a seeded `--throttle`
  fraction of RegisterTaskDefinition, RunTask and DescribeTasks answered
  `ThrottlingException` (tests/support/ecs_throttle.py); `--configs` distinct task
  definitions (images) among the runs.
* **Kubernetes**: tests/fakes/kubernetes_fake.py over HTTP (pods run at once).
* **Cloud Run**: tests/fakes/cloud_run_fake.py over HTTP.

Measured: launches that succeeded, the outcomes (all should be EXITED 0: nothing ends
CRASHED/LOST because of throttling), task-definition revisions per configuration, the
tasks per DescribeTasks call, the status-read calls per watch round with every run
tracked, and memory: the growth per tracked run of what the backend holds (every object
reachable from it, measured after the first `--warmup` launches and again with all runs
tracked and read; classes, modules, the event loop and threads left out) and the process RSS
growth (which also holds the in-process double, so an upper bound). No pass/fail here:
tests/integration/test_cloud_scale.py asserts the correctness properties on 50 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT), str(ROOT / "tests")]

from cloud_doubles import Doubles, start_doubles  # noqa: E402
from run import machine_info  # noqa: E402

from agent.backends.base import Backend, BackendOptions, Handle, Job  # noqa: E402
from agent.observe.logging import configure_logging  # noqa: E402
from agent.outcome import Outcome  # noqa: E402

LAUNCHES_AT_ONCE = 50


@dataclass
class Scale:
    backend: str
    runs: int
    launched: int = 0
    launch_errors: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    configs: int = 0
    revisions: dict[str, int] = field(default_factory=dict)  # family -> registered revisions
    throttled: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    describe_max: int = 0  # most tasks in one DescribeTasks
    describe_full_round: list[int] = field(default_factory=list)  # tasks per call, one round, all tracked
    reads_per_round: float = 0.0  # status-read calls per watch round with every run tracked
    held_bytes_per_run: float = 0.0  # reachable from the backend
    rss_bytes_per_run: float = 0.0  # process RSS, double included
    launch_seconds: float = 0.0
    end_seconds: float = 0.0


# -- what every backend shares ---------------------------------------------------------------------


async def launch_all(
    backend: Backend, jobs: Sequence[Job], result: Scale, handles: dict[str, Handle]
) -> None:
    limiter = anyio.CapacityLimiter(LAUNCHES_AT_ONCE)

    async def one(job: Job) -> None:
        async with limiter:
            try:
                handles[job.flow_run_id] = await backend.launch(job)
            except Exception as exc:  # noqa: BLE001 - a bench counts every failure, whatever it is
                result.launch_errors.append(f"{type(exc).__name__}: {exc}"[:300])

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(one, job)
    result.launched = len(handles)


async def wait_all(backend: Backend, handles: dict[str, Handle], within: float) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}

    async def one(run: str, handle: Handle) -> None:
        outcomes[run] = await backend.wait(handle)

    with anyio.move_on_after(within):
        async with anyio.create_task_group() as tg:
            for run, handle in handles.items():
                tg.start_soon(one, run, handle)
    return outcomes


def tally(outcomes: dict[str, Outcome], expected: int) -> dict[str, int]:
    counts = Counter(f"{o.reason.value}:{o.exit_code}" for o in outcomes.values())
    if len(outcomes) < expected:
        counts["no outcome (timed out)"] = expected - len(outcomes)
    return dict(counts)


class Memory:
    """Growth between `mark` and `measure`: what the backend holds (the objects reachable
    from it, shared clients and the event loop excluded by difference and by type) and
    the process RSS (the in-process double included: an upper bound)."""

    def __init__(self, backend: object) -> None:
        self._backend = backend
        self._held = 0
        self._rss = 0

    def _held_now(self) -> int:
        gc.collect()
        return deep_size(self._backend)

    def mark(self) -> None:
        self._held = self._held_now()
        self._rss = psutil.Process().memory_info().rss

    def measure(self, runs: int) -> tuple[float, float]:
        held = self._held_now() - self._held
        rss = psutil.Process().memory_info().rss - self._rss
        return held / max(1, runs), rss / max(1, runs)


_NOT_OWNED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.FrameType,
    asyncio.AbstractEventLoop,
    threading.Thread,
)


def deep_size(root: object) -> int:
    """Bytes of every object reachable from `root` (each once), not descending into
    classes, modules, functions, frames, the event loop or threads: shared by everything."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_OWNED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj, 0)
        stack.extend(gc.get_referents(obj))
    return total


async def watch_rounds(count: Callable[[], int], interval: float, rounds: int = 3) -> float:
    """Status-read calls per watch round, over `rounds` rounds with every run tracked."""
    before = count()
    await anyio.sleep(interval * rounds)
    return (count() - before) / rounds


async def tracked_and_measured(
    result: Scale,
    backend: Backend,
    jobs: Sequence[Job],
    warmup: int,
    handles: dict[str, Handle],
    settle: Callable[[], Awaitable[None]],
) -> None:
    """Launch the warm-up, mark memory, launch the rest, let reads settle, measure."""
    memory = Memory(backend)
    started = time.monotonic()
    await launch_all(backend, jobs[:warmup], result, handles)
    memory.mark()
    await launch_all(backend, jobs[warmup:], result, handles)
    result.launch_seconds = round(time.monotonic() - started, 1)
    await settle()
    agent, rss = memory.measure(len(jobs) - warmup)
    result.held_bytes_per_run, result.rss_bytes_per_run = round(agent), round(rss)


# -- ECS ---------------------------------------------------------------------------------------------


async def run_ecs(args: argparse.Namespace, doubles: Doubles) -> Scale:
    from support.moto_ecs import MotoEcs, ecs_job

    from agent.backends.ecs import EcsBackend
    from agent.backends.ecs.taskdefs import digest

    double: Any = doubles.EcsDouble()  # type: ignore[attr-defined]
    moto = MotoEcs(double.start(args.throttle, args.seed))
    result = Scale("ecs", args.runs)
    images = [f"busybox:1.{i}" for i in range(args.configs)]
    jobs = [ecs_job(moto, f"run-{i:05d}", images[i % len(images)]) for i in range(args.runs)]
    result.configs = len({digest(j.payload["task_definition"]) for j in jobs})
    interval = args.interval
    backend = EcsBackend(BackendOptions(watch_interval=interval))
    handles: dict[str, Handle] = {}

    async def settle() -> None:
        await anyio.sleep(interval * 2)  # every task read at least once
        mark = len(double.counts()["describe_sizes"])
        described = lambda: double.counts()["calls"].get("describe_tasks", 0)  # noqa: E731
        result.reads_per_round = await watch_rounds(described, interval)
        result.describe_full_round = double.counts()["describe_sizes"][mark : mark + 12]

    await tracked_and_measured(result, backend, jobs, args.warmup, handles, settle)
    started = time.monotonic()
    double.finish_all()
    outcomes = await wait_all(backend, handles, within=300)
    result.end_seconds = round(time.monotonic() - started, 1)
    await backend.aclose()
    counts = double.counts()
    result.outcomes = tally(outcomes, len(handles))
    result.revisions = double.revisions()
    result.throttled = counts["throttled"]
    result.calls = counts["calls"]
    result.describe_max = max(counts["describe_sizes"], default=0)
    return result


# -- Kubernetes ----------------------------------------------------------------------------------------


async def run_kubernetes(args: argparse.Namespace, doubles: Doubles, tmp: Path) -> Scale:
    from agent.backends.kubernetes import KubernetesBackend
    from agent.infra import default_base_job_template, resolve_job_configuration
    from agent.infra.kubernetes import KubernetesKind
    from agent.infra.spec import RunContext

    fake: Any = doubles.KubernetesDouble()  # type: ignore[attr-defined]
    kubeconfig = fake.serve(str(tmp / "kubeconfig"))
    kind = KubernetesKind()
    variables = {"image": "prefecthq/prefect:3-latest", "pod_watch_timeout_seconds": 600}
    template = default_base_job_template("kubernetes")
    resolved = resolve_job_configuration(template, variables, None, source="bench")
    config = kind.config_from_pool(resolved, pool_type="kubernetes", source="bench")

    def job(name: str) -> Job:
        labels = {"prefect.io/flow-run-id": name, "prefect.io/flow-run-name": name}
        ctx = RunContext(name, name, labels=labels)
        return Job(name, name, "kubernetes", kind.build_payload(config, ctx), kind.runtime(config))

    jobs = [job(f"run-{i:05d}") for i in range(args.runs)]
    result = Scale("kubernetes", args.runs, configs=1)
    backend = KubernetesBackend(BackendOptions(watch_interval=args.interval, kubeconfig=kubeconfig))
    handles: dict[str, Handle] = {}

    async def settle() -> None:
        await anyio.sleep(args.interval * 2)
        start = fake.request_count()
        await anyio.sleep(args.interval * 3)
        # every GET but the watch streams (which stay open) is a status read
        reads = [r for r in fake.requests_since(start) if r[0] == "GET" and "watch" not in r[2]]
        result.reads_per_round = len(reads) / 3

    try:
        await tracked_and_measured(result, backend, jobs, args.warmup, handles, settle)
        before = fake.request_count()
        started = time.monotonic()
        fake.finish_all([handle.pid.split(":")[-1] for handle in handles.values()])
        outcomes = await wait_all(backend, handles, within=300)
        result.end_seconds = round(time.monotonic() - started, 1)
        result.calls = dict(Counter(f"{m} {_k8s_route(p)}" for m, p, _ in fake.requests_since(before)))
        await backend.aclose()
    finally:
        fake.stop()
    result.outcomes = tally(outcomes, len(handles))
    return result


def _k8s_route(path: str) -> str:
    """A request path with the runs' job and pod names as {name}."""
    return "/".join("{name}" if part.startswith("run-") else part for part in path.strip("/").split("/"))


# -- Cloud Run -------------------------------------------------------------------------------------------


async def run_cloud_run(args: argparse.Namespace, doubles: Doubles) -> Scale:
    from agent.backends.cloud_run import CloudRunBackend
    from agent.infra.cloud_run import CloudRunKind
    from agent.infra.merge import resolve_job_configuration
    from agent.infra.spec import RunContext

    fake: Any = doubles.CloudRunDouble()  # type: ignore[attr-defined]
    url = fake.serve()
    kind = CloudRunKind()
    template = json.loads((ROOT / "agent/infra/templates/cloud-run-v2.json").read_text())
    variables = {"image": "us-docker.pkg.dev/demo/flows/flow:1", "credentials": {"project": "demo"}}
    resolved = resolve_job_configuration(template, variables, {}, source="bench")
    config = kind.config_from_pool(resolved, pool_type="cloud-run-v2", source="bench")

    def job(name: str) -> Job:
        ctx = RunContext(name, name, env={"A": "b"}, labels={"prefect.io/flow-run-id": name})
        return Job(name, name, "cloud-run", kind.build_payload(config, ctx), kind.runtime(config))

    jobs = [job(f"run-{i:05d}") for i in range(args.runs)]
    result = Scale("cloud-run", args.runs, configs=1)
    options = BackendOptions(watch_interval=args.interval, gcp_endpoint=url)
    backend = CloudRunBackend(options, start_timeout=600)
    handles: dict[str, Handle] = {}

    async def settle() -> None:
        fake.start_all([handle.pid for handle in handles.values()])
        await anyio.sleep(args.interval * 2)
        start = fake.call_count()
        await anyio.sleep(args.interval * 3)
        calls = Counter(fake.calls_since(start))
        result.reads_per_round = (calls["get_execution"] + calls["list_executions"]) / 3

    try:
        await tracked_and_measured(result, backend, jobs, args.warmup, handles, settle)
        before = fake.call_count()
        started = time.monotonic()
        fake.finish_all([handle.pid for handle in handles.values()])
        outcomes = await wait_all(backend, handles, within=300)
        result.end_seconds = round(time.monotonic() - started, 1)
        result.calls = dict(Counter(fake.calls_since(before)))
        await backend.aclose()
    finally:
        fake.close()
    result.outcomes = tally(outcomes, len(handles))
    return result


# -- main ----------------------------------------------------------------------------------------------


def table(results: list[Scale]) -> str:
    lines = [
        "| backend | runs | launched | outcomes | revisions / configs | tasks per DescribeTasks (max) "
        "| status reads per round | backend KiB per run (held) | RSS KiB per run | launch s | end s |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        revisions = f"{sum(r.revisions.values())} / {r.configs}" if r.backend == "ecs" else "n/a"
        describe = str(r.describe_max) if r.backend == "ecs" else "n/a"
        outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(r.outcomes.items()))
        lines.append(
            f"| {r.backend} | {r.runs} | {r.launched} | {outcomes} | {revisions} | {describe} "
            f"| {r.reads_per_round:g} | {r.held_bytes_per_run / 1024:.1f} | {r.rss_bytes_per_run / 1024:.1f} "
            f"| {r.launch_seconds} | {r.end_seconds} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> list[Scale]:
    results = []
    doubles = start_doubles()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.backends:
                print(f"== {name}: {args.runs} runs", flush=True)
                if name == "ecs":
                    result = await run_ecs(args, doubles)
                elif name == "kubernetes":
                    result = await run_kubernetes(args, doubles, Path(tmp))
                else:
                    result = await run_cloud_run(args, doubles)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
    finally:
        doubles.shutdown()
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["ecs", "kubernetes", "cloud-run"],
        choices=["ecs", "kubernetes", "cloud-run"],
    )
    parser.add_argument("--throttle", type=float, default=0.2, help="ECS calls throttled (fraction)")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--configs", type=int, default=4, help="distinct ECS task definitions")
    parser.add_argument("--warmup", type=int, default=50, help="launches before the memory mark")
    parser.add_argument("--interval", type=float, default=2.0, help="the watch interval, seconds")
    parser.add_argument("--log-level", default="WARNING", help="the agent log (stderr)")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "cloud")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    configure_logging(level=arguments.log_level, fmt="json")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    measured = anyio.run(main, arguments)
    print(table(measured))
    print(f"uptime before: {load}")
    print(f"uptime after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    arguments.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(),
        "uptime_before": load,
        "args": {k: str(v) for k, v in vars(arguments).items()},
        "results": [asdict(r) for r in measured],
    }
    (arguments.out / "cloud_scale.json").write_text(json.dumps(report, indent=1))
