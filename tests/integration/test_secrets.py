"""Issue 13 end to end: canary secrets planted everywhere a secret enters, none found anywhere.

Canaries: the API key and the auth string the agent runs with, a Secret block value (a
backslash, a quote, unicode and a trailing space) that a run's env references and its
process prints across the 300-character cut of "last output", a long secret given as a
wrong-typed job variable, and an AWS secret in the environment of whoever runs `render`.
Greps: the agent's stderr, the server's logs (`POST /logs/filter`), every state of both
runs, `/metrics` and `/status` of the health server, `render` as JSON and as a summary.
"""

from __future__ import annotations

import json
import random
import socket
import string
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.prefect_api import PrefectAPI, state_message, wait_for

pytestmark = pytest.mark.integration

_rng = random.Random()


def _letters(n: int = 20) -> str:
    # letters only: no 8-character window of it can be part of a uuid or a timestamp
    return "".join(_rng.choice(string.ascii_letters) for _ in range(n))


API_KEY = "pnu_" + _letters()
AUTH_USER, AUTH_PASS = "user" + _letters(12), "pass" + _letters()
BLOCK_SECRET = f'{_letters(12)}\\{_letters(10)}"é {_letters(12)} '
WRONG_TYPE = _letters(80)
AMBIENT = _letters(40)
CANARIES = {
    "api key": API_KEY,
    "auth user": AUTH_USER,
    "auth password": AUTH_PASS,
    "block secret": BLOCK_SECRET,
    "wrong-typed secret": WRONG_TYPE,
    "ambient env": AMBIENT,
}


def leaks(text: str) -> dict[str, list[str]]:
    """Canary name -> its 8-character pieces found in `text`."""
    found = {}
    for name, canary in CANARIES.items():
        pieces = [canary[i : i + 8] for i in range(len(canary) - 7) if canary[i : i + 8] in text]
        if pieces:
            found[name] = pieces[:3]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(
    api: PrefectAPI, pool: str, name: str, job_variables: dict[str, object], **fields: object
) -> str:
    body = {
        "name": f"{pool}-{name}",
        "flow_id": api.create_flow("secret-canaries"),
        "work_pool_name": pool,
        "job_variables": job_variables,
        **fields,
    }
    return str(api.request("POST", "/deployments/", json=body).json()["id"])


def _render(api: PrefectAPI, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PREFECT_API_URL": api.api_url,
        "PATH": "/usr/bin:/bin",
        "PREFECT_API_KEY": API_KEY,
        "PREFECT_API_AUTH_STRING": f"{AUTH_USER}:{AUTH_PASS}",
        "AWS_SECRET_ACCESS_KEY": AMBIENT,
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", "render", run_id, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_canary_reaches_any_output(
    api: PrefectAPI, registered: None, pool: str, start_agent, tmp_path: Path
) -> None:
    block = api.create_block_document("secret", {"value": BLOCK_SECRET})
    # a wrong-typed field: the error must not echo it, whatever its source
    wrong = api.create_block_document("process", {"stream_output": WRONG_TYPE})
    api.create_process_pool(pool)
    reference = "{{ prefect.blocks.secret." + block["name"] + " }}"
    # the secret starts at column 290 of a line: the 300-character cut falls inside it
    printer = (
        'sh -c \'printf "%0290d%s\\n" 0 "$TOKEN"; '
        "echo key $PREFECT_API_KEY auth $PREFECT_API_AUTH_STRING; exit 3'"
    )
    crashing = _deployment(api, pool, "prints", {"command": printer, "env": {"TOKEN": reference}})
    mistyped = _deployment(api, pool, "mistyped", {}, infrastructure_document_id=wrong["id"])
    runs = [api.create_flow_run(crashing)["id"], api.create_flow_run(mistyped)["id"]]

    port = _free_port()
    agent = start_agent(
        pool,
        "--health-port",
        str(port),
        env={"PREFECT_API_KEY": API_KEY, "PREFECT_API_AUTH_STRING": f"{AUTH_USER}:{AUTH_PASS}"},
    )
    finals = [api.wait_for_state(run_id, "CRASHED", timeout=90) for run_id in runs]
    assert "last output" in state_message(finals[0]), state_message(finals[0])
    assert "0000000000" in state_message(finals[0])  # the printed line is there, cut
    assert "stream_output" in state_message(finals[1])
    assert "a string of 80 characters" in state_message(finals[1])
    for run_id in runs:
        wait_for(lambda run_id=run_id: api.read_logs(run_id), 30, message="the agent's logs on the server")

    outputs = {
        "agent stderr": agent.output(),
        "server logs": json.dumps([api.read_logs(run_id) for run_id in runs], ensure_ascii=False),
        "state history": json.dumps(
            [api.request("GET", "/flow_run_states/", params={"flow_run_id": r}).json() for r in runs],
            ensure_ascii=False,
        ),
        "metrics": httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text,
        "status": httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).text,
    }
    as_json = _render(api, runs[0], "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["payload"]["env"]["TOKEN"] == "********"
    assert "AWS_SECRET_ACCESS_KEY" not in document["payload"]["env"]  # inherited: counted only
    assert document["inherited_env"]["count"] >= 1
    summary = _render(api, runs[0], "--summary", "--show-inherited")
    assert summary.returncode == 0, summary.stderr
    assert "variables from the agent's environment" in summary.stdout
    assert "  AWS_SECRET_ACCESS_KEY" in summary.stdout  # its name, never its value
    failing = _render(api, runs[1], "--json")
    assert failing.returncode == 1 and "stream_output" in failing.stderr
    assert "Traceback" not in failing.stderr
    outputs.update(
        render_json=as_json.stdout + as_json.stderr,
        render_summary=summary.stdout + summary.stderr,
        render_error=failing.stdout + failing.stderr,
    )

    found = {where: leaks(text) for where, text in outputs.items() if leaks(text)}
    assert not found, f"canaries found: {found}"
