"""Golden payloads of the process kind, from a pool and from a Prefect 2 block."""

from __future__ import annotations

from typing import Any

from support.golden import assert_golden, render_payload

from agent.infra import default_base_job_template, resolve_job_configuration
from agent.infra.process import ProcessJobConfig, ProcessKind

RUN_ID = "0c5b6a4e-1111-4222-8333-444455556666"
KIND = ProcessKind(python="/opt/venv/bin/python", base_env={"PATH": "/usr/bin:/bin", "HOME": "/home/agent"})
SECRET = "pnu_secret"


def ctx():  # type: ignore[no-untyped-def]
    from support.golden import run_context

    return run_context(
        RUN_ID,
        api_url="https://api.example/api",
        api_key=SECRET,
        labels={"prefect.io/deployment-name": "daily"},
        deployment_id="d1d2e3c4-0000-4000-8000-000000000002",
        deployment_name="daily",
        work_pool_name="local",
    )


def final(config: ProcessJobConfig) -> dict[str, Any]:
    return render_payload(KIND, config, ctx(), field="customizations", source="t")


def from_pool(deployment_vars: dict[str, Any]) -> ProcessJobConfig:
    resolved = resolve_job_configuration(
        default_base_job_template("process"), deployment_vars, None, source="work pool 'local'"
    )
    if "customizations" in deployment_vars:  # taken as given, as the job builder does
        resolved["customizations"] = deployment_vars["customizations"]
    return KIND.config_from_pool(resolved, pool_type="process", source="work pool 'local'")


PATCHES = [
    {"op": "add", "path": "/command/-", "value": "--verbose"},
    {"op": "add", "path": "/env/EXTRA", "value": "patched"},
    {"op": "remove", "path": "/env/HOME"},
]


def test_pool_default() -> None:
    payload = final(from_pool({}))
    assert payload["command"] == ["/opt/venv/bin/python", "-m", "prefect.engine"]
    assert payload["env"]["PREFECT__FLOW_RUN_ID"] == RUN_ID
    assert_golden("process", "pool-default", payload)


def test_pool_customized() -> None:
    variables = {"command": "python -m etl", "env": {"MODE": "full", "GONE": None}, "customizations": PATCHES}
    payload = final(from_pool(variables))
    assert payload["command"] == ["python", "-m", "etl", "--verbose"]
    assert "HOME" not in payload["env"] and payload["env"]["EXTRA"] == "patched"
    assert_golden("process", "pool-customized", payload)


def test_block_default() -> None:
    config = KIND.config_from_block({"type": "process", "env": {}, "labels": {}}, source="process block 'b'")
    assert_golden("process", "block-default", final(config))


def test_block_customized() -> None:
    data = {
        "command": ["python", "-m", "prefect.engine"],
        "env": {"FROM_BLOCK": "1"},
        "working_dir": "/tmp",
        "stream_output": False,
        "customizations": '[{"op": "replace", "path": "/cwd", "value": "/srv/flows"}]',
    }
    payload = final(KIND.config_from_block(data, source="process block 'b'"))
    assert payload["cwd"] == "/srv/flows" and payload["stream_output"] is False
    assert_golden("process", "block-customized", payload)
