"""Direct runs' pure parts: the infrastructure id, targets, requests as job variables, and
how an outcome becomes an exit status and one line."""

from __future__ import annotations

import pytest

from agent.direct import DirectError, InfraId, Request, Target, direct_name
from agent.direct.run import exit_status, result_of
from agent.observe.logging import REDACTOR
from agent.outcome import Outcome, Reason

ECS_PID = "arn:aws:ecs:us-east-1:1:cluster/c::arn:aws:ecs:us-east-1:1:task/c/abc"


@pytest.mark.parametrize(
    ("ref", "pid"),
    [
        ("ecs-task/nightly", ECS_PID),
        ("pool/k8s", "https://1.2.3.4:6443:jobs:direct-1a2b3c4d-x"),
        ("process/local", "host-a:4242"),
        ("cloud-run-job/j", "projects/p/locations/r/jobs/direct-1/executions/direct-1-x"),
    ],
)
def test_an_infrastructure_id_round_trips_through_its_text(ref: str, pid: str) -> None:
    ident = InfraId(Target.block(ref), "0b5c5e9e-5b0e-4a43-9a4c-2b7f9c8f0d11", pid)
    again = InfraId.parse(str(ident))
    assert (again.target.ref, again.run_id, again.pid) == (ref, ident.run_id, pid)
    assert again.target.slug == (None if ref.startswith("pool/") else ref.split("/")[0])


@pytest.mark.parametrize("text", ["", "process/x", "process/x:run-only", "nope/x:r:p"])
def test_a_bad_id_or_target_is_one_line_naming_the_fix(text: str) -> None:
    with pytest.raises(DirectError) as caught:
        InfraId.parse(text)
    assert "\n" not in str(caught.value)


def test_target_forms() -> None:
    assert Target.block("process/local").ref == "process/local"
    assert Target.block("pool/p").slug is None and str(Target.block("pool/p")) == "work pool 'p'"
    with pytest.raises(DirectError, match="TYPE/BLOCK"):
        Target.block("process")
    with pytest.raises(DirectError, match="use one of process, ecs-task"):
        Target.block("docker-container/x")


def test_a_request_is_job_variables_on_top_of_the_configuration() -> None:
    request = Request(["dbt", "run"], {"B": "2"}, "img:1", {"env": {"A": "1"}, "cpu": 2})
    assert request.variables() == {
        "env": {"A": "1", "B": "2"},
        "cpu": 2,
        "command": ["dbt", "run"],
        "image": "img:1",
    }
    assert Request().variables() == {}  # the block's own command, env and image stay
    assert "B" not in repr(request)  # env may hold secrets


def test_exit_status_is_what_a_shell_would_show() -> None:
    assert exit_status(Outcome(Reason.EXITED, 3)) == 3
    assert exit_status(Outcome(Reason.EXITED, -9)) == 137
    assert exit_status(Outcome(Reason.OOM)) == 137
    assert exit_status(Outcome(Reason.START_FAILED, detail="image pull")) == 1


def test_the_explanation_is_one_masked_line_and_empty_on_success() -> None:
    REDACTOR.add("hunter2-direct-secret")
    result = result_of(
        Outcome(Reason.EXITED, 1, detail="last output: hunter2-direct-secret"), "process/x:r:h:1"
    )
    assert "hunter2" not in result.explanation and result.explanation.startswith("exit code 1:")
    assert result_of(Outcome(Reason.EXITED, 0), "id").explanation == ""
    assert direct_name("0b5c5e9e-5b0e-4a43") == "direct-0b5c5e9e"


def test_a_block_given_in_code_hands_its_secrets_to_the_redactor_and_keeps_identifiers() -> None:
    from agent.direct.build import inline_secrets

    aws = {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "wJalr/EXAMPLEKEY",
        "region_name": "us-east-1",
    }
    assert inline_secrets("ecs-task", {"aws_credentials": aws}) == ["AKIAEXAMPLE", "wJalr/EXAMPLEKEY"]
    gcp = {"project": "acme", "service_account_info": {"project_id": "acme", "private_key": "KEYDATA-123"}}
    assert inline_secrets("cloud-run-job", {"credentials": gcp}) == ["KEYDATA-123"]
    assert inline_secrets("process", {"env": {"A": "1"}}) == []
