"""From a block or a work pool, plus a command, to a `Job` that is no flow run.

A direct run goes through the flow runs' own pipeline (`JobBuilder.configure`: the block's
data or the pool's base job template, job variables, `{{ }}` references, the kind's typed
config), then the kind's payload and the user's JSON Patch customizations. Only the run
context differs: there is no flow run, so nothing Prefect-specific is put into the
workload's environment (no API URL, no key), and its workload is named `direct-<id>` with
the label `flow-agent.io/direct-run` (its "flow name" is `direct-run`), so a person tells
it from a flow run's at a glance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agent.api import FlowRun, PrefectClient, WorkPool
from agent.api.blocks import read_block_document_by_name
from agent.backends.base import Job, OutputSink
from agent.blocks import get_block_spec
from agent.blocks.secrets import secret_parts
from agent.infra.kinds import Kinds
from agent.infra.legacy import apply_overrides
from agent.infra.patch import apply_customizations
from agent.infra.references import resolve_references, secret_values
from agent.infra.spec import InfraKind, RunContext
from agent.registry import REGISTRY
from agent.runtime.jobs import JobBuilder

__all__ = ["DIRECT_LABEL", "DirectBuilder", "DirectError", "Request", "Target", "direct_name"]

DIRECT_LABEL: Final = "flow-agent.io/direct-run"
DIRECT_FLOW_NAME: Final = "direct-run"
_RUN_LABEL: Final = "prefect.io/flow-run-id"  # backends find and watch workloads by it
_POOL: Final = "pool"


class DirectError(Exception):
    """A direct run cannot be built: one line naming what is wrong and the fix."""


@dataclass(frozen=True)
class Target:
    """Where a direct run runs: a saved block (`TYPE/NAME`) or a work pool's template."""

    slug: str | None = None  # the block type's slug; None for a pool
    name: str = ""
    # a block's data given in code (`agent.infra_blocks`), saved or not: used as is
    data: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def block(cls, ref: str) -> Target:
        slug, sep, name = ref.partition("/")
        if not sep or not slug or not name:
            raise DirectError(f"{ref!r} is not TYPE/BLOCK; e.g. process/my-block ({_slugs()})")
        if slug == _POOL:
            return cls.pool(name)
        if REGISTRY.for_block_slug(slug) is None:
            raise DirectError(f"block type {slug!r} is not one flow-agent runs; use one of {_slugs()}")
        return cls(slug, name)

    @classmethod
    def pool(cls, name: str) -> Target:
        if not name or ":" in name:
            raise DirectError(f"{name!r} is not a work pool name; `flow-agent status` lists the pools")
        return cls(None, name)

    @classmethod
    def inline(cls, slug: str, data: Mapping[str, Any], name: str = "") -> Target:
        return cls(slug, name or "unsaved", dict(data))

    @property
    def ref(self) -> str:
        """`TYPE/BLOCK`, or `pool/POOL`: what an infrastructure id starts with."""
        return f"{self.slug or _POOL}/{self.name}"

    def __str__(self) -> str:
        return f"block {self.ref}" if self.slug else f"work pool {self.name!r}"


def _slugs() -> str:
    return ", ".join(REGISTRY.block_slugs())


@dataclass(frozen=True)
class Request:
    """What to run. `env` and `job_vars` may hold secrets: they are not in the repr."""

    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    image: str | None = None
    job_vars: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def variables(self) -> dict[str, Any]:
        """The request as job variables on top of the block's or pool's configuration."""
        variables = dict(self.job_vars)
        if self.command:
            variables["command"] = list(self.command)
        if self.env:
            env = variables.get("env")
            variables["env"] = {**(env if isinstance(env, Mapping) else {}), **self.env}
        if self.image:
            variables["image"] = self.image
        return variables


def direct_name(run_id: str) -> str:
    return f"direct-{run_id.replace('-', '')[:8]}"


class DirectBuilder:
    """Builds direct runs' jobs through the flow runs' `JobBuilder` (no copy of it)."""

    def __init__(
        self,
        api: PrefectClient,
        *,
        python: str,
        environ: Mapping[str, str],
        on_secret: Callable[[str], None],
        worker_name: str = "flow-agent",
    ) -> None:
        self.api = api
        self._worker_name = worker_name
        self._on_secret = on_secret
        self._kinds = Kinds(python=python, base_env=environ)
        # no API URL or key: a direct run's command is not a flow run and gets neither
        self._jobs = JobBuilder(
            api,
            self._kinds,
            api_url=api.api_url,
            api_key=None,
            auth_string=None,
            environ=environ,
            worker_name=worker_name,
            on_secret=on_secret,
        )

    async def build(
        self, target: Target, request: Request, *, run_id: str | None = None, output: OutputSink | None = None
    ) -> Job:
        run_id = run_id or str(uuid.uuid4())
        name = direct_name(run_id)
        run = FlowRun(
            id=run_id,
            name=name,
            job_variables=request.variables(),
            infrastructure_document_id=await self._document_id(target),
        )
        pool = None
        if target.slug is None:
            pool = await self.api.read_work_pool(target.name)
            if pool is None:
                raise DirectError(
                    f"no work pool {target.name!r} on {self.api.api_url}; `flow-agent status` lists them"
                )
        kind, config, source = await self._configure(target, run, pool)
        if request.image and "image" not in type(config).model_fields:
            raise DirectError(f"--image: a {kind.kind} run has no image; leave it out (source: {source})")
        payload = kind.build_payload(config, self._context(run_id, name, target))
        payload = apply_customizations(
            payload, kind.customizations(config), field="customizations", source=source, target="payload"
        )
        return Job(run_id, name, kind.kind, payload, kind.runtime(config), source=source, output=output)

    async def _configure(
        self, target: Target, run: FlowRun, pool: WorkPool | None
    ) -> tuple[InfraKind, Any, str]:
        if target.data is None:  # a saved block or a pool: exactly as for a flow run
            return await self._jobs.configure(run, pool, None)
        assert target.slug is not None
        source = f"block {target.ref} (given in code)"
        kind = self._kinds.for_block_slug(target.slug, source=source)
        for secret in inline_secrets(target.slug, target.data):
            self._on_secret(secret)
        data = apply_overrides(target.data, None, run.job_variables, source=source)
        data = await resolve_references(data, self.api, on_secret=self._on_secret, source=source)
        return kind, kind.config_from_block(data, source=source), source

    async def _document_id(self, target: Target) -> str | None:
        if target.slug is None or target.data is not None:
            return None
        document = await read_block_document_by_name(self.api, target.slug, target.name)
        if document is None:
            raise DirectError(
                f"no {target.slug} block named {target.name!r} on {self.api.api_url}; "
                "`flow-agent blocks list` lists them (create one in the UI or with agent.infra_blocks)"
            )
        return str(document["id"])

    def _context(self, run_id: str, name: str, target: Target) -> RunContext:
        # the flow name names what a kind reuses across runs (an ECS task definition family,
        # an ACI group's prefix): one stable name for all direct runs
        labels = {_RUN_LABEL: run_id, DIRECT_LABEL: "true", "prefect.io/flow-name": DIRECT_FLOW_NAME}
        if target.slug is None:
            labels["prefect.io/work-pool-name"] = target.name
        return RunContext(
            flow_run_id=run_id,
            flow_run_name=name,
            work_pool_name=target.name if target.slug is None else None,
            worker_name=self._worker_name,
            env={},
            labels=labels,
        )


def inline_secrets(slug: str, data: Mapping[str, Any]) -> list[str]:
    """The secrets of a block given in code, as the server would know them once saved: its
    type's secret fields, and its credentials (all but their identifiers: project, region)."""
    spec = get_block_spec(slug)
    if spec is None:
        return []
    found = secret_values({"data": data, "block_schema": {"fields": spec.fields}})
    for name in spec.references:
        found += _credential_secrets(data.get(name))
    return found


def _credential_secrets(value: Any) -> list[str]:
    """Every secret leaf of a credentials mapping, nested ones included; identifiers stay."""
    if not isinstance(value, Mapping):
        return secret_values({"block_type": {"slug": "secret"}, "data": {"value": value}})
    return [leaf for part in secret_parts(value) for leaf in _credential_secrets(part)]
