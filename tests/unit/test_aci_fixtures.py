"""ACI's answers as Azure documents them (tests/fixtures/aci, each naming its `_source`),
read by the backend's status reader; and the ARM fake's answers held to the SDK's own
msrest models, so a fake that invents a field or a shape fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.containerinstance.models import ContainerGroup, ContainerGroupListResult
from fakes.aci_fake import STATIC_TOKEN, AciFake

from agent.backends.aci.azure import GroupRef, to_backend_error
from agent.backends.aci.status import observe
from agent.backends.aci.watch import AciPlatform, Group, Read
from agent.backends.base import Handle, InfrastructureNotFound
from agent.backends.engine import Watched
from agent.infra.aci import AciKind
from agent.infra.spec import RunContext
from agent.outcome import Outcome, Reason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aci"
STATES = sorted(p.stem for p in FIXTURES.glob("*.json") if "group" in json.loads(p.read_text()))
SUB, RG = "00000000-0000-0000-0000-000000000001", "rg-agents"


def _load(name: str) -> dict[str, Any]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    assert fixture["_source"] and all(s.startswith("https://") for s in fixture["_source"])
    return fixture


def invented(raw: Any, back: Any, path: str = "") -> list[str]:
    """The paths of `raw` that the SDK model dropped (fields it does not know): a model
    serialised back must hold every field that was sent (a null may be left out)."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        if not isinstance(back, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in raw.items():
            if key not in back:
                found += [] if value is None else [f"{path}.{key}"]
            else:
                found += invented(value, back[key], f"{path}.{key}")
        return found
    if isinstance(raw, list):
        if not isinstance(back, list) or len(back) != len(raw):
            return [path]
        return [
            p for i, (a, b) in enumerate(zip(raw, back, strict=True)) for p in invented(a, b, f"{path}[{i}]")
        ]
    return []


def as_model(raw: dict[str, Any], model: Any = ContainerGroup) -> Any:
    """`raw` through the SDK's deserializer; an unknown field or a wrong type fails."""
    parsed = model.deserialize(raw)
    assert parsed is not None
    assert invented(raw, parsed.serialize(keep_readonly=True)) == []
    return parsed


def test_invented_catches_a_made_up_field() -> None:
    raw = _load("running")["group"]
    raw["properties"]["containers"][0]["properties"]["instanceView"]["currentState"]["startedAt"] = "x"
    with pytest.raises(AssertionError):
        as_model(raw)


# state -> (started, reason, exit code, words in the message, oom)
EXPECTED: dict[str, tuple[bool, Reason | None, int | None, tuple[str, ...], bool]] = {
    "waiting": (False, None, None, (), False),
    "pull_failure": (False, None, None, (), False),
    "provisioning_failure": (
        False,
        Reason.START_FAILED,
        None,
        ("provisioning failed", "insufficient capacity"),
        False,
    ),
    "running": (True, None, None, (), False),
    "success": (True, Reason.EXITED, 0, (), False),
    "exit_1": (True, Reason.EXITED, 1, ("exit code 1", "Azure: Error"), False),
    "oom": (True, Reason.OOM, 137, ("exit code 137", "OOM"), True),
    "oom_after_failed_create": (True, Reason.OOM, 137, ("OOM",), True),
    "cancelled": (True, Reason.LOST, None, ("Stopped",), False),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(STATES) == set(EXPECTED)


@pytest.mark.parametrize("name", STATES)
def test_the_status_reader_on_azures_answers(name: str) -> None:
    seen = observe(as_model(_load(name)["group"]))
    started, reason, code, words, oom = EXPECTED[name]
    assert seen.started is started
    if reason is None:
        assert seen.outcome is None
        return
    assert seen.outcome is not None
    assert (seen.outcome.reason, seen.outcome.exit_code, seen.outcome.oom) == (reason, code, oom)
    for word in words:
        assert word in seen.outcome.message()


def test_pull_failure_waits_with_azures_words() -> None:
    seen = observe(as_model(_load("pull_failure")["group"]))
    assert "ErrImagePull" in seen.waiting and "Failed to pull image" in seen.waiting


def _watched(failed: str | None = None) -> Watched[Group]:
    ref = GroupRef(SUB, RG, "demo1")
    return Watched(Handle("aci", ref.pid, "run"), Group(ref, None, failed=failed, start_timeout=2))


def test_a_failed_create_does_not_override_the_containers_own_end() -> None:
    platform = AciPlatform(None, interval=0.1)  # type: ignore[arg-type]
    watched = _watched(failed="(ContainerGroupProvisioningFailed) it failed")
    outcome = platform.conclude(watched, Read(as_model(_load("oom_after_failed_create")["group"])))
    assert outcome is not None and outcome.reason is Reason.OOM and outcome.exit_code == 137


def test_a_failed_create_of_a_container_that_never_ran_is_start_failed() -> None:
    platform = AciPlatform(None, interval=0.1)  # type: ignore[arg-type]
    for name in ("waiting", "provisioning_failure"):
        watched = _watched(failed="(ContainerGroupProvisioningFailed) no capacity")
        outcome = platform.conclude(watched, Read(as_model(_load(name)["group"])))
        assert outcome is not None and outcome.reason is Reason.START_FAILED
        assert "no capacity" in outcome.message()
        assert not watched.started  # Waiting with a startTime: the start deadline still counts


def test_deleted() -> None:
    fixture = _load("deleted")
    assert fixture["status"] == 404 and fixture["error"]["error"]["code"] == "ResourceNotFound"
    error = to_backend_error(ResourceNotFoundError(message=fixture["error"]["error"]["message"]), "reading")
    assert isinstance(error, InfrastructureNotFound)
    platform = AciPlatform(None, interval=0.1)  # type: ignore[arg-type]
    outcome = platform.conclude(_watched(), None)
    assert outcome == Outcome(
        Reason.LOST, detail="container group 'demo1' was deleted before the run finished"
    )


# -- the ARM fake answers in the SDK's shapes ------------------------------------------------------


def _body(name: str) -> dict[str, Any]:
    kind = AciKind()
    variables = {"image": "prefecthq/prefect:3-latest", "resource_group_name": RG, "subscription_id": SUB}
    config = kind.config_from_pool(variables, pool_type="azure-container-instance", source="test")
    payload = kind.build_payload(config, RunContext(name, name, env={"PREFECT_API_URL": "http://x"}))
    body = dict(payload["container_group"])
    body["location"] = "westeurope"
    return body


def test_the_fakes_answers_validate_against_the_sdk_models() -> None:
    answers: list[dict[str, Any]] = []
    with AciFake() as fake, requests.Session() as http:
        http.trust_env = False  # a CA bundle from the environment would replace the fake's
        http.verify, http.headers["Authorization"] = fake.ca_file, f"Bearer {STATIC_TOKEN}"
        base = f"{fake.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerInstance"
        query = {"api-version": "2023-05-01"}

        def group(name: str) -> dict[str, Any]:
            answer = http.get(f"{base}/containerGroups/{name}", params=query)
            assert answer.status_code == 200, answer.text
            return answer.json()

        for name, drive in [
            ("g-running", lambda n: None),
            ("g-waiting", lambda n: fake.stick_waiting(n, "pulling")),
            ("g-failed", lambda n: fake.fail_provisioning(n, "no capacity")),
            ("g-exit", lambda n: fake.terminate(n, 1)),
            ("g-oom", lambda n: fake.terminate(n, 137, "OOMKilled")),
            ("g-stopped", lambda n: http.post(f"{base}/containerGroups/{n}/stop", params=query)),
        ]:
            created = http.put(f"{base}/containerGroups/{name}", params=query, json=_body(name))
            assert created.status_code == 201, created.text
            answers.append(created.json())
            operation = http.get(created.headers["Azure-AsyncOperation"])
            assert operation.json()["status"] in ("InProgress", "Succeeded")
            answers.append(group(name))
            drive(name)
            answers.append(group(name))
        listed = http.get(f"{base}/containerGroups", params=query).json()
    for answer in answers:
        as_model(answer)
    parsed = as_model(listed, ContainerGroupListResult)
    assert len(parsed.value) == 6
    waiting = next(a for a in answers[::-1] if a["name"] == "g-waiting")
    state = waiting["properties"]["containers"][0]["properties"]["instanceView"]["currentState"]
    assert state["state"] == "Waiting" and state["startTime"]  # as Azure shows a waiting container
