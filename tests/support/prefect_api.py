"""A small synchronous Prefect REST helper for test setup and assertions.

It is deliberately independent of the agent's own client: tests must not trust the code
they check. The real server answers bursts of writes with 503 (SQLite "database is
locked"), so every request is retried a few times on 503 and on connection errors.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

__all__ = [
    "FLOW_SOURCE",
    "PROCESS_TEMPLATE",
    "TERMINAL",
    "PrefectAPI",
    "duplicates",
    "holds_for",
    "marker_command",
    "process_gone",
    "read_markers",
    "os_pid",
    "state_message",
    "unexpected_crashes",
    "state_type",
    "wait_for",
]

T = TypeVar("T")

PROCESS_TEMPLATE = Path(__file__).resolve().parents[2] / "agent/infra/templates/process.json"

TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

# A real Prefect flow, for `PrefectAPI.real_flow_deployment`.
FLOW_SOURCE = """\
from prefect import flow


@flow(log_prints=True)
def hello(name: str = "world") -> str:
    print(f"hello {name}")
    return name
"""

_RETRY_STATUSES = {502, 503}
_ATTEMPTS = 8


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    *,
    interval: float = 0.25,
    message: str = "condition",
) -> T:
    """Call `predicate` until it returns something truthy; return that value.

    On timeout, fail with `message` and the last value seen (or the last exception).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - a failing probe is just "not yet"
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}; last: {last!r}")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], object],
    duration: float,
    *,
    interval: float = 0.25,
    message: str = "condition",
) -> None:
    """Check that `predicate` stays truthy for `duration` seconds (a negative check)."""
    deadline = time.monotonic() + duration
    while True:
        value = predicate()
        if not value:
            raise AssertionError(f"{message} stopped holding (got {value!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


class PrefectAPI:
    def __init__(self, api_url: str, *, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.api_url + "/", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, ok: Iterable[int] = (), **kwargs: Any) -> httpx.Response:
        """Send one request, retrying 502/503 and connection errors; raise on other errors
        unless the status is listed in `ok`."""
        ok = set(ok)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = self._http.request(method, path.lstrip("/"), **kwargs)
            except httpx.TransportError:
                if attempt == _ATTEMPTS:
                    raise
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == _ATTEMPTS:
                    break
            time.sleep(0.1 * attempt)
        if response.is_error and response.status_code not in ok:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response

    # -- setup ---------------------------------------------------------------------------------

    def create_process_pool(self, name: str) -> dict[str, Any]:
        """Create a process work pool with the agent's default base job template (409: exists)."""
        template = json.loads(PROCESS_TEMPLATE.read_text())
        body = {"name": name, "type": "process", "base_job_template": template}
        response = self.request("POST", "/work_pools/", json=body, ok={409})
        if response.status_code == 409:
            return self.read_pool(name)
        return response.json()

    def read_pool(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/work_pools/{name}").json()

    def find_pool(self, name: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/work_pools/{name}", ok={404})
        return None if response.status_code == 404 else response.json()

    def create_flow(self, name: str) -> str:
        """POST /flows/ returns the existing flow for a known name."""
        return self.request("POST", "/flows/", json={"name": name}).json()["id"]

    def create_deployment(
        self,
        flow_id: str,
        name: str,
        pool: str,
        *,
        entrypoint: str | None = None,
        path: str | None = None,
        pull_steps: list[dict[str, Any]] | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "name": name,
            "flow_id": flow_id,
            "work_pool_name": pool,
            "entrypoint": entrypoint,
            "path": path,
            "pull_steps": pull_steps,
            "job_variables": job_variables or {},
            "enforce_parameter_schema": False,
        }
        return self.request("POST", "/deployments/", json=body).json()["id"]

    def create_flow_run(
        self,
        deployment_id: str,
        *,
        parameters: dict[str, Any] | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"parameters": parameters or {}}
        if job_variables is not None:
            body["job_variables"] = job_variables
        path = f"/deployments/{deployment_id}/create_flow_run"
        return self.request("POST", path, json=body).json()

    def create_flow_runs(self, deployment_id: str, count: int, **kwargs: Any) -> list[str]:
        """Create `count` runs one after the other (parallel writes only earn 503s)."""
        return [self.create_flow_run(deployment_id, **kwargs)["id"] for _ in range(count)]

    def command_deployment(
        self, pool: str, command: str, *, name: str = "cmd", env: dict[str, str] | None = None
    ) -> str:
        """A deployment whose runs execute `command` instead of the Prefect engine."""
        job_variables: dict[str, Any] = {"command": command}
        if env:
            job_variables["env"] = env
        flow_id = self.create_flow("flow-agent-tests")
        return self.create_deployment(flow_id, f"{pool}-{name}", pool, job_variables=job_variables)

    def real_flow_deployment(self, pool: str, directory: Path, *, env: dict[str, str] | None = None) -> str:
        """A deployment of a real Prefect flow written into `directory`: the default command
        (`python -m prefect.engine`) runs it after the pull step moves into the directory."""
        (directory / "flows.py").write_text(FLOW_SOURCE)
        flow_id = self.create_flow("hello")
        return self.create_deployment(
            flow_id,
            f"{pool}-hello",
            pool,
            entrypoint="flows.py:hello",
            path=str(directory),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}],
            job_variables={"env": env} if env else None,
        )

    def create_block_document(
        self, slug: str, data: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        """A block document of a registered type (its newest schema)."""
        block_type = self.request("GET", f"/block_types/slug/{slug}").json()
        body = {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1}
        schema = self.request("POST", "/block_schemas/filter", json=body).json()[0]
        doc = {
            "name": name or f"b-{uuid.uuid4().hex[:8]}",
            "data": data,
            "block_schema_id": schema["id"],
            "block_type_id": block_type["id"],
        }
        return self.request("POST", "/block_documents/", json=doc).json()

    # -- reads ---------------------------------------------------------------------------------

    def read_flow_run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/flow_runs/{run_id}").json()

    def read_flow_runs(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(run_ids)
        runs: list[dict[str, Any]] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            body = {"flow_runs": {"id": {"any_": chunk}}, "limit": 200}
            runs.extend(self.request("POST", "/flow_runs/filter", json=body).json())
        return runs

    def read_logs(self, run_id: str) -> list[dict[str, Any]]:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
        return self.request("POST", "/logs/filter", json=body).json()

    # -- actions -------------------------------------------------------------------------------

    def cancel(self, run_id: str) -> dict[str, Any]:
        """What the UI does: force CANCELLING."""
        body = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
        return self.request("POST", f"/flow_runs/{run_id}/set_state", json=body).json()

    # -- waiting -------------------------------------------------------------------------------

    def wait_for_state(self, run_id: str, *types: str, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the run's state type is one of `types`; return the run."""

        def reached() -> dict[str, Any] | None:
            run = self.read_flow_run(run_id)
            return run if state_type(run) in types else None

        return wait_for(reached, timeout, message=f"run {run_id} to reach {'/'.join(types)}")

    def wait_for_pid(self, run_id: str, *, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the agent has reported the run's infrastructure_pid; return the run."""

        def reported() -> dict[str, Any] | None:
            run = self.read_flow_run(run_id)
            return run if run.get("infrastructure_pid") else None

        return wait_for(reported, timeout, message=f"run {run_id} to get an infrastructure_pid")

    def all_launched_or_ended(self, run_ids: list[str]) -> Callable[[], bool]:
        """A `wait_for` predicate: every run has an infrastructure_pid or a terminal state."""

        def check() -> bool:
            runs = self.read_flow_runs(run_ids)
            return len(runs) == len(run_ids) and all(
                run["infrastructure_pid"] or state_type(run) in TERMINAL for run in runs
            )

        return check


def state_type(run: dict[str, Any]) -> str | None:
    state = run.get("state") or {}
    return state.get("type") or run.get("state_type")


def state_message(run: dict[str, Any]) -> str:
    return (run.get("state") or {}).get("message") or ""


def os_pid(run: dict[str, Any]) -> int:
    """The OS pid in an infrastructure_pid of the form "hostname:pid" (or plain "pid")."""
    return int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1])


def process_gone(pid: int) -> bool:
    """True once the process has ended (a zombie waiting to be reaped counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marker_command(path: Path) -> str:
    """A run command appending the run's id to `path` (short O_APPEND writes don't interleave).
    Nothing in it reports a state: after its exit 0 the agent reports it CRASHED as "never
    started" (the command did not run the Prefect engine), see `unexpected_crashes`."""
    return f"sh -c 'echo $PREFECT__FLOW_RUN_ID >> {path}'"


def read_markers(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def duplicates(ids: Iterable[str]) -> dict[str, int]:
    """{id: count} of the ids seen more than once."""
    return {i: n for i, n in Counter(ids).items() if n > 1}


def unexpected_crashes(runs: Iterable[dict[str, Any]]) -> list[str]:
    """ "id: message" of CRASHED runs, except the agent's "flow run never started" verdict on a
    command that exited 0 without running the engine (what `marker_command` runs do)."""
    return [
        f"{run['id']}: {state_message(run)}"
        for run in runs
        if state_type(run) == "CRASHED" and "never started" not in state_message(run)
    ]


def assert_each_launched_once(api: PrefectAPI, markers: Path, run_ids: list[str]) -> None:
    """Every run's command ran exactly once, every run reported a pid, none crashed for real."""
    launched = read_markers(markers)
    assert not duplicates(launched), "runs launched more than once"
    assert sorted(launched) == sorted(run_ids)
    runs = api.read_flow_runs(run_ids)
    assert all(run["infrastructure_pid"] for run in runs)
    assert not unexpected_crashes(runs)
