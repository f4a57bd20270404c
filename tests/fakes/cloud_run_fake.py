"""A small stateful fake of the Cloud Run Admin API v2 (REST), for the real `run_v2` clients.

No Cloud Run emulator exists, so this serves the routes the backend uses over plain HTTP
on 127.0.0.1 (the REST transport accepts an `http://` endpoint; the clients then need
AnonymousCredentials). Responses are built with the library's own proto types, so the JSON
is what the clients parse from the real API. Executions stay pending until a test decides
how they end: `start_execution`, `finish_execution`, `fail_to_start`.

Routes (all under /v2/projects/P/locations/R): jobs create (409 on a duplicate) / get
(404 when absent) / list / delete, jobs:run (an LRO with the Execution as metadata, done
when it ends), operations get, executions list (newest first, as documented) / get /
delete / :cancel, tasks list; and Cloud Logging's `POST /v2/entries:list` (the answer's shape
is tests/fixtures/cloud_run/log_entries.json, after Google's entries.list and LogEntry
reference), with the filter terms the backend sends parsed strictly (anything else: 400).
`write_output` is what the execution's container prints (an entry per line; `delay`: shown
that many seconds later, as Cloud Logging shows entries); `fail_logs` makes every log read
answer an error. The execution's system log (`run.googleapis.com/varlog/system`, shaped as
tests/fixtures/cloud_run/system_memory.json) gets Cloud Run's memory-limit entry when a task
is killed for memory (`finish_execution(oom=True)`), and "Container terminated on signal 9."
when the system kills it otherwise (`system_kill`); `write_system` writes any such entry.
`inject(route, status, after=True)` makes the next call of a route fail, after committing
its effect when `after` is true (a lost response).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format

__all__ = ["CloudRunFake"]

_C = run_v2.Condition
_SUCCEEDED, _FAILED, _PENDING = (
    _C.State.CONDITION_SUCCEEDED,
    _C.State.CONDITION_FAILED,
    _C.State.CONDITION_PENDING,
)
_PARENT = r"/v2/(?P<parent>projects/[^/]+/locations/[^/]+)"
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", _PARENT + r"/jobs$", "create_job"),
    ("GET", _PARENT + r"/jobs$", "list_jobs"),
    ("GET", _PARENT + r"/jobs/(?P<job>[^/:]+)$", "get_job"),
    ("DELETE", _PARENT + r"/jobs/(?P<job>[^/:]+)$", "delete_job"),
    ("POST", _PARENT + r"/jobs/(?P<job>[^/:]+):run$", "run_job"),
    ("GET", _PARENT + r"/operations/(?P<op>[^/]+)$", "get_operation"),
    ("GET", _PARENT + r"/jobs/(?P<job>[^/]+)/executions$", "list_executions"),
    ("GET", _PARENT + r"/jobs/(?P<job>[^/]+)/executions/(?P<ex>[^/:]+)$", "get_execution"),
    ("DELETE", _PARENT + r"/jobs/(?P<job>[^/]+)/executions/(?P<ex>[^/:]+)$", "delete_execution"),
    ("POST", _PARENT + r"/jobs/(?P<job>[^/]+)/executions/(?P<ex>[^/:]+):cancel$", "cancel_execution"),
    ("GET", _PARENT + r"/jobs/(?P<job>[^/]+)/executions/(?P<ex>[^/]+)/tasks$", "list_tasks"),
    ("POST", r"/v2/entries:list$", "list_entries"),
]
# the terms of an entries.list filter this fake understands (Cloud Logging's query language)
_TERMS = {
    "type": re.compile(r'^resource\.type="(?P<v>[^"]+)"$'),
    "job": re.compile(r'^resource\.labels\.job_name="(?P<v>[^"]+)"$'),
    "location": re.compile(r'^resource\.labels\.location="(?P<v>[^"]+)"$'),
    "execution": re.compile(r'^labels\."run\.googleapis\.com/execution_name"="(?P<v>[^"]+)"$'),
    "since": re.compile(r'^timestamp>="(?P<v>[^"]+)"$'),
    "logs": re.compile(r'^\((?P<v>logName="[^"]+"(?: OR logName="[^"]+")*)\)$'),
    "text": re.compile(r'^\((?P<v>textPayload:"[^"]+"(?: OR textPayload:"[^"]+")*)\)$'),
}
# Cloud Run's words for a memory kill and for the system's SIGKILL (tests/fixtures/cloud_run/system_*.json)
MEMORY_WORDS = (
    "Memory limit of 512 MiB exceeded with 530 MiB used. Consider increasing the memory limit, "
    "see https://cloud.google.com/run/docs/configuring/memory-limits"
)
SIGKILL_WORDS = "Container terminated on signal 9."


# the google.rpc.Code an HTTP status carries (https://cloud.google.com/apis/design/errors#http_mapping)
_CODE_OF = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _parse_filter(text: str) -> dict[str, Any]:
    """The terms of a filter joined by AND; one this fake does not understand is a 400, as an
    unparseable filter is for Cloud Logging."""
    terms: dict[str, Any] = {}
    for term in (t.strip() for t in text.split(" AND ") if t.strip()):
        for key, pattern in _TERMS.items():
            if match := pattern.match(term):
                value = match["v"]
                if key in ("logs", "text"):
                    terms[key] = set(re.findall(r'(?:logName=|textPayload:)"([^"]+)"', value))
                else:
                    terms[key] = value
                break
        else:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Unparseable filter: {term[:80]}")
    return terms


def _matches(entry: dict[str, Any], terms: dict[str, Any], projects: set[str]) -> bool:
    labels, resource = entry["labels"], entry["resource"]
    return (
        resource["labels"]["project_id"] in projects
        and terms.get("type", resource["type"]) == resource["type"]
        and terms.get("job", resource["labels"]["job_name"]) == resource["labels"]["job_name"]
        and terms.get("location", resource["labels"]["location"]) == resource["labels"]["location"]
        and terms.get("execution", labels["run.googleapis.com/execution_name"])
        == labels["run.googleapis.com/execution_name"]
        and entry["logName"] in terms.get("logs", {entry["logName"]})
        and ("text" not in terms or any(t in str(entry.get("textPayload", "")) for t in terms["text"]))
        and (_when(entry["timestamp"]) >= _when(terms["since"]) if "since" in terms else True)
    )


def _when(stamp: str) -> tuple[datetime, int]:
    """An RFC 3339 time with up to 9 fraction digits, comparable (datetime keeps 6)."""
    head, _, rest = stamp.partition(".")
    digits = re.match(r"\d*", rest)
    fraction = digits[0] if digits else ""
    zone = rest[len(fraction) :] if rest else head[19:]
    base = datetime.fromisoformat(head[:19] + (zone.replace("Z", "+00:00") or "+00:00"))
    return base, int(fraction.ljust(9, "0") or 0)


def _entry(name: str, log: str, payload: dict[str, Any], severity: str) -> dict[str, Any]:
    """A LogEntry of the execution's task 0 in `log` (stdout, stderr, varlog%2Fsystem)."""
    parts = re.match(r"projects/([^/]+)/locations/([^/]+)/jobs/([^/]+)/executions/([^/]+)$", name)
    assert parts is not None, name
    project, location, job, execution = parts.groups()
    now = _now().isoformat().replace("+00:00", "Z")
    return {
        "insertId": uuid.uuid4().hex[:16],
        "logName": f"projects/{project}/logs/run.googleapis.com%2F{log}",
        "resource": {
            "type": "cloud_run_job",
            "labels": {"project_id": project, "job_name": job, "location": location},
        },
        **payload,
        "timestamp": now,
        "receiveTimestamp": now,
        "severity": severity,
        "labels": {
            "run.googleapis.com/execution_name": execution,
            "run.googleapis.com/task_index": "0",
            "run.googleapis.com/task_attempt": "0",
            "instanceId": "0087244a80",
        },
    }


@dataclass
class _Fault:
    status: int
    after: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _cond(kind: str, state: int, message: str = "", **extra: Any) -> run_v2.Condition:
    return run_v2.Condition(type_=kind, state=state, message=message, last_transition_time=_now(), **extra)


def _lro(name: str, *, done: bool, metadata: Any = None, response: Any = None) -> str:
    op = operations_pb2.Operation(name=name, done=done)
    if metadata is not None:
        packed = any_pb2.Any()
        packed.Pack(type(metadata).pb(metadata))
        op.metadata.CopyFrom(packed)
    if response is not None:
        packed = any_pb2.Any()
        packed.Pack(type(response).pb(response))
        op.response.CopyFrom(packed)
    return json_format.MessageToJson(op)


class CloudRunFake:
    """`with CloudRunFake() as fake:` serves on `fake.url`; hooks are thread-safe."""

    def __init__(self) -> None:
        self.jobs: dict[str, run_v2.Job] = {}
        self.executions: dict[str, run_v2.Execution] = {}
        self.tasks: dict[str, list[run_v2.Task]] = {}
        self.operations: dict[str, tuple[str, str]] = {}  # op name -> (kind, resource)
        self.calls: list[str] = []
        self._faults: dict[str, _Fault] = {}
        self.entries: list[tuple[float, dict[str, Any]]] = []  # (shown from, LogEntry JSON)
        self.entry_reads: list[dict[str, Any]] = []  # the body of every entries.list call
        self.logs_fault: tuple[int, str, str] | None = None  # (status, code, message)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> CloudRunFake:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test hooks ---------------------------------------------------------------------------

    def list_jobs(self) -> list[str]:
        with self._lock:
            return sorted(self.jobs)

    def list_executions(self, job: str | None = None) -> list[str]:
        with self._lock:
            return sorted(n for n in self.executions if job is None or n.startswith(job + "/"))

    def inject(self, route: str, status: int = 503, *, after: bool = False) -> None:
        """Fail the next call of `route` (e.g. "run_job") with `status`; after committing it if `after`."""
        with self._lock:
            self._faults[route] = _Fault(status, after)

    def write_output(
        self, name: str, *lines: str, stream: str = "stdout", delay: float = 0.0, json_payload: Any = None
    ) -> None:
        """The execution's task 0 prints `lines` to `stream` (or one structured JSON line)."""
        payloads = [{"textPayload": line} for line in lines]
        if json_payload is not None:
            payloads.append({"jsonPayload": json_payload})
        severity = "ERROR" if stream == "stderr" else "DEFAULT"
        with self._lock:
            for payload in payloads:
                self.entries.append((time.monotonic() + delay, _entry(name, stream, payload, severity)))

    def write_system(
        self, name: str, text: str, severity: str, *, delay: float = 0.0, attempt: int = 0
    ) -> None:
        """Cloud Run writes `text` to the execution's system log about task 0's `attempt`."""
        entry = _entry(name, "varlog%2Fsystem", {"textPayload": text}, severity)
        entry["labels"] = {**entry["labels"], "run.googleapis.com/task_attempt": str(attempt)}
        entry["labels"]["container_name"] = "flow"
        with self._lock:
            self.entries.append((time.monotonic() + delay, entry))

    def fail_logs(self, status: int, code: str = "", message: str = "") -> None:
        """Every entries.list answers this error from now on (status 0: answers again)."""
        with self._lock:
            self.logs_fault = (status, code, message) if status else None

    def start_execution(self, name: str) -> None:
        with self._lock:
            ex = self.executions[name]
            if ex.start_time:
                return
            ex.start_time = _now()
            ex.running_count = ex.task_count
            ex.conditions = [
                _cond("ResourcesAvailable", _SUCCEEDED),
                _cond("Started", _SUCCEEDED),
                _cond("Completed", _PENDING, "Waiting for execution to complete."),
            ]

    def finish_execution(self, name: str, exit_code: int = 0, oom: bool = False, message: str = "") -> None:
        """End a (started) execution: every task's last attempt exits with `exit_code`.

        `oom`: the system terminates the container with SIGKILL: `term_signal` 9 and no
        exit code ("at most one of exit_code or term_signal will be set"); Cloud Run's
        "Memory limit of ... exceeded" words go to the execution's system log in Cloud
        Logging, not to the API, so the attempt carries them only when a test passes them
        as `message`."""
        if oom:
            self.write_system(name, MEMORY_WORDS, "ERROR")
        signal = 9 if oom else 0
        self._end_tasks(name, exit_code=0 if oom else exit_code, signal=signal, message=message)

    def system_kill(self, name: str, *, words: bool = True) -> None:
        """The system ends the task with SIGKILL for a reason other than memory: `term_signal`
        9, no memory entry; `words`: the system log says "Container terminated on signal 9."."""
        if words:
            self.write_system(name, SIGKILL_WORDS, "WARNING")
        self._end_tasks(name, exit_code=0, signal=9, message="")

    def time_out(self, name: str) -> None:
        """The task is stopped at the job's timeout: the attempt's status and the condition say
        "The configured timeout was reached." and, stopped by the system, it has a signal."""
        task = f"{name.rsplit('/', 1)[-1]}-task0"
        words = "The configured timeout was reached."
        self._end_tasks(
            name, exit_code=0, signal=9, message=words, said=f"Task {task} failed with message: {words}"
        )

    def _end_tasks(self, name: str, *, exit_code: int, signal: int, message: str, said: str = "") -> None:
        with self._lock:
            self.start_execution(name)
            ex = self.executions[name]
            failed = exit_code != 0 or signal != 0
            for task in self.tasks[name]:
                task.start_time = ex.start_time
                task.completion_time = _now()
                status = {"code": 2 if failed else 0, "message": message}
                task.last_attempt_result = run_v2.TaskAttemptResult(
                    exit_code=exit_code, term_signal=signal, status=status
                )
            self._complete(ex, failed, said or message or f"Task {name.rsplit('/', 1)[-1]}-task0 failed.")

    def stick_waiting(self, name: str, reason: str) -> None:
        """The execution waits for resources and never starts (its conditions stay pending)."""
        with self._lock:
            ex = self.executions[name]
            ex.conditions = [
                _cond("ResourcesAvailable", _PENDING, reason),
                _cond("Started", _PENDING),
                _cond("Completed", _PENDING),
            ]

    def fail_to_start(self, name: str, message: str) -> None:
        """The execution never runs (image pull error, quota): it ends failed, never started."""
        with self._lock:
            ex = self.executions[name]
            ex.conditions = [
                _cond("ResourcesAvailable", _FAILED, message),
                _cond("Started", _FAILED, message),
            ]
            self._complete(ex, True, message)

    def _complete(self, ex: run_v2.Execution, failed: bool, message: str, *, cancelled: bool = False) -> None:
        ex.running_count = 0
        ex.completion_time = _now()
        if cancelled:
            ex.cancelled_count = ex.task_count
            done = _cond(
                "Completed",
                _FAILED,
                "The execution was cancelled.",
                execution_reason=_C.ExecutionReason.CANCELLED,
            )
        elif failed:
            ex.failed_count = ex.task_count
            reason = _C.ExecutionReason.NON_ZERO_EXIT_CODE
            done = _cond("Completed", _FAILED, message, execution_reason=reason)
        else:
            ex.succeeded_count = ex.task_count
            done = _cond("Completed", _SUCCEEDED)
        # rebuilt, not assigned by index: proto-plus mishandles ex.conditions[-1] = ...
        ex.conditions = [c for c in ex.conditions if c.type_ != "Completed"] + [done]

    # -- HTTP -----------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        for verb, pattern, route in _ROUTES:
            match = re.match(pattern, url.path)
            if verb == method and match:
                status, text = self._dispatch(route, match.groupdict(), parse_qs(url.query), body)
                break
        else:
            status, text = 404, self._error(_ApiError(404, "NOT_FOUND", f"no route {method} {url.path}"))
        data = text.encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _dispatch(
        self, route: str, parts: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, str]:
        handler: Callable[..., str] = getattr(self, "_" + route)
        with self._lock:
            self.calls.append(route)
            fault = self._faults.pop(route, None)
            try:
                if fault is not None and not fault.after:
                    raise _ApiError(fault.status, _CODE_OF.get(fault.status, "UNKNOWN"), "injected failure")
                text = handler(parts, query, body)
                if fault is not None:
                    raise _ApiError(
                        fault.status, _CODE_OF.get(fault.status, "UNKNOWN"), "injected failure after commit"
                    )
                return 200, text
            except _ApiError as exc:
                return exc.code, self._error(exc)

    @staticmethod
    def _error(exc: _ApiError) -> str:
        return json.dumps({"error": {"code": exc.code, "status": exc.status, "message": exc.message}})

    def _job_name(self, parts: dict[str, str]) -> str:
        name = f"{parts['parent']}/jobs/{parts['job']}"
        if name not in self.jobs:
            raise _ApiError(
                404,
                "NOT_FOUND",
                f"Resource '{parts['job']}' of kind 'JOB' in {parts['parent']} does not exist.",
            )
        return name

    def _execution_name(self, parts: dict[str, str]) -> str:
        name = f"{parts['parent']}/jobs/{parts['job']}/executions/{parts['ex']}"
        if name not in self.executions:
            raise _ApiError(404, "NOT_FOUND", f"Resource '{parts['ex']}' of kind 'EXECUTION' does not exist.")
        return name

    def _new_operation(self, parent: str, kind: str, resource: str) -> str:
        name = f"{parent}/operations/{uuid.uuid4()}"
        self.operations[name] = (kind, resource)
        return name

    # -- routes ----------------------------------------------------------------------------------

    def _create_job(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        job_id = (query.get("jobId") or [""])[0]
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", job_id):
            raise _ApiError(400, "INVALID_ARGUMENT", f"Invalid job id {job_id!r}.")
        job = run_v2.Job.from_json(body or b"{}", ignore_unknown_fields=False)
        if not job.template.template.containers:
            raise _ApiError(
                400, "INVALID_ARGUMENT", "template.template.containers: at least one container is required"
            )
        name = f"{parts['parent']}/jobs/{job_id}"
        if name in self.jobs:
            raise _ApiError(409, "ALREADY_EXISTS", f"Resource '{job_id}' already exists.")
        job.name, job.uid, job.create_time = name, str(uuid.uuid4()), _now()
        job.terminal_condition = _cond("Ready", _SUCCEEDED)
        self.jobs[name] = job
        return _lro(self._new_operation(parts["parent"], "job", name), done=True, metadata=job, response=job)

    def _list_jobs(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        jobs = [j for n, j in sorted(self.jobs.items()) if n.startswith(parts["parent"] + "/")]
        return run_v2.ListJobsResponse.to_json(run_v2.ListJobsResponse(jobs=jobs))

    def _get_job(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        return run_v2.Job.to_json(self.jobs[self._job_name(parts)])

    def _delete_job(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        name = self._job_name(parts)
        job = self.jobs.pop(name)
        for execution in self.list_executions(name):  # a job's executions go with it
            self.executions.pop(execution)
            self.tasks.pop(execution, None)
        return _lro(self._new_operation(parts["parent"], "job", name), done=True, metadata=job, response=job)

    def _run_job(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        job = self.jobs[self._job_name(parts)]
        name = f"{job.name}/executions/{parts['job']}-{uuid.uuid4().hex[:5]}"
        count = job.template.task_count or 1
        ex = run_v2.Execution(
            name=name,
            uid=str(uuid.uuid4()),
            job=parts["job"],
            create_time=_now(),
            task_count=count,
            labels=dict(job.template.labels),
            log_uri=f"https://console.cloud.google.com/logs?e={parts['job']}",
            conditions=[
                _cond("ResourcesAvailable", _PENDING),
                _cond("Started", _PENDING),
                _cond("Completed", _PENDING),
            ],
        )
        self.executions[name] = ex
        self.tasks[name] = [
            run_v2.Task(
                name=f"{name}/tasks/{name.rsplit('/', 1)[-1]}-task{i}",
                index=i,
                execution=name,
                job=parts["job"],
            )
            for i in range(count)
        ]
        job.latest_created_execution = run_v2.ExecutionReference(name=name, create_time=ex.create_time)
        job.execution_count += 1
        return _lro(self._new_operation(parts["parent"], "execution", name), done=False, metadata=ex)

    def _get_operation(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        name = f"{parts['parent']}/operations/{parts['op']}"
        if name not in self.operations:
            raise _ApiError(404, "NOT_FOUND", f"Operation {parts['op']} does not exist.")
        kind, resource = self.operations[name]
        if kind == "job":
            job = self.jobs.get(resource) or run_v2.Job(name=resource)
            return _lro(name, done=True, metadata=job, response=job)
        ex = self.executions.get(resource) or run_v2.Execution(name=resource)
        done = bool(ex.completion_time) or resource not in self.executions
        return _lro(name, done=done, metadata=ex, response=ex if done else None)

    def _list_executions(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        # "To list all Executions across Jobs, use "-" instead of Job name." (its API reference)
        job = f"{parts['parent']}/jobs" if parts["job"] == "-" else self._job_name(parts)
        # "Results are sorted by creation time, descending." (the API reference of executions.list)
        found = sorted(
            (self.executions[n] for n in self.list_executions(job)),
            key=lambda ex: ex.create_time,
            reverse=True,
        )
        return run_v2.ListExecutionsResponse.to_json(run_v2.ListExecutionsResponse(executions=found))

    def _get_execution(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        return run_v2.Execution.to_json(self.executions[self._execution_name(parts)])

    def _delete_execution(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        name = self._execution_name(parts)
        ex = self.executions.pop(name)
        self.tasks.pop(name, None)
        return _lro(
            self._new_operation(parts["parent"], "execution", name), done=True, metadata=ex, response=ex
        )

    def _cancel_execution(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        name = self._execution_name(parts)
        ex = self.executions[name]
        if ex.completion_time and not ex.cancelled_count:
            raise _ApiError(400, "FAILED_PRECONDITION", f"Execution {parts['ex']} has already completed.")
        if not ex.completion_time:
            self._complete(ex, True, "", cancelled=True)
        return _lro(
            self._new_operation(parts["parent"], "execution", name), done=True, metadata=ex, response=ex
        )

    def _list_tasks(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        tasks = self.tasks.get(self._execution_name(parts), [])
        return run_v2.ListTasksResponse.to_json(run_v2.ListTasksResponse(tasks=tasks))

    def _list_entries(self, parts: dict[str, str], query: dict[str, list[str]], body: bytes) -> str:
        request = json.loads(body or b"{}")
        self.entry_reads.append(request)
        if self.logs_fault is not None:
            raise _ApiError(*self.logs_fault)
        projects = {
            n.removeprefix("projects/")
            for n in request.get("resourceNames") or []
            if n.startswith("projects/")
        }
        if not projects or request.get("orderBy", "timestamp asc") != "timestamp asc":
            raise _ApiError(
                400, "INVALID_ARGUMENT", "resourceNames and orderBy 'timestamp asc' are required here"
            )
        terms = _parse_filter(str(request.get("filter") or ""))
        now = time.monotonic()
        found = sorted(
            (entry for shown, entry in self.entries if shown <= now and _matches(entry, terms, projects)),
            key=lambda entry: _when(entry["timestamp"]),  # stable: one instant keeps write order
        )
        start = int(request.get("pageToken") or 0)
        size = min(int(request.get("pageSize") or 50), 1000)
        answer: dict[str, Any] = {"entries": found[start : start + size]}
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return json.dumps(answer)
