"""Kubernetes output (issue 16) against the pod log endpoint as the API reference documents
it (tests/fixtures/kubernetes/pod_log.json, naming its `_source`): the timestamps' order,
the errors through the client's own Status model and the backend's one classifier; and the
API double's answers held to the same record, so the fake the integration tests use
answers as documented."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fakes.kubernetes_fake import KubernetesFake
from fakes.kubernetes_logs import rfc3339nano
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from agent.backends.base import InfrastructureNotFound, LaunchError
from agent.backends.kubernetes.cluster import api_error
from agent.backends.kubernetes.output import timestamp_key
from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.kubernetes import KubernetesKind
from agent.infra.spec import RunContext

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures/kubernetes/pod_log.json").read_text())


@pytest.fixture
def fake() -> Iterator[KubernetesFake]:
    fake = KubernetesFake().start()
    yield fake
    fake.stop()


def test_the_fixture_names_its_sources() -> None:
    assert FIXTURE["_source"] and all(s.startswith("https://") for s in FIXTURE["_source"])


def test_the_recorded_lines_split_into_time_and_text_in_order() -> None:
    split = [line.partition(" ") for line in FIXTURE["log"].splitlines()]
    assert [[stamp, text] for stamp, _, text in split] == FIXTURE["lines"]
    keys = [timestamp_key(stamp) for stamp, _ in FIXTURE["lines"]]
    assert None not in keys and keys == sorted(keys)
    assert FIXTURE["lines"][2][0] > FIXTURE["lines"][3][0]  # the strings alone sort wrong
    assert keys[1] == keys[2]  # two lines may share a time: the follower counts them
    assert timestamp_key("Downloading") is None


@pytest.mark.parametrize(
    ("name", "error"), [("forbidden", LaunchError), ("not_found", InfrastructureNotFound)]
)
def test_the_errors_are_status_objects_classified_once(name: str, error: type[Exception]) -> None:
    recorded = FIXTURE["errors"][name]
    status = ApiClient().deserialize(json.dumps(recorded["body"]), "V1Status", "application/json")
    assert status.code == recorded["status"]
    exc = ApiException(status=recorded["status"], reason=status.reason)
    exc.body = json.dumps(recorded["body"])
    classified = api_error(exc, "reading the log of pod p")
    assert isinstance(classified, error) and status.reason in str(classified)


def _pod_log(fake: KubernetesFake, pod: str, **query: str) -> requests.Response:
    url = f"{fake.url}/api/v1/namespaces/default/pods/{pod}/log"
    return requests.get(url, params={"container": "prefect-job", **query}, timeout=10)


def _job(fake: KubernetesFake) -> tuple[str, str]:
    kind = KubernetesKind()
    variables = {"image": "prefecthq/prefect:3-latest"}
    resolved = resolve_job_configuration(default_base_job_template("kubernetes"), variables, None, source="t")
    config = kind.config_from_pool(resolved, pool_type="kubernetes", source="t")
    payload = kind.build_payload(config, RunContext("r", "r", labels={"prefect.io/flow-run-id": "r"}))
    code, job = fake.create_job("default", payload["job"])
    assert code == 201
    name = job["metadata"]["name"]
    return name, fake.pods_of(name)[0]["metadata"]["name"]


def _same_shape(answer: dict[str, Any], recorded: dict[str, Any]) -> None:
    assert set(answer) <= set(recorded) | {"details"} and answer["reason"] == recorded["reason"]
    assert answer["code"] == recorded["code"] and answer["kind"] == "Status"


def test_the_fakes_answers_follow_the_record(fake: KubernetesFake) -> None:
    job, pod = _job(fake)
    waiting = _pod_log(fake, pod, follow="true")
    assert (
        waiting.status_code == 400 and "is waiting to start: ContainerCreating" in waiting.json()["message"]
    )
    _same_shape(waiting.json(), FIXTURE["errors"]["waiting"]["body"])
    fake.set_pod_phase(job, "Running")
    fake.write_output(job, "one", "two", same_time=True)
    fake.set_pod_phase(job, "Succeeded")
    answer = _pod_log(fake, pod, follow="true", timestamps="true")  # ended: the whole log, then EOF
    assert answer.headers["Content-Type"].startswith("text/plain")
    lines = [line.partition(" ") for line in answer.text.splitlines()]
    assert [text for _, _, text in lines] == ["one", "two"]
    assert all(timestamp_key(stamp) for stamp, _, _ in lines) and lines[0][0] == lines[1][0]
    later = rfc3339nano(10**18 * 3)  # after every line: sinceTime keeps none
    assert _pod_log(fake, pod, sinceTime=later.split(".")[0] + "Z").text == ""
    fake.logs.forbidden = True
    _same_shape(_pod_log(fake, pod).json(), FIXTURE["errors"]["forbidden"]["body"])
    fake.logs.forbidden = False
    _same_shape(_pod_log(fake, "gone").json(), FIXTURE["errors"]["not_found"]["body"])


def test_rfc3339nano_drops_trailing_zeros_as_go_does() -> None:
    second = int(dt.datetime(2026, 12, 2, 10, 0, 4, tzinfo=dt.UTC).timestamp()) * 10**9
    assert rfc3339nano(second + 500_000_000) == "2026-12-02T10:00:04.5Z"
    assert rfc3339nano(second + 500_001_000) == "2026-12-02T10:00:04.500001Z"
    assert rfc3339nano(second) == "2026-12-02T10:00:04Z"


def test_a_failing_sink_ends_the_output_once_and_never_the_watch() -> None:
    import structlog

    from agent.backends.kubernetes.output import JobOutput

    calls: list[str] = []

    def broken(line: str) -> None:
        calls.append(line)
        raise OSError("the sink is gone")

    output = JobOutput(None, None, "default", "job-1", broken, "flow-run-1", interval=0.01)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        for text in ("first line", "second line", "third line"):
            output._emit_text(text)  # what the reader thread hands over, line by line
    assert calls == ["first line"] and output.closed
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "the output sink failed; no more output is sent"
    ]
