"""Metrics: a run's life is counted, labels stay in their vocabularies, no secret leaks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.observe.metrics import Metrics, outcome_label

SECRET = "pnu_s3cr3t-api-key-value"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_a_runs_life_is_counted() -> None:
    m = Metrics(clock=lambda: 1_700_000_000.0)
    m.polled()
    m.claimed("etl")
    m.set_in_flight(1)
    m.set_free_slots(3)
    m.launched("process", 0.2)
    m.ended("process", "completed")
    m.claimed("etl")
    m.ended("process", "failed_to_launch")
    m.set_in_flight(0)

    assert value(m, "flow_agent_runs_claimed_total", pool="etl") == 2
    assert value(m, "flow_agent_runs_launched_total", backend="process") == 1
    assert value(m, "flow_agent_runs_ended_total", backend="process", outcome="completed") == 1
    assert value(m, "flow_agent_runs_ended_total", backend="process", outcome="failed_to_launch") == 1
    assert value(m, "flow_agent_launch_latency_seconds_count", backend="process") == 1
    assert value(m, "flow_agent_launch_latency_seconds_bucket", backend="process", le="0.25") == 1
    assert value(m, "flow_agent_launch_latency_seconds_bucket", backend="process", le="0.1") == 0
    assert value(m, "flow_agent_runs_in_flight") == 0
    assert value(m, "flow_agent_free_slots") == 3
    assert value(m, "flow_agent_last_poll_timestamp_seconds") == 1_700_000_000.0


def test_unlimited_slots_are_minus_one_and_last_poll_starts_at_zero() -> None:
    m = Metrics()
    assert value(m, "flow_agent_free_slots") == -1
    assert value(m, "flow_agent_last_poll_timestamp_seconds") == 0
    m.set_free_slots(0)
    m.set_free_slots(None)
    assert value(m, "flow_agent_free_slots") == -1


@pytest.mark.parametrize(
    ("given", "label"), [(503, "503"), ("429", "429"), ("network", "network"), (42, "other"), ("x", "other")]
)
def test_api_errors_by_status(given: int | str, label: str) -> None:
    m = Metrics()
    m.api_error(given)
    assert value(m, "flow_agent_api_errors_total", status=label) == 1


def test_labels_outside_their_vocabulary_are_other() -> None:
    m = Metrics()
    m.launched("my-own-backend", 1.0)
    m.ended("process", "exploded")
    assert value(m, "flow_agent_runs_launched_total", backend="other") == 1
    assert value(m, "flow_agent_runs_ended_total", backend="process", outcome="other") == 1


def test_a_secret_passed_anywhere_never_appears() -> None:
    m = Metrics()
    m.launched(SECRET, 1.0)
    m.ended(SECRET, SECRET)
    m.api_error(SECRET)
    m.api_error(f"401 {SECRET}")
    text = generate_latest(m.registry).decode()
    assert SECRET not in text
    assert "s3cr3t" not in text


def test_own_registry_not_the_global_one() -> None:
    a, b = Metrics(), Metrics()  # defining the metrics twice must not collide
    a.claimed("p")
    assert value(b, "flow_agent_runs_claimed_total", pool="p") is None
    assert "flow_agent_runs_claimed" not in generate_latest(REGISTRY).decode()


def test_outcome_label() -> None:
    ok = SimpleNamespace(succeeded=True, oom=False)
    oom = SimpleNamespace(succeeded=False, oom=True)
    failed = SimpleNamespace(succeeded=False, oom=False)
    assert outcome_label(ok) == "completed"
    assert outcome_label(oom) == "oom"
    assert outcome_label(failed) == "crashed"
    assert outcome_label(oom, cancelled=True) == "cancelled"


def test_backlog_and_limit_full_gauges() -> None:
    m = Metrics()
    assert value(m, "flow_agent_limit_full") == 0
    assert value(m, "flow_agent_limit_full_episodes_total") == 0
    m.set_backlog("etl", 3, 42.5)
    m.set_backlog("ml", 0, 99.0)  # nothing due: no age, whatever was passed
    assert value(m, "flow_agent_scheduled_backlog", pool="etl") == 3
    assert value(m, "flow_agent_oldest_due_run_age_seconds", pool="etl") == 42.5
    assert value(m, "flow_agent_scheduled_backlog", pool="ml") == 0
    assert value(m, "flow_agent_oldest_due_run_age_seconds", pool="ml") == 0
    m.set_limit_full(True, new_episode=True)
    m.set_limit_full(True)  # the same episode
    assert value(m, "flow_agent_limit_full") == 1
    m.set_limit_full(False)
    m.set_limit_full(True, new_episode=True)
    assert value(m, "flow_agent_limit_full_episodes_total") == 2
    m.set_backlog("", -1, -5.0)  # never negative, never an empty label
    assert value(m, "flow_agent_scheduled_backlog", pool="other") == 0
