"""Issue 13: the masking pipeline, property-tested through every formatter the agent uses.

A secret of any length and content (whitespace at either end, backslashes, quotes,
unicode, newlines, up to 10k characters) goes through the crash "last output" with its
cut (the live pump and the supervisor's record), validation errors, JSON log lines, the
shipped log batch, the state message and `render` (JSON and summary). No substring of
the secret of 8 or more characters may survive, except words the output holds anyway
(its fixed text, measured by formatting the same thing without the secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.api.models import SetStateStatus
from agent.backends.base import output_sink
from agent.backends.process import shim
from agent.backends.process.backend import ProcessBackend
from agent.backends.process.records import Record, recorded_outcome
from agent.cli.render import masked_document, summary
from agent.infra.fields import describe
from agent.infra.process import process_config
from agent.infra.references import secret_values
from agent.infra.templating import InfraError
from agent.observe.logging import REDACTOR, Redactor, configure_logging, get_logger, set_log_sink
from agent.observe.metrics import Metrics
from agent.observe.shipper import LogShipper
from agent.runtime.runner import Runner

MASK = "********"
WINDOW = 8

_tricky = st.sampled_from(
    [" ", "  ", "\t", "\\", "\\\\", "'", '"', "é", "☃", "\u2028", "\n", "\r\n", "|", "\x00"]
)
_chunk = st.one_of(st.text(min_size=1, max_size=40), _tricky)
secrets = st.one_of(
    st.text(max_size=200),
    st.lists(_chunk, min_size=1, max_size=40).map("".join),
    st.builds(lambda a, n, b: a + "k" * n + b, _chunk, st.integers(0, 10_000), _chunk),
)
positions = st.integers(0, 400)

PROPERTY = settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def survivors(secret: str, output: str, baseline: str) -> set[str]:
    """8-character pieces of `secret` in `output` that the output does not hold anyway
    (whitespace alone reveals nothing: a blank line of a secret is not masked)."""
    windows = {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}
    return {w for w in windows if w.strip() and w in output and w not in baseline}


def check(secret: str, formatter: Any) -> None:
    """Run `formatter` without, then with, the secret known to the agent; nothing survives."""
    assume("*" not in secret)  # the mask itself is made of stars
    REDACTOR.__init__()  # the process-wide redactor, empty
    baseline = formatter("") + MASK
    REDACTOR.__init__([secret])
    try:
        output = formatter(secret)
    finally:
        REDACTOR.__init__()
    found = survivors(secret, output, baseline)
    assert not found, f"leaked {sorted(found)[:3]!r}"


# -- the crash "last output" ----------------------------------------------------------------------


def _pumped(output: bytes) -> list[str]:
    async def pump() -> list[str]:
        reader = asyncio.StreamReader(limit=1 << 20)
        reader.feed_data(output)
        reader.feed_eof()
        tail: Any = __import__("collections").deque(maxlen=5)
        await ProcessBackend._pump(reader, tail, output_sink("process", "run-1"), "run-1")
        return list(tail)

    with contextlib.redirect_stderr(io.StringIO()):
        return asyncio.run(pump())


@PROPERTY
@given(secret=secrets, before=positions)
def test_crash_last_output_with_its_cut(secret: str, before: int) -> None:
    def formatter(value: str) -> str:
        printed = ("x" * before + value + " and more\n").encode()
        tail = _pumped(b"starting\n" + printed + b"failing now\n")
        return REDACTOR.clip("last output: " + " | ".join(tail), 2000)

    check(secret, formatter)


@PROPERTY
@given(secret=secrets, before=st.integers(0, 5000))
def test_supervisor_tail_read_by_a_later_agent(secret: str, before: int) -> None:
    def formatter(value: str) -> str:
        raw = ("y" * before + value + " \nfailing now\n").encode()
        lines = shim._lines(raw[-shim._TAIL_BYTES :])
        record = Record("run-1", "host", 42, 1.0, marker="m", exit=3, tail=tuple(lines))
        return recorded_outcome(record, 42, "host").message()

    check(secret, formatter)


# -- validation errors ----------------------------------------------------------------------------


@PROPERTY
@given(secret=secrets)
def test_validation_errors_never_echo_a_value(secret: str) -> None:
    def formatter(value: str) -> str:
        texts = [describe(value, False), describe(value, True)]
        # "?" so that no value is one of the words true/false
        for config in ({"stream_output": f"{value}?"}, {"env": {"TOKEN": {"v": value}}}, {"name": [value]}):
            with pytest.raises(InfraError) as info:
                process_config(config, source="deployment 'etl/daily'")
            texts.append(str(info.value))
        return "\n".join(texts)

    # not registered with the redactor: the error itself must not carry the value
    assume("*" not in secret)
    output, baseline = formatter(secret), formatter("") + MASK
    assert not survivors(secret, output, baseline)


def test_validation_error_names_field_type_and_fix() -> None:
    with pytest.raises(InfraError) as info:
        process_config({"stream_output": "s3cr3t-" * 20}, source="deployment 'etl/daily'")
    assert str(info.value) == (
        "job variable 'stream_output' from deployment 'etl/daily' must be a boolean "
        "(got a string of 140 characters); set it to true or false"
    )


# -- log lines, local and shipped -----------------------------------------------------------------


class _Api:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    async def create_logs(self, entries: list[dict[str, Any]]) -> None:
        self.batches.append(entries)


@PROPERTY
@given(secret=secrets)
def test_json_log_lines_and_the_shipped_batch(secret: str) -> None:
    def formatter(value: str) -> str:
        api = _Api()
        shipper = LogShipper(api)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            configure_logging(level="INFO", fmt="json", sink=shipper)
            log = get_logger("agent.test", flow_run_id="run-1")
            log.info(f"output {value}", stream="output", ship=True)
            log.warning("resolved", value=value, quoted=repr(value), nested={"k": [value]}, ship=True)
            try:
                raise RuntimeError(f"failed with {value!r}")
            except RuntimeError:
                log.exception("launch failed", ship=True)
            shipper.add("run-1", logging.INFO, f"direct {value}", "now")
            anyio.run(shipper.flush)
        set_log_sink(None)
        # the clock is not part of what is checked (it differs from the baseline's)
        return re.sub(r'"timestamp": "[^"]*"', "", stderr.getvalue() + json.dumps(api.batches))

    check(secret, formatter)


# -- the state message ----------------------------------------------------------------------------


class _StateApi:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def set_state(self, run_id: str, state: Any, *, message: str, **_: Any) -> Any:
        self.messages.append(message)
        return type("Result", (), {"status": SetStateStatus.ACCEPT})()


@PROPERTY
@given(secret=secrets, before=st.integers(0, 2100))
def test_state_message(secret: str, before: int) -> None:
    def formatter(value: str) -> str:
        api = _StateApi()
        runner = Runner(api, {}, None, None, None, kill_grace=1, metrics=Metrics())  # type: ignore[arg-type]
        anyio.run(runner._crash, "run-1", "z" * before + f"last output: {value} | done")
        return "\n".join(api.messages)

    check(secret, formatter)


# -- render ---------------------------------------------------------------------------------------


@PROPERTY
@given(secret=secrets)
def test_render_json_and_summary(secret: str) -> None:
    def formatter(value: str) -> str:
        redactor = Redactor([value])
        document = {
            "flow_run_id": None,
            "deployment": "daily",
            "work_pool": "pool",
            "kind": "process",
            "source": "work pool 'pool'",
            "payload": {"command": ["run", f"--token={value}"], "env": {"TOKEN": value, "Q": repr(value)}},
            "inherited_env": {"count": 3},
        }
        masked = masked_document(document, redactor)
        return json.dumps(masked, indent=2, sort_keys=True) + summary(masked)

    check(secret, formatter)


# -- precise masks --------------------------------------------------------------------------------


def test_a_whole_auth_string_never_shows_its_user() -> None:
    redactor = Redactor(["admin:hunter2-long", "hunter2-long"])
    assert redactor.mask_text('"secureValue": "admin:hunter2-long"') == '"secureValue": "********"'


def test_escaped_and_stripped_forms_are_masked() -> None:
    secret = ' back\\slash "quoted" é '
    redactor = Redactor([secret])
    for form in (
        secret,
        repr(secret),
        json.dumps(secret),
        json.dumps(secret, ensure_ascii=False),
        secret.strip(),
    ):
        assert "slash" not in redactor.mask_text(f"x {form} y")


def test_mask_then_cut() -> None:
    redactor = Redactor(["abcdefghijklmnop"])
    assert redactor.clip("x" * 10 + "abcdefghijklmnop", 14) == "x" * 10 + "****"


def test_a_service_account_keeps_its_project_readable() -> None:
    key = {
        "type": "service_account",
        "project_id": "my-project-123",
        "private_key": "-----BEGIN-----\nMIIEabc\n",
    }
    document = {
        "data": {"service_account_info": key},
        "block_type": {"slug": "gcp-credentials"},
        "block_schema": {"fields": {"secret_fields": ["service_account_info.*"]}},
    }
    found = secret_values(document)
    assert key["private_key"] in found and "my-project-123" not in found
    redactor = Redactor(found)
    assert redactor.mask_text("namespaces/my-project-123") == "namespaces/my-project-123"


def test_a_blank_line_of_a_secret_masks_no_indentation() -> None:
    redactor = Redactor(["-----BEGIN KEY-----\n        \nMIIEabcdef\n-----END KEY-----"])
    assert redactor.mask_text("        indented") == "        indented"
    assert redactor.mask_text("x MIIEabcdef y") == "x ******** y"
