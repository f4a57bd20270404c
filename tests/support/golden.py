"""Payload tests of the infrastructure kinds: golden files, the run context, rendering.

Goldens live in tests/golden/<kind>/<name>.json; regenerate with `UPDATE_GOLDEN=1 pytest
tests/unit` and review the diff before committing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.infra.patch import apply_customizations
from agent.infra.spec import RunContext

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def assert_golden(kind: str, name: str, payload: Any) -> None:
    """Compare `payload` as JSON with tests/golden/<kind>/<name>.json; UPDATE_GOLDEN=1 (re)writes it."""
    path = GOLDEN / kind / f"{name}.json"
    text = json.dumps(payload, indent=2) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs; UPDATE_GOLDEN=1 and review the diff"


def run_context(
    run_id: str,
    *,
    api_url: str,
    api_key: str,
    labels: Mapping[str, str],
    flow_run_name: str = "crimson-fox",
    **fields: Any,
) -> RunContext:
    """The run a payload is built for, with the environment the agent gives every run
    (`PREFECT_API_URL`, `PREFECT__FLOW_RUN_ID`, `PREFECT_API_KEY`) and the flow-run-id label
    before `labels`."""
    return RunContext(
        flow_run_id=run_id,
        flow_run_name=flow_run_name,
        env={"PREFECT_API_URL": api_url, "PREFECT__FLOW_RUN_ID": run_id, "PREFECT_API_KEY": api_key},
        labels={"prefect.io/flow-run-id": run_id, **labels},
        **fields,
    )


def render_payload(kind: Any, config: Any, ctx: RunContext, *, field: str, source: str) -> dict[str, Any]:
    """What the backend would send: the payload (JSON-serialisable or this raises), then the
    customizations."""
    payload = kind.build_payload(config, ctx)
    json.dumps(payload)
    result: dict[str, Any] = apply_customizations(
        payload, kind.customizations(config), field=field, source=source
    )
    return result
