"""ECS output (issue 16) against CloudWatch Logs' documented answers
(tests/fixtures/ecs/logs, naming its sources), parsed by botocore as boto3 does: the token
walk (startFromHead, then each nextForwardToken, until the same token comes back), the
errors' classification, where a container's stream is; and moto's GetLogEvents answers
held to botocore's output shape, so the double the integration tests use cannot invent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import botocore.exceptions
import pytest
import structlog
from botocore.parsers import create_parser
from support.aws_shapes import output_shape, parse_answer, shape_errors
from support.moto_ecs import moto_ecs

from agent.backends.base import InfrastructureNotFound, LaunchError
from agent.backends.ecs.aws import translate
from agent.backends.ecs.output import LogSource, TaskOutput, log_source
from agent.backends.sdk import SdkCalls
from agent.retry import RetryPolicy

FIXTURE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "ecs" / "logs" / "get_log_events.json").read_text()
)
SHAPE = output_shape("logs", "GetLogEvents")
TASK = "arn:aws:ecs:us-east-1:123456789012:task/default/1dc5c17a422548940a2d1f6b5ddeb3b4"
TD_ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/prefect:3"
AWSLOGS = {
    "logDriver": "awslogs",
    "options": {"awslogs-group": "prefect", "awslogs-stream-prefix": "prefect-logs_pool_dep"},
}


def _error(name: str) -> botocore.exceptions.ClientError:
    """The recorded error as botocore raises it (its JSON protocol parser)."""
    recorded = FIXTURE["errors"][name]
    model = botocore.session.get_session().get_service_model("logs")
    raw = {"body": json.dumps(recorded["body"]).encode(), "headers": {}, "status_code": recorded["status"]}
    parsed = create_parser(model.metadata["protocol"]).parse(raw, SHAPE)
    return botocore.exceptions.ClientError(parsed, "GetLogEvents")


class _Recorded:
    """An AWS stand-in whose logs client answers the recorded pages in order (or raises)."""

    region = "us-east-1"

    def __init__(self, error: str | None = None) -> None:
        self.pages = [parse_answer("logs", "GetLogEvents", p) for p in FIXTURE["pages"]]
        self.requests: list[dict[str, Any]] = []
        self.error = error
        self.ecs = self

    def describe_task_definition(self, taskDefinition: str) -> dict[str, Any]:
        container = {"name": "prefect", "image": "flows:1", "logConfiguration": AWSLOGS}
        return {"taskDefinition": {"taskDefinitionArn": taskDefinition, "containerDefinitions": [container]}}

    def logs(self, region: str | None = None) -> Any:
        return self

    def get_log_events(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        if self.error:
            raise _error(self.error)
        return self.pages[min(len(self.requests), len(self.pages)) - 1]


def _output(lines: list[str], emit: Any = None) -> TaskOutput:
    sdk = SdkCalls(RetryPolicy(initial=0.01, maximum=0.01, budget=0.1), translate)
    output = TaskOutput(sdk, {}, emit or lines.append, "flow-run-1", interval=0.01)
    output.task_definition_arn = TD_ARN
    return output


def test_the_fixture_pages_are_get_log_events_answers() -> None:
    for page in FIXTURE["pages"]:
        assert shape_errors(page, SHAPE) == []


def test_the_token_walk_reads_every_event_once_in_order() -> None:
    aws, lines = _Recorded(), []
    output = _output(lines)
    anyio.run(output.drain, aws, "prefect", TASK)
    assert lines == [
        "Downloading flow code from storage",
        "Running flow 'etl'",
        "Traceback (most recent call last):",
        '  File "flow.py", line 3',
        "ValueError: bad row",
    ]
    first, second, third = aws.requests
    stream = FIXTURE["log_stream"].rsplit("/", 1)[0] + "/" + TASK.rsplit("/", 1)[-1]
    assert first == {"logGroupName": "prefect", "logStreamName": stream, "startFromHead": True}
    assert second["nextToken"] == FIXTURE["pages"][0]["nextForwardToken"] and "startFromHead" not in second
    assert third["nextToken"] == FIXTURE["pages"][1]["nextForwardToken"]
    assert output.closed  # drained: the follower reads no more


def test_errors_are_classified_at_the_boundary() -> None:
    assert isinstance(translate(_error("stream_not_made_yet"), "reading"), InfrastructureNotFound)
    denied = translate(_error("denied"), "reading")
    assert isinstance(denied, LaunchError) and "AccessDeniedException" in str(denied)


def test_a_stream_not_made_yet_is_no_output_yet_and_no_warning() -> None:
    aws, lines = _Recorded("stream_not_made_yet"), []
    output = _output(lines)
    with structlog.testing.capture_logs() as logs:
        anyio.run(output.follow, aws, "prefect", TASK, lambda: len(aws.requests) < 3)
    assert lines == [] and not output.closed and len(aws.requests) == 3
    assert [e for e in logs if e["log_level"] == "warning"] == []


def test_a_denied_read_is_said_once_with_its_fix_and_reading_stops() -> None:
    aws, lines = _Recorded("denied"), []
    output = _output(lines)
    with structlog.testing.capture_logs() as logs:
        anyio.run(output.follow, aws, "prefect", TASK, lambda: len(aws.requests) < 5)
        anyio.run(output.drain, aws, "prefect", TASK)
    assert len(aws.requests) == 1 and output.closed
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert (
        "output is unavailable" in warning["event"]
        and "logs:GetLogEvents on log group 'prefect'" in warning["event"]
    )
    assert warning["flow_run_id"] == "flow-run-1" and warning["ship"] is True


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        (
            {"name": "prefect", "logConfiguration": AWSLOGS},
            "prefect-logs_pool_dep/prefect/1dc5c17a422548940a2d1f6b5ddeb3b4",
        ),
        ({"name": "prefect"}, "log driver: none"),
        ({"name": "prefect", "logConfiguration": {"logDriver": "awsfirelens"}}, "log driver: awsfirelens"),
        (
            {
                "name": "prefect",
                "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g"}},
            },
            "awslogs-stream-prefix",
        ),
    ],
)
def test_where_the_flow_container_writes(container: dict[str, Any], expected: str) -> None:
    sidecar = {"name": "log-router", "logConfiguration": {"logDriver": "awslogs", "options": {}}}
    found = log_source({"containerDefinitions": [sidecar, container]}, None, TASK, "eu-west-1")
    if isinstance(found, LogSource):
        assert (found.group, found.stream, found.region) == ("prefect", expected, "eu-west-1")
    else:
        assert expected in found and "configure_cloudwatch_logs" in found


def test_motos_get_log_events_answers_validate_against_botocore() -> None:
    moto = moto_ecs()
    logs = moto.client("logs")
    seen: list[Any] = []
    logs.meta.events.register(
        "after-call.logs.GetLogEvents",
        lambda http_response, **_: seen.append(json.loads(http_response.content)),
    )
    logs.create_log_group(logGroupName="shapes")
    logs.create_log_stream(logGroupName="shapes", logStreamName="p/prefect/t")
    events = [{"timestamp": 1796270400000 + i, "message": f"line {i}"} for i in range(3)]
    logs.put_log_events(logGroupName="shapes", logStreamName="p/prefect/t", logEvents=events)
    page = logs.get_log_events(
        logGroupName="shapes", logStreamName="p/prefect/t", startFromHead=True, limit=2
    )
    page = logs.get_log_events(
        logGroupName="shapes", logStreamName="p/prefect/t", nextToken=page["nextForwardToken"]
    )
    end = logs.get_log_events(
        logGroupName="shapes", logStreamName="p/prefect/t", nextToken=page["nextForwardToken"]
    )
    assert end["events"] == [] and end["nextForwardToken"] == page["nextForwardToken"]  # as documented
    for answer in seen:
        assert shape_errors(answer, SHAPE) == [], answer


def test_a_failing_sink_ends_the_output_once_and_never_the_watch() -> None:
    aws, calls = _Recorded(), []

    def broken(line: str) -> None:
        calls.append(line)
        raise OSError("the sink is gone")

    output = _output([], broken)
    with structlog.testing.capture_logs() as logs:
        anyio.run(output.drain, aws, "prefect", TASK)  # raises nothing
    assert calls == ["Downloading flow code from storage"] and output.closed
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "the output sink failed; no more output is sent"
    ]
