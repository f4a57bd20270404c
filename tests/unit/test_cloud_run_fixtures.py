"""Cloud Run's answers as Google documents them (tests/fixtures/cloud_run, each naming its
sources), read by the backend's status reader; and the fake's answers held to the SDK's
own proto-plus models, so a fake that invents a field or a shape fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from fakes.cloud_run_fake import MEMORY_WORDS, SIGKILL_WORDS, CloudRunFake
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.rpc import code_pb2

from agent.backends.base import InfrastructureNotFound
from agent.backends.cloud_run.client import classify
from agent.backends.cloud_run.status import ended, outcome_of, sigkilled, started, waiting_message
from agent.backends.cloud_run.steps import _already_ended
from agent.backends.cloud_run.system_log import MEMORY, system_filter, system_log_of
from agent.outcome import Reason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cloud_run"
STATES = sorted(p.stem for p in FIXTURES.glob("*.json") if "execution" in json.loads(p.read_text()))


def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _read(name: str) -> tuple[run_v2.Execution, list[run_v2.Task]]:
    fixture = _load(name)
    assert fixture["sources"] and all(s.startswith("https://") for s in fixture["sources"])
    execution = run_v2.Execution.from_json(json.dumps(fixture["execution"]), ignore_unknown_fields=False)
    tasks = [run_v2.Task.from_json(json.dumps(t), ignore_unknown_fields=False) for t in fixture["tasks"]]
    return execution, tasks


# state -> (ended, started, reason, exit code, words in the message, oom)
EXPECTED: dict[str, tuple[bool, bool, Reason | None, int | None, tuple[str, ...], bool]] = {
    "waiting": (False, False, None, None, (), False),
    "running": (False, True, None, None, (), False),
    "completed_counts_lagging": (False, True, None, None, (), False),
    "pull_failure": (True, False, Reason.START_FAILED, None, ("not found",), False),
    "provisioning_failure": (True, False, Reason.START_FAILED, None, ("Quota exceeded",), False),
    "success": (True, True, Reason.EXITED, 0, (), False),
    "exit_1": (True, True, Reason.EXITED, 1, ("exit code 1", "exited with an error"), False),
    "oom": (
        True,
        True,
        Reason.OOM,
        None,
        ("signal 9", "Memory limit", "console.cloud.google.com/logs"),
        True,
    ),
    "timeout": (
        True,
        True,
        Reason.EXITED,
        None,
        ("timeout of 600 s", "configured timeout was reached"),
        False,
    ),
    "cancelled": (True, True, Reason.KILLED, None, ("cancelled by someone other",), False),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(STATES) == set(EXPECTED)
    assert {"deleted", "late_cancel"} <= {p.stem for p in FIXTURES.glob("*.json")}


@pytest.mark.parametrize("state", STATES)
def test_the_status_reader_on_the_documented_answer(state: str) -> None:
    execution, tasks = _read(state)
    is_ended, is_started, reason, exit_code, words, oom = EXPECTED[state]
    assert ended(execution) is is_ended and started(execution) is is_started
    outcome = outcome_of(execution, tasks, killed=False, timeout=600)
    if reason is None:
        assert outcome is None
        return
    assert outcome is not None and outcome.reason is reason, outcome
    assert outcome.exit_code == exit_code and outcome.oom is oom, outcome
    for word in words:
        assert word in outcome.message(), outcome.message()


def test_a_cancel_by_this_agent_is_named_and_a_raced_one_is_the_real_end() -> None:
    execution, tasks = _read("cancelled")
    outcome = outcome_of(execution, tasks, killed=True, timeout=None)
    assert outcome is not None and "cancelled by flow-agent" in outcome.message()
    execution, tasks = _read("exit_1")  # killed=True, but nothing says it was cancelled
    outcome = outcome_of(execution, tasks, killed=True, timeout=None)
    assert outcome is not None and outcome.reason is Reason.EXITED and outcome.exit_code == 1


def test_a_waiting_execution_says_why() -> None:
    execution, _ = _read("waiting")
    assert "Provisioning resources" in waiting_message(execution)


def _error(name: str, method: str) -> gexc.GoogleAPICallError:
    """The exception the REST transport raises for the fixture's answer."""
    fixture = _load(name)
    response = requests.Response()
    response.status_code = fixture["status"]
    response._content = json.dumps(fixture["error"]).encode()
    response.request = requests.Request(method, "https://run.googleapis.com/v2/x").prepare()
    return gexc.from_http_response(response)


def test_a_deleted_execution_is_not_found() -> None:
    error = _error("deleted", "GET")
    assert isinstance(error, gexc.NotFound)
    assert isinstance(classify(error, "executions.get"), InfrastructureNotFound)


def test_a_late_cancel_arrives_over_rest_as_bad_request_and_means_already_ended() -> None:
    error = _error("late_cancel", "POST")
    assert isinstance(error, gexc.BadRequest) and not isinstance(error, gexc.FailedPrecondition)
    assert _already_ended(error)
    other = requests.Response()
    other.status_code, other._content = 400, b'{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}'
    other.request = requests.Request("POST", "https://run.googleapis.com/v2/x").prepare()
    assert not _already_ended(gexc.from_http_response(other))


# -- the fake's answers, held to the SDK's models ---------------------------------------------

PARENT = "projects/demo/locations/us-central1"


def _strict(cls: Any, text: str) -> Any:
    return cls.from_json(text, ignore_unknown_fields=False)


def _error_body(answer: httpx.Response) -> None:
    error = answer.json()["error"]
    assert set(error) <= {"code", "message", "status", "details"}
    assert error["code"] == answer.status_code and isinstance(error["message"], str)
    assert code_pb2.Code.Value(error["status"]) != code_pb2.OK  # a google.rpc.Code name


def test_the_fakes_answers_validate_against_the_sdk_models() -> None:
    with CloudRunFake() as fake:
        base = f"{fake.url}/v2/{PARENT}"
        body = {"template": {"template": {"containers": [{"image": "img:1"}]}}}
        created = httpx.post(f"{base}/jobs", params={"jobId": "shapes"}, json=body)
        assert created.status_code == 200
        job = _strict(run_v2.Job, httpx.get(f"{base}/jobs/shapes").text)
        names: list[str] = []
        for _ in range(6):
            run = httpx.post(f"{base}/jobs/shapes:run").json()
            names.append(run["metadata"]["name"])
        endings = [
            lambda n: None,  # left waiting
            fake.start_execution,
            lambda n: fake.finish_execution(n, 1),
            lambda n: fake.finish_execution(n, oom=True),
            fake.time_out,
            lambda n: fake.fail_to_start(n, "Image 'img:1' not found."),
        ]
        for name, end in zip(names, endings, strict=True):
            end(name)
        httpx.post(f"{fake.url}/v2/{names[1]}:cancel").raise_for_status()
        for name in names:
            execution = _strict(run_v2.Execution, httpx.get(f"{fake.url}/v2/{name}").text)
            assert execution.name == name and execution.job == "shapes"
            tasks = _strict(run_v2.ListTasksResponse, httpx.get(f"{fake.url}/v2/{name}/tasks").text).tasks
            for task in tasks:
                attempt = task.last_attempt_result
                assert not (attempt.exit_code and attempt.term_signal)  # at most one of them
        _strict(run_v2.ListExecutionsResponse, httpx.get(f"{base}/jobs/shapes/executions").text)
        _strict(run_v2.ListJobsResponse, httpx.get(f"{base}/jobs").text)
        late = httpx.post(f"{fake.url}/v2/{names[2]}:cancel")  # ended on its own: refused
        assert late.status_code == 400 and late.json()["error"]["status"] == "FAILED_PRECONDITION"
        _error_body(late)
        missing = httpx.get(f"{base}/jobs/none")
        assert missing.status_code == 404
        _error_body(missing)
        assert job.name == f"{PARENT}/jobs/shapes"


def test_a_double_that_invents_a_field_fails_the_strict_models() -> None:
    execution = _load("running")["execution"]
    with pytest.raises(Exception, match="exitCode"):
        run_v2.Execution.from_json(json.dumps({**execution, "exitCode": 137}), ignore_unknown_fields=False)


# -- the execution's system log: the memory-limit entry that makes a SIGKILL an OOM -----------

EXECUTION = "projects/demo/locations/us-central1/jobs/flow-run-1111/executions/flow-run-1111-x7k2p"
# LogEntry's fields (https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry)
LOG_ENTRY_FIELDS = {
    "logName", "resource", "protoPayload", "textPayload", "jsonPayload", "timestamp", "receiveTimestamp",
    "severity", "insertId", "httpRequest", "labels", "operation", "trace", "spanId", "traceSampled",
    "sourceLocation", "split", "errorGroups", "apphub", "apphubDestination",
}  # fmt: skip


@pytest.mark.parametrize("name", ["system_memory", "system_sigkill"])
def test_the_recorded_system_log_and_the_filter(name: str) -> None:
    fixture = _load(name)
    assert fixture["sources"] and all(s.startswith("https://") for s in fixture["sources"])
    assert fixture["request"]["filter"] == system_filter(EXECUTION)
    for entry in fixture["response"]["entries"]:
        assert set(entry) <= LOG_ENTRY_FIELDS
        assert entry["logName"] == "projects/demo/logs/run.googleapis.com%2Fvarlog%2Fsystem"
        assert entry["resource"]["type"] == "cloud_run_job"
        assert entry["labels"]["run.googleapis.com/execution_name"] == EXECUTION.rsplit("/", 1)[1]
    _, tasks = _read("oom")
    assert system_log_of(fixture["response"]["entries"], tasks[0]).memory == fixture["memory"]


def test_the_system_log_decides_a_sigkill() -> None:
    execution, tasks = _read("oom")
    assert sigkilled(execution, tasks) is tasks[0]
    memory = system_log_of(_load("system_memory")["response"]["entries"], tasks[0])
    oom = outcome_of(execution, tasks, killed=False, timeout=600, system=memory)
    assert oom is not None and oom.reason is Reason.OOM and oom.oom, oom
    assert "Memory limit of 512 MiB exceeded with 530 MiB used" in oom.message()

    killed = system_log_of(_load("system_sigkill")["response"]["entries"], tasks[0])
    assert killed.memory == "" and killed.said == "Container terminated on signal 9."
    outcome = outcome_of(execution, tasks, killed=False, timeout=600, system=killed)
    assert outcome is not None and outcome.reason is Reason.EXITED and not outcome.oom, outcome
    assert outcome.exit_code is None and "OOM" not in outcome.message()
    assert "no memory-limit entry" in outcome.message() and "signal 9" in outcome.message()


@pytest.mark.parametrize("state", ["success", "exit_1", "timeout", "cancelled", "pull_failure", "running"])
def test_only_a_sigkill_by_the_system_asks_for_the_system_log(state: str) -> None:
    execution, tasks = _read(state)
    assert sigkilled(execution, tasks) is None


def test_an_entry_of_another_attempt_does_not_count() -> None:
    _, tasks = _read("oom")
    task = run_v2.Task.from_json(run_v2.Task.to_json(tasks[0]))
    task.retried = 1  # the last attempt is the second; the memory entry is the first's
    entries = _load("system_memory")["response"]["entries"]
    assert system_log_of(entries, task).memory == ""
    unlabelled = [{**entries[0], "labels": {}}]  # no task labels: it counts for every task
    assert system_log_of(unlabelled, task).memory == entries[0]["textPayload"]
    assert MEMORY.search("Out-of-memory event detected in container")


def test_the_fakes_system_log_has_the_recorded_shape_and_answers_the_filter() -> None:
    recorded = _load("system_memory")["response"]["entries"][0]
    with CloudRunFake() as fake:
        fake.write_system(EXECUTION, MEMORY_WORDS, "ERROR")
        fake.write_system(EXECUTION, SIGKILL_WORDS, "WARNING")
        fake.write_output(EXECUTION, "Memory limit of my own making")  # stdout: not the system's
        body = {"resourceNames": ["projects/demo"], "filter": system_filter(EXECUTION), "pageSize": 1000}
        answer = httpx.post(f"{fake.url}/v2/entries:list", json=body)
        assert answer.status_code == 200, answer.text
        entries = answer.json()["entries"]
    assert [e["textPayload"] for e in entries] == [MEMORY_WORDS, SIGKILL_WORDS]
    for entry in entries:
        assert set(entry) == set(recorded) and set(entry["labels"]) == set(recorded["labels"])
        assert set(entry["resource"]["labels"]) == set(recorded["resource"]["labels"])
        assert entry["logName"] == recorded["logName"]
    assert entries[0]["textPayload"] == recorded["textPayload"] and entries[0]["severity"] == "ERROR"
