"""Pure parts of orchestration: durations, start times, KEY=VALUE, filters, exit codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.api.models import StateType
from agent.cli.runs import ui_url
from agent.orchestrate import (
    RunFilter,
    RunInfo,
    exit_code_for,
    parse_assignments,
    parse_duration,
    parse_start,
)
from agent.orchestrate.batch import CANCELLABLE, chunked, split_states

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5h", 5 * 3600),
        ("90s", 90),
        ("5m", 300),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        ("1h30m", 5400),
        ("1H 30M", 5400),
        ("1.5h", 5400),
        ("300", 300),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "h5", "5h garbage", "-5", "5h-3m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_start_in_a_duration() -> None:
    assert parse_start(in_="5h", now=NOW) == NOW + timedelta(hours=5)


def test_start_now_when_nothing_given() -> None:
    assert parse_start(now=NOW) is None


def test_start_at_an_iso_time() -> None:
    assert parse_start(at="2031-05-06T07:08:09+00:00", now=NOW) == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert parse_start(at="2031-05-06T07:08:09Z", now=NOW) == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_start_at_a_naive_time_is_local() -> None:
    naive = datetime(2031, 5, 6, 7, 8)
    assert parse_start(at="2031-05-06 07:08", now=NOW) == naive.astimezone(UTC)


def test_start_at_a_clock_time_is_the_next_one() -> None:
    local_now = NOW.astimezone()
    later = (local_now + timedelta(minutes=10)).strftime("%H:%M")
    earlier = (local_now - timedelta(minutes=10)).strftime("%H:%M")
    soon = parse_start(at=later, now=NOW)
    tomorrow = parse_start(at=earlier, now=NOW)
    assert soon is not None and tomorrow is not None
    assert timedelta(0) < soon - NOW <= timedelta(minutes=10)
    assert timedelta(hours=23) < tomorrow - NOW < timedelta(hours=24)


def test_start_rejects_both_and_garbage() -> None:
    with pytest.raises(ValueError, match="either"):
        parse_start(at="12:00", in_="5h")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_start(at="next tuesday")


def test_assignments_parse_json_values_else_strings() -> None:
    parsed = parse_assignments(
        [
            "n=5",
            "name=ada",
            "xs=[1, 2]",
            'quoted="5"',
            "flag=true",
            "empty=",
            "eq=a=b",
            "env.FOO=bar",
            'obj={"a": 1}',
        ]
    )
    assert parsed == {
        "n": 5,
        "name": "ada",
        "xs": [1, 2],
        "quoted": "5",
        "flag": True,
        "empty": "",
        "eq": "a=b",
        "env.FOO": "bar",
        "obj": {"a": 1},
    }


@pytest.mark.parametrize("item", ["novalue", "=5", ""])
def test_assignments_reject_missing_key_or_equals(item: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments([item], what="--param")


def test_split_states_types_and_names() -> None:
    assert split_states(["failed", "Late", "crashed,COMPLETED", "awaitingRetry", "late"]) == (
        ["FAILED", "CRASHED", "COMPLETED"],
        ["Late", "awaitingRetry"],
    )


def test_filter_body_every_criterion() -> None:
    flt = RunFilter(
        states=("COMPLETED", "Late"),
        deployments=("etl/nightly",),
        flows=("etl",),
        tags=("a", "b"),
        pools=("gpu",),
        older_than=timedelta(days=7),
        newer_than=timedelta(days=30),
    )
    body = flt.body(deployment_ids=["d1"], now=NOW)
    assert body == {
        "flow_runs": {
            "state": {"operator": "or_", "type": {"any_": ["COMPLETED"]}, "name": {"any_": ["Late"]}},
            "deployment_id": {"any_": ["d1"]},
            "tags": {"all_": ["a", "b"]},
            "expected_start_time": {
                "before_": (NOW - timedelta(days=7)).isoformat(),
                "after_": (NOW - timedelta(days=30)).isoformat(),
            },
        },
        "flows": {"name": {"any_": ["etl"]}},
        "work_pools": {"name": {"any_": ["gpu"]}},
    }
    assert not flt.is_empty
    assert RunFilter().is_empty
    assert RunFilter().body(now=NOW) == {"flow_runs": {}}


def test_cancel_restricts_states_to_unfinished_ones() -> None:
    allowed = [t.value for t in CANCELLABLE]
    assert RunFilter().state_criteria(CANCELLABLE) == {"type": {"any_": allowed}}
    assert RunFilter(states=("RUNNING", "COMPLETED")).state_criteria(CANCELLABLE) == {
        "type": {"any_": ["RUNNING"]}
    }
    # only finished types asked for: matches nothing, never everything
    assert RunFilter(states=("COMPLETED",)).state_criteria(CANCELLABLE) == {"type": {"any_": ["__none__"]}}
    assert RunFilter(states=("Late",)).state_criteria(CANCELLABLE) == {
        "operator": "and_",
        "type": {"any_": allowed},
        "name": {"any_": ["Late"]},
    }


def test_chunks_of_fifty() -> None:
    ids = [str(i) for i in range(120)]
    chunks = chunked(ids)
    assert [len(c) for c in chunks] == [50, 50, 20]
    assert sum(chunks, []) == ids


@pytest.mark.parametrize(
    ("state", "code"),
    [("COMPLETED", 0), ("FAILED", 1), ("CRASHED", 1), ("CANCELLED", 2), ("RUNNING", 3), ("SCHEDULED", 3)],
)
def test_exit_codes(state: str, code: int) -> None:
    run = RunInfo.model_validate({"id": "r", "state": {"type": state}})
    assert exit_code_for(run) == code
    assert run.is_final is StateType(state).is_terminal


def test_ui_url() -> None:
    assert ui_url("http://127.0.0.1:4200/api", "r1") == "http://127.0.0.1:4200/runs/flow-run/r1"
    assert (
        ui_url("https://api.prefect.cloud/api/accounts/a1/workspaces/w1", "r1")
        == "https://app.prefect.cloud/account/a1/workspace/w1/runs/flow-run/r1"
    )
