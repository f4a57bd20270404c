"""Kubernetes objects as the API reference documents them (tests/fixtures/kubernetes, each
naming its `_source`), read by the backend's status functions; and the API fake's answers
held to the `kubernetes` client's own models (its ApiClient deserializer into V1Job, V1Pod,
...), so a fake that invents a field or a shape fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fakes.kubernetes_fake import KubernetesFake
from kubernetes.client import ApiClient

from agent.backends.kubernetes.status import job_finished, outcome_from_pod, pod_started, start_problem
from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.kubernetes import KubernetesKind
from agent.infra.spec import RunContext
from agent.outcome import Reason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"
STATES = sorted(p.stem for p in FIXTURES.glob("*.json") if "pod" in json.loads(p.read_text()))


@pytest.fixture(scope="module")
def api() -> Iterator[ApiClient]:
    client = ApiClient()
    yield client
    client.close()


def invented(raw: Any, back: Any, path: str = "") -> list[str]:
    """The paths of `raw` the model dropped (fields it does not know); a null may go."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        if not isinstance(back, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in raw.items():
            if key not in back:
                found += [] if value is None or value == {} else [f"{path}.{key}"]
            else:
                found += invented(value, back[key], f"{path}.{key}")
        return found
    if isinstance(raw, list):
        if not isinstance(back, list) or len(back) != len(raw):
            return [path]
        pairs = enumerate(zip(raw, back, strict=True))
        return [p for i, (a, b) in pairs for p in invented(a, b, f"{path}[{i}]")]
    return []


def as_model(api: ApiClient, raw: Any, model: str) -> Any:
    """`raw` through the client's deserializer (required fields, types, dates checked);
    serialised back, it must hold every field that was sent."""
    parsed = api.deserialize(json.dumps(raw), model, "application/json")
    assert invented(raw, api.sanitize_for_serialization(parsed)) == [], model
    return parsed


def _load(name: str) -> dict[str, Any]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    assert fixture["_source"] and all(s.startswith("https://") for s in fixture["_source"])
    return fixture


def test_invented_catches_a_made_up_field(api: ApiClient) -> None:
    pod = _load("running")["pod"]
    pod["status"]["containerStatuses"][0]["state"]["running"]["startTime"] = "2026-12-02T10:00:04Z"
    with pytest.raises(AssertionError):
        as_model(api, pod, "V1Pod")


def test_a_missing_required_field_fails(api: ApiClient) -> None:
    pod = _load("running")["pod"]
    del pod["status"]["containerStatuses"][0]["restartCount"]
    with pytest.raises(ValueError):
        as_model(api, pod, "V1Pod")


# state -> (started, start problem, reason, exit code, words in the message, oom)
EXPECTED: dict[str, tuple[bool, str | None, Reason | None, int | None, tuple[str, ...], bool]] = {
    "waiting": (False, None, None, None, (), False),
    "pull_failure": (False, "ImagePullBackOff: Back-off pulling image", None, None, (), False),
    "provisioning_failure": (False, "Unschedulable: 0/3 nodes are available", None, None, (), False),
    "running": (True, None, None, None, (), False),
    "success": (True, None, Reason.EXITED, 0, (), False),
    "exit_1": (True, None, Reason.EXITED, 1, ("exit code 1", "BackoffLimitExceeded"), False),
    "oom": (True, None, Reason.OOM, 137, ("OOMKilled", "BackoffLimitExceeded"), True),
    "timeout": (True, None, Reason.EXITED, None, ("timed out", "DeadlineExceeded"), False),
    "cancelled": (True, None, Reason.EXITED, 143, ("exit code 143",), False),
    "evicted": (True, None, Reason.LOST, None, ("was evicted: The node was low on resource: memory",), False),
    "evicted_api": (
        True,
        None,
        Reason.LOST,
        None,
        ("EvictionByEvictionAPI", "disrupted by Kubernetes"),
        False,
    ),
    "node_shutdown": (
        True,
        None,
        Reason.LOST,
        None,
        ("imminent node shutdown", "terminated by its node"),
        False,
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(STATES) == set(EXPECTED)


@pytest.mark.parametrize("name", STATES)
def test_the_status_functions_on_the_documented_objects(api: ApiClient, name: str) -> None:
    fixture = _load(name)
    as_model(api, fixture["pod"], "V1Pod")
    as_model(api, fixture["job"], "V1Job")
    pod, job = fixture["pod"], fixture["job"]
    started, problem, reason, code, words, oom = EXPECTED[name]
    assert pod_started(pod) is started
    found = start_problem(pod)
    assert (found is None) if problem is None else (found is not None and found[0].startswith(problem))
    finished, failure = job_finished(job)
    terminal = pod["status"]["phase"] in ("Succeeded", "Failed")
    if reason is None:
        assert not finished and not terminal
        return
    outcome = outcome_from_pod(pod, failure)
    assert (outcome.reason, outcome.exit_code, outcome.oom) == (reason, code, oom), outcome
    for word in words:
        assert word in outcome.message()
    if name in ("timeout", "evicted", "evicted_api", "node_shutdown"):
        assert "OOM" not in outcome.message()  # the platform's 137/143, not the flow's memory


def test_a_timeout_without_a_pod_left_is_still_a_timeout() -> None:
    _, failure = job_finished(_load("timeout")["job"])
    outcome = outcome_from_pod(None, failure)
    assert not outcome.oom and "timed out" in outcome.message()


def test_deleted(api: ApiClient) -> None:
    fixture = _load("deleted")
    status = as_model(api, fixture["error"], "V1Status")
    assert (fixture["status"], status.code, status.reason) == (404, 404, "NotFound")


# -- the API fake answers in the client's shapes ------------------------------------------------


def _manifest() -> dict[str, Any]:
    kind = KubernetesKind()
    resolved = resolve_job_configuration(
        default_base_job_template("kubernetes"), {"image": "prefecthq/prefect:3-latest"}, None, source="test"
    )
    config = kind.config_from_pool(resolved, pool_type="kubernetes", source="test")
    context = RunContext("run-1", "run-1", labels={"prefect.io/flow-run-id": "run-1"})
    return dict(kind.build_payload(config, context)["job"])


_MODELS = {"jobs": "V1Job", "pods": "V1Pod", "events": "CoreV1Event"}
_LISTS = {"jobs": "V1JobList", "pods": "V1PodList", "events": "CoreV1EventList"}


def test_the_fakes_answers_validate_against_the_client_models(api: ApiClient) -> None:
    fake = KubernetesFake().start()
    http = requests.Session()
    http.trust_env = False
    base = f"{fake.url}/apis/batch/v1/namespaces/default/jobs"
    answers: list[tuple[Any, str]] = []
    try:
        drives = [
            lambda j: fake.waiting(j),
            lambda j: fake.unschedulable(j),
            lambda j: fake.set_pod_phase(j, "Running"),
            lambda j: fake.set_pod_phase(j, "Succeeded"),
            lambda j: fake.set_pod_phase(
                j, "Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            ),
            lambda j: fake.evict(j),
            lambda j: fake.disrupt(j, "EvictionByEvictionAPI", "Eviction API: evicting"),
            lambda j: fake.disrupt(j, "TerminationByKubelet", "node shutdown", pod_reason="Terminated"),
            lambda j: fake.deadline_exceeded(j),
            lambda j: fake.quota_exceeded(j),
        ]
        for drive in drives:
            created = http.post(base, json=_manifest())
            assert created.status_code == 201, created.text
            # Prefect's template puts completions/parallelism in the pod spec: the API drops them
            assert "completions" not in created.json()["spec"]["template"]["spec"]
            answers.append((created.json(), "V1Job"))
            name = created.json()["metadata"]["name"]
            drive(name)
            answers.append((http.get(f"{base}/{name}").json(), "V1Job"))
        for resource, path in [
            ("jobs", base),
            ("pods", f"{fake.url}/api/v1/namespaces/default/pods"),
            ("events", f"{fake.url}/api/v1/namespaces/default/events"),
        ]:
            answers.append((http.get(path).json(), _LISTS[resource]))
        gone = http.delete(f"{fake.url}/api/v1/namespaces/default/pods", params={"labelSelector": "job-name"})
        answers.append((gone.json(), "V1PodList"))
        answers.append((http.get(f"{base}/nope").json(), "V1Status"))
        history = list(fake.history)
    finally:
        http.close()
        fake.stop()
    for body, model in answers:
        as_model(api, body, model)
    for _, resource, _, _, obj in history:  # every object a watch or a GET ever showed
        as_model(api, obj, _MODELS[resource])
    waiting = [o for _, r, _, _, o in history if r == "pods" and o["status"].get("phase") == "Pending"]
    assert waiting and all(
        o["status"].get("startTime") for o in waiting if "containerStatuses" in o["status"]
    )
