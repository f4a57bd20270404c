"""The default output sink: a workload's lines reach the flow run's logs, except the engine's
own log records (Prefect's console format), which the engine already sends itself."""

from __future__ import annotations

import contextlib
import io

from agent.backends.base import output_sink
from agent.observe.logging import configure_logging, set_log_sink


class _Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, int, str]] = []

    def add(self, run_id: str, level: int, message: str, timestamp: str) -> None:
        self.lines.append((run_id, level, message))


def test_output_ships_but_the_engines_own_records_do_not() -> None:
    sink = _Sink()
    configure_logging(level="INFO", fmt="json", secrets=["s3cr3t-value-xyz"])
    set_log_sink(sink)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            emit = output_sink("process", "run-1")
            emit("Traceback (most recent call last):")
            emit("12:00:01.123 | INFO    | Flow run 'brave-fox' - Beginning flow run")
            emit("12:00:01.200 | WARNING | prefect.engine - slow")
            emit("printed by the flow: s3cr3t-value-xyz")
    finally:
        set_log_sink(None)
    assert [m for _, _, m in sink.lines] == [
        "Traceback (most recent call last):",
        "printed by the flow: ********",
    ]
    assert {run for run, _, _ in sink.lines} == {"run-1"}


def test_a_given_sink_gets_every_line() -> None:
    seen: list[str] = []
    emit = output_sink("ecs", "run-2", seen.append)
    emit("12:00:01.123 | INFO    | Flow run 'x' - y")
    assert seen == ["12:00:01.123 | INFO    | Flow run 'x' - y"]
