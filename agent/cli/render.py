"""`flow-agent render`: the exact payload a run would launch with, launching nothing.

It goes through the same pipeline as the agent (`JobBuilder`), so what it prints is what
would be sent: templating, references, the typed config, customizations. Every secret the
pipeline meets (the API credentials, resolved secret blocks) is masked in the output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.api import Deployment, DeploymentNotFound, FlowRun, PrefectClient, WorkPool
from agent.api.deployments import read_deployment_by_name
from agent.api.errors import NotFound
from agent.infra.templating import InfraError
from agent.observe.logging import Redactor
from agent.runtime.jobs import JobBuilder
from agent.settings import Settings

__all__ = ["RenderError", "masked_document", "render", "summary"]

PREVIEW_RUN_ID = "00000000-0000-0000-0000-000000000000"


class RenderError(Exception):
    """The run, deployment or pool to render could not be found."""


async def _target(
    api: PrefectClient, flow_run_id: str | None, deployment_name: str | None, job_vars: Mapping[str, Any]
) -> tuple[FlowRun, Deployment | None]:
    if flow_run_id:
        try:
            run = await api.read_flow_run(flow_run_id)
        except NotFound:
            raise RenderError(
                f"no flow run {flow_run_id} on {api.api_url}; `flow-agent flow-runs ls` lists the runs there"
            ) from None
        deployment = await api.read_deployment(run.deployment_id) if run.deployment_id else None
        return run, deployment
    assert deployment_name
    try:
        deployment = await read_deployment_by_name(api, deployment_name)
    except (ValueError, DeploymentNotFound) as exc:
        raise RenderError(str(exc)) from None
    run = FlowRun(
        id=PREVIEW_RUN_ID,
        name="render-preview",
        flow_id=deployment.flow_id,
        deployment_id=deployment.id,
        job_variables=dict(job_vars),
    )
    return run, deployment


async def _pool(api: PrefectClient, run: FlowRun, deployment: Deployment | None) -> WorkPool | None:
    name = run.work_pool_name or (deployment.work_pool_name if deployment else None)
    return await api.read_work_pool(name) if name else None


async def render(
    settings: Settings,
    *,
    environ: Mapping[str, str],
    flow_run_id: str | None = None,
    deployment: str | None = None,
    job_vars: Mapping[str, Any] | None = None,
    show_inherited: bool = False,
) -> dict[str, Any]:
    """The masked launch document for a run (or a preview run of a deployment).

    A local process inherits the agent's environment: those variables are counted (and
    named with `show_inherited`), never shown with their values; the ones flow-agent adds
    and the job's own env are shown, masked.
    """
    assert settings.api_url is not None
    redactor = Redactor(settings.secrets())
    async with PrefectClient.from_settings(settings) as api:
        run, dep = await _target(api, flow_run_id, deployment, job_vars or {})
        pool = await _pool(api, run, dep)
        builder = JobBuilder.from_settings(api, settings, environ=environ, on_secret=redactor.add)
        try:
            job = await builder.build(run, pool, dep)
            payload, inherited = dict(job.payload), None
            if isinstance(payload.get("env"), Mapping):
                explicit = await _explicit_env(builder, run, pool, dep)
                payload["env"], inherited = _split_env(payload["env"], environ, explicit)
        except InfraError as exc:
            raise RenderError(str(redactor.mask(str(exc)))) from None
    document = {
        "flow_run_id": None if run.id == PREVIEW_RUN_ID else run.id,
        "deployment": dep.name if dep else None,
        "work_pool": pool.name if pool else None,
        "kind": job.kind,
        "source": job.source,
        "payload": payload,
    }
    if inherited is not None:
        document["inherited_env"] = {"count": len(inherited)}
        if show_inherited:
            document["inherited_env"]["names"] = inherited
    return masked_document(document, redactor)


def masked_document(document: Mapping[str, Any], redactor: Redactor) -> dict[str, Any]:
    """`document` masked as parsed values (raw secrets) and again as the JSON text a
    caller prints (escaped forms), so neither `--json` nor `summary` shows a secret."""
    masked: dict[str, Any] = redactor.mask(json.loads(json.dumps(document, default=str)))
    try:
        result: dict[str, Any] = json.loads(redactor.mask_text(json.dumps(masked)))
    except ValueError:  # a mask cut an escape sequence: the raw values are masked already
        return masked
    return result


async def _explicit_env(
    builder: JobBuilder, run: FlowRun, pool: WorkPool | None, deployment: Deployment | None
) -> set[str]:
    """Names flow-agent sets for the run and names the job's configuration sets."""
    _kind, config, _source = await builder.configure(run, pool, deployment)
    configured = getattr(config, "env", None) or {}
    return set(builder.context(run, pool, deployment).env) | set(configured)


def _split_env(
    env: Mapping[str, Any], environ: Mapping[str, str], explicit: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """(env without what is inherited unchanged from the agent's environment, those names)."""
    inherited = sorted(k for k, v in env.items() if k not in explicit and environ.get(k) == v)
    return {k: v for k, v in env.items() if k not in inherited}, inherited


def summary(document: Mapping[str, Any]) -> str:
    """A readable rendering for a terminal: who, what kind, from where, then the payload."""
    lines = [
        f"kind:        {document['kind']}",
        f"source:      {document['source']}",
        f"deployment:  {document.get('deployment') or '-'}",
        f"work pool:   {document.get('work_pool') or '-'}",
        f"flow run:    {document.get('flow_run_id') or 'preview (no run created)'}",
        "payload (secrets masked):",
        json.dumps(document["payload"], indent=2, sort_keys=True),
    ]
    inherited = document.get("inherited_env")
    if inherited is not None:
        lines.append(f"+ {inherited['count']} variables from the agent's environment")
        if "names" in inherited:
            lines += [f"  {name}" for name in inherited["names"]]
        else:
            lines[-1] += " (--show-inherited lists their names)"
    return "\n".join(lines)
