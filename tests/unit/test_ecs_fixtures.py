"""ECS's answers as AWS documents them (tests/fixtures/ecs, each naming its sources), read
through the backend's watch platform; and moto's answers (through the wrapper in
tests/support/moto_ecs.py) held to botocore's output shapes, so a double that invents a
field or a type fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.aws_shapes import output_shape, parse_answer, shape_errors
from support.moto_ecs import OOM_REASON, MotoEcs, moto_ecs

from agent.backends.base import Handle
from agent.backends.ecs.aws import Aws, translate
from agent.backends.ecs.watch import EcsPlatform, TaskState
from agent.backends.engine import Watched
from agent.backends.sdk import SdkCalls
from agent.outcome import Reason
from agent.retry import RetryPolicy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ecs"
STATES = sorted(p.stem for p in FIXTURES.glob("*.json"))
DESCRIBE = output_shape("ecs", "DescribeTasks")


def _load(name: str) -> dict[str, Any]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    assert fixture["sources"] and all(s.startswith("https://") for s in fixture["sources"])
    return fixture


class _Recorded:
    """An ECS client that answers DescribeTasks with a recorded answer, parsed as boto3 does."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = parse_answer("ecs", "DescribeTasks", answer)

    def describe_tasks(self, **_: Any) -> dict[str, Any]:
        return self.answer


# state -> (started, reason or None while alive, exit code, words in the message, oom)
EXPECTED: dict[str, tuple[bool, Reason | None, int | None, tuple[str, ...], bool]] = {
    "waiting": (False, None, None, (), False),
    "running": (True, None, None, (), False),
    "pull_failure": (
        False,
        Reason.START_FAILED,
        None,
        ("CannotPullContainerError", "TaskFailedToStart"),
        False,
    ),
    "provisioning_failure": (False, Reason.START_FAILED, None, ("ResourceInitializationError",), False),
    "success": (True, Reason.EXITED, 0, (), False),
    "exit_1": (True, Reason.EXITED, 1, ("exit code 1", "EssentialContainerExited"), False),
    "oom": (True, Reason.OOM, 137, ("OutOfMemoryError",), True),
    "cancelled": (True, Reason.KILLED, None, ("UserInitiated",), False),
    "killed_before_start": (False, Reason.KILLED, None, ("UserInitiated",), False),
    "sidecar": (True, Reason.EXITED, 1, (), False),
    "deleted": (False, Reason.LOST, None, ("no longer knows",), False),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(STATES) == set(EXPECTED)


@pytest.mark.parametrize("state", STATES)
def test_the_fixture_is_a_describe_tasks_answer(state: str) -> None:
    assert shape_errors(_load(state)["describe_tasks"], DESCRIBE) == []


@pytest.mark.parametrize("container", ["prefect", None])
@pytest.mark.parametrize("state", STATES)
def test_the_watch_platform_on_the_documented_answer(state: str, container: str | None) -> None:
    answer = _load(state)["describe_tasks"]
    arn = "arn:aws:ecs:us-east-1:123456789012:task/default/1dc5c17a422548940a2d1f6b5ddeb3b4"
    aws = Aws("recorded", "us-east-1", _Recorded(answer), None)
    state_ = TaskState(aws, "arn:aws:ecs:us-east-1:123456789012:cluster/default", arn, container=container)
    watched = Watched(Handle("ecs", f"{state_.cluster}::{arn}", "flow-run-1111"), state_)
    platform = EcsPlatform(SdkCalls(RetryPolicy(), translate))
    started, reason, exit_code, words, oom = EXPECTED[state]
    outcome = None
    for _ in range(3):  # a task missing from three answers in a row is gone
        status = anyio.run(platform.read, [watched]).get(watched.pid)
        watched.misses = 0 if status is not None else watched.misses + 1
        outcome = platform.conclude(watched, status)
    assert watched.started is started
    if reason is None:
        assert outcome is None
        return
    assert outcome is not None and outcome.reason is reason, outcome
    assert outcome.exit_code == exit_code and outcome.oom is oom, outcome
    for word in words:
        assert word in outcome.message(), outcome.message()


def test_a_double_that_invents_a_field_fails_the_shape_check() -> None:
    answer = json.loads(json.dumps(_load("exit_1")["describe_tasks"]))
    answer["tasks"][0]["containers"][0]["oomKilled"] = True
    answer["tasks"][0]["stopCode"] = "OutOfMemory"
    answer["tasks"][0]["createdAt"] = {"when": "now"}
    errors = shape_errors(answer, DESCRIBE)
    assert any("oomKilled" in e for e in errors)
    assert any("stopCode" in e for e in errors)
    assert any("createdAt" in e for e in errors)


# -- moto's answers, through the wrapper, held to botocore's shapes ------------------------------


def _raw_answers(moto: MotoEcs) -> tuple[Any, dict[str, list[Any]]]:
    client = moto.client("ecs")
    seen: dict[str, list[Any]] = {}

    def keep(http_response: Any, model: Any, **_: Any) -> None:
        seen.setdefault(model.name, []).append(json.loads(http_response.content or b"{}"))

    client.meta.events.register("after-call.ecs.*", keep)
    return client, seen


def test_motos_answers_validate_against_botocore_output_shapes() -> None:
    moto = moto_ecs()
    moto.reset()
    client, seen = _raw_answers(moto)
    subnet = moto.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    network = {
        "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [], "assignPublicIp": "ENABLED"}
    }
    definition = {
        "family": "shapes",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "1024",
        "memory": "2048",
        "containerDefinitions": [
            {"name": "log-router", "image": "fluent-bit:3", "memory": 128, "essential": False},
            {"name": "prefect", "image": "flows:1", "memory": 512},
        ],
    }
    client.register_task_definition(**definition)
    run = {"taskDefinition": "shapes", "launchType": "FARGATE", "networkConfiguration": network}
    arns = []
    for i in range(4):
        answer = client.run_task(**run, startedBy=f"run-{i}", clientToken=f"token-{i}")
        arns.append(answer["tasks"][0]["taskArn"])
    client.run_task(**run, startedBy="run-0", clientToken="token-0")  # replayed
    moto.finish(arns[0], exit_code=1, container="prefect")
    moto.finish(arns[1], exit_code=137, reason=OOM_REASON, container="prefect")
    moto.hold_pending(arns[2], reason="CannotPullContainerError: not found")
    client.stop_task(task=arns[2], reason="stopped before it started")
    client.stop_task(task=arns[0], reason="too late: it ended")
    client.describe_tasks(tasks=[*arns, "arn:aws:ecs:us-east-1:123456789012:task/default/nothing"])
    client.list_tasks(startedBy="run-3")
    for operation, answers in seen.items():
        shape = output_shape("ecs", operation)
        for answer in answers:
            assert shape_errors(answer, shape) == [], (operation, answer)
    described = {t["taskArn"]: t for t in seen["DescribeTasks"][-1]["tasks"]}
    assert [c["name"] for c in described[arns[3]]["containers"]] == ["log-router", "prefect"]
    assert all("exitCode" not in c for c in described[arns[3]]["containers"])  # not stopped yet
    assert described[arns[0]]["stopCode"] == "EssentialContainerExited"  # the late stop changed nothing
    assert described[arns[2]]["stopCode"] == "UserInitiated"
    assert len({t.task_arn for t in moto.tasks()}) == 4  # the replayed token started nothing
