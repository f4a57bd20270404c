"""Both sides of one flow run: the request Prefect's own worker builds, and flow-agent's payload.

One real Prefect server (the session's) holds the pool, the deployment, the run, the blocks
and the variables, made with Prefect's own client, so both sides read the same objects:

* Prefect: `<Worker>.job_configuration.resolve_for_flow_run` (which is
  `from_template_and_values` + `prepare_for_flow_run`), then the worker's own request
  builder (`ECSWorker._prepare_task_definition` / `_prepare_task_run_request`, the
  Kubernetes manifest, Cloud Run v2's `job_body` and `job_name`, ACI's ARM template). Only
  the cloud boundary is stubbed: ECS's EC2 look-ups of the VPC's subnets, and the ARM
  engine's evaluation of `[parameters('...')]` (done here, literally).
* flow-agent: `JobBuilder.build`, the code path of the runner and of `render`.

`compare` then walks both payloads; a difference fails the test with both sides shown,
unless its path is in the case's list of allowed launch-time differences (each with why).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import PrefectClient as PrefectOwnClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import get_current_settings

from agent.api import PrefectClient
from agent.infra.kinds import Kinds
from agent.runtime.jobs import JobBuilder

WORKER_NAME = "fidelity-worker"
FLOW_NAME = "My Flow_Name! über"
REGION = "us-east-1"
# the settings the Prefect side runs with, and what flow-agent is given as its Prefect env
# (the API URL stays in: flow-agent puts its own server's URL in the same place)
SETTINGS_ENV_SKIP = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")


# a secret placed into job env through `{{ prefect.blocks.secret.* }}` on both sides
SECRET_VALUE = "s3cr3t-fidelity-value"
# job env made of references: a Secret block's value and a Prefect variable (conftest's world)
REFERENCED_ENV = {
    "DB_PASSWORD": "{{ prefect.blocks.secret.fid-secret }}",
    "TEAM": "{{ prefect.variables.fid_team }}",
}


@dataclass
class Case:
    """One realistic set of job variables for one pool type."""

    id: str
    deployment_vars: dict[str, Any] = field(default_factory=dict)
    run_vars: dict[str, Any] = field(default_factory=dict)
    # edits to Prefect's default base job template (path, value), for customized pools
    template_edits: list[tuple[tuple[str | int, ...], Any]] = field(default_factory=list)
    # path patterns (dotted, fnmatch) -> why they may differ at launch
    allowed: dict[str, str] = field(default_factory=dict)


@dataclass
class Sides:
    prefect: dict[str, Any]
    agent: dict[str, Any]
    flow_run_id: str
    config: Any  # Prefect's prepared job configuration


@dataclass
class World:
    """What the cases may reference: block documents and variables made on the server."""

    url: str
    blocks: dict[str, str] = field(default_factory=dict)  # name -> block document id


def with_blocks(case: Case, world: World) -> Case:
    """The case with "{block-name}" replaced by that block document's id."""
    text = repr((case.deployment_vars, case.run_vars, case.template_edits))
    for name, ident in world.blocks.items():
        text = text.replace("{" + name + "}", ident)
    deployment_vars, run_vars, edits = eval(text)  # noqa: S307 - our own repr of plain data
    return Case(case.id, deployment_vars, run_vars, edits, case.allowed)


def block_ref(name: str) -> dict[str, Any]:
    """A pool variable's default pointing at a block document, as the Prefect UI saves it."""
    return {"$ref": {"block_document_id": "{" + name + "}"}}


def default_template(worker: type) -> dict[str, Any]:
    template: dict[str, Any] = worker.get_default_base_job_template()
    return template


def edited(template: dict[str, Any], edits: list[tuple[tuple[str | int, ...], Any]]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    for path, value in edits:
        node: Any = template
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return template


async def both_sides(
    world: World, worker: type, pool_type: str, case: Case, finish: Any, *, base_env: Mapping[str, str] = {}
) -> Sides:
    """Create pool, deployment and run on the server; build both sides' payloads."""
    case = with_blocks(case, world)
    suffix = uuid.uuid4().hex[:8]
    async with PrefectOwnClient(api=world.url) as client:
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        template = edited(default_template(worker), case.template_edits)
        pool = await client.create_work_pool(
            WorkPoolCreate(name=f"fid-{pool_type}-{suffix}", type=pool_type, base_job_template=template)
        )
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"nightly etl {suffix}",
            work_pool_name=pool.name,
            job_variables=copy.deepcopy(case.deployment_vars),
            entrypoint="flows.py:etl",
        )
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, job_variables=copy.deepcopy(case.run_vars)
        )
        deployment = await client.read_deployment(deployment_id)
        pool = await client.read_work_pool(pool.name)
        config = await worker.job_configuration.resolve_for_flow_run(
            flow_run, client=client, work_pool=pool, worker_name=WORKER_NAME, deployment=deployment
        )
        flow = await client.read_flow(flow_id)
        prefect_payload = await finish(config, flow_run=flow_run, flow=flow, pool=pool, client=client)
    settings_env = get_current_settings().to_environment_variables(exclude_unset=True)
    # the world's settings reach the Prefect side: the pass-through is really compared
    assert settings_env.get("PREFECT_LOGGING_LEVEL") == "DEBUG", settings_env
    prefect_env = {k: v for k, v in settings_env.items() if k not in SETTINGS_ENV_SKIP}
    async with PrefectClient(world.url) as api:
        builder = JobBuilder(
            api,
            Kinds(python=sys.executable, base_env=base_env),
            api_url=world.url,
            api_key=None,
            auth_string=None,
            environ={},
            worker_name=WORKER_NAME,
            on_secret=lambda _value: None,
            prefect_env=prefect_env,
        )
        run = await api.read_flow_run(str(flow_run.id))
        agent_pool = await api.read_work_pool(pool.name)
        agent_deployment = await api.read_deployment(str(deployment_id))
        job = await builder.build(run, agent_pool, agent_deployment)
    agent_payload = json.loads(json.dumps(job.payload))
    for side in (agent_payload, prefect_payload):  # equal but unresolved would prove nothing
        assert "{{ prefect." not in json.dumps(side, default=str), side
    return Sides(prefect_payload, agent_payload, str(flow_run.id), config)


# ---------------------------------------------------------------- comparison


_VALUE_KEYS = ("value", "secureValue", "valueFrom", "valueSource")


def _env_entries(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, Mapping) and "name" in e and any(k in e for k in _VALUE_KEYS) for e in value
    )


def _walk(left: Any, right: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if _env_entries(left) and _env_entries(right):
        # an environment: compared by name (the order of entries is not part of the contract)
        left, right = env_as_dict(left), env_as_dict(right)
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        for key in dict.fromkeys([*left, *right]):
            sub = f"{path}.{key}" if path else str(key)
            yield from _walk(left.get(key, _MISSING), right.get(key, _MISSING), sub)
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            yield from _walk(a, b, f"{path}[{index}]")
    elif left != right:
        yield path, left, right


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


_MISSING: Any = _Missing()


def _matches(path: str, pattern: str) -> bool:
    # only "*" is a wildcard: "[0]" in a path is an index, not a character class
    return fnmatch.fnmatchcase(path, pattern.replace("[", "[[]"))


def differences(prefect: Any, agent: Any, allowed: Mapping[str, str]) -> list[str]:
    """Each difference outside `allowed`, with both sides shown."""
    found = []
    for path, left, right in _walk(prefect, agent, ""):
        if any(_matches(path, pattern) for pattern in allowed):
            continue
        found.append(f"{path}:\n    prefect:    {left!r}\n    flow-agent: {right!r}")
    return found


def assert_same(sides: Sides, allowed: Mapping[str, str]) -> None:
    found = differences(sides.prefect, sides.agent, allowed)
    assert not found, "payloads differ outside the listed launch-time fills:\n" + "\n".join(found)


def env_as_dict(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A container's env list as name -> entry (order is not part of the contract)."""
    return {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in entries}


# ---------------------------------------------------------------- ARM (the cloud boundary for ACI)

_PARAMETER = re.compile(r"\[parameters\('([^']+)'\)\]")


def evaluate_arm(node: Any, params: Mapping[str, Any]) -> Any:
    """ARM's `[parameters('x')]`, literally; other expressions are left as they are."""
    if isinstance(node, Mapping):
        return {k: evaluate_arm(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [evaluate_arm(v, params) for v in node]
    if isinstance(node, str) and (match := _PARAMETER.fullmatch(node)) and match.group(1) in params:
        return params[match.group(1)]
    return node
