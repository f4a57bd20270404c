"""From a run to a `Job`: the one pipeline shared by the runner and `render`.

Where the configuration comes from, strongest first:
1. a legacy Prefect 2 infrastructure block (`infrastructure_document_id` on the run, else
   on the deployment): the block's data with the deployment's and the run's job variables
   applied on top as overrides; the block's type picks the kind;
2. the work pool: its base job template with the deployment's and the run's job
   variables (Prefect's merge and `{{ }}` rules); the pool's type picks the kind.
Then `{{ prefect.blocks.* }}` / `{{ prefect.variables.* }}` are resolved (secret values are
handed to the redactor at once), the kind builds the typed config and the exact payload,
and the user's JSON Patch customizations are applied to that payload last.

What every job is told about its run is what Prefect's `BaseJobConfiguration.
prepare_for_flow_run` tells it, in the same order (later wins): the agent's Prefect
settings (`Settings.prefect_env`, with the agent's own API URL and credentials) ->
`PREFECT__FLOW_RUN_ID` -> `PREFECT__WORKER_NAME`, `PREFECT__FLOW_ID`, `PREFECT__FLOW_NAME`,
`PREFECT__DEPLOYMENT_ID`, `PREFECT__DEPLOYMENT_NAME` -> the job's env; and the labels
`prefect.io/flow-run-id`, `-flow-run-name`, `-version`, `-work-pool-name`, `-work-pool-id`,
`-worker-name`, `-flow-id`, `-flow-name`, `-deployment-id`, `-deployment-name`,
`-deployment-updated`. Prefect's `version` label is the worker's Prefect version; here it is
the server's (`GET /admin/version`, read once), the Prefect this agent speaks for. The flow's
name is read once per flow id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

from agent.api import Deployment, FlowRun, PrefectClient, WorkPool
from agent.api.errors import ApiError, TransientError
from agent.api.flows import read_flow
from agent.backends.base import Job
from agent.infra import resolve_job_configuration
from agent.infra.kinds import Kinds
from agent.infra.legacy import apply_overrides, load_infrastructure_block
from agent.infra.merge import merge_job_variables
from agent.infra.patch import apply_customizations
from agent.infra.references import resolve_references
from agent.infra.spec import InfraKind, RunContext
from agent.settings import Settings

__all__ = ["JobBuilder"]


class JobBuilder:
    def __init__(
        self,
        api: PrefectClient,
        kinds: Kinds,
        *,
        api_url: str,
        api_key: str | None,
        auth_string: str | None,
        environ: Mapping[str, str],
        worker_name: str,
        on_secret: Callable[[str], None],
        prefect_env: Mapping[str, str] | None = None,
    ) -> None:
        self.api = api
        self._kinds = kinds
        self._environ = dict(environ)  # for {{ $VAR }} placeholders, as Prefect's worker does
        self._on_secret = on_secret
        self._worker_name = worker_name
        self._flow_names: dict[str, str] = {}
        self._server_version: str | None = None
        # the settings a Prefect worker passes on; the agent's own server and credentials win
        self._prefect_env = {**(prefect_env or {}), "PREFECT_API_URL": api_url}
        if auth_string:
            self._prefect_env["PREFECT_API_AUTH_STRING"] = auth_string
        elif api_key:
            self._prefect_env["PREFECT_API_KEY"] = api_key

    @classmethod
    def from_settings(
        cls,
        api: PrefectClient,
        settings: Settings,
        *,
        environ: Mapping[str, str],
        on_secret: Callable[[str], None],
    ) -> JobBuilder:
        assert settings.api_url is not None
        return cls(
            api,
            Kinds(python=settings.python, base_env=environ),
            api_url=settings.api_url,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            auth_string=settings.api_auth_string.get_secret_value() if settings.api_auth_string else None,
            environ=environ,
            worker_name=settings.name,
            on_secret=on_secret,
            prefect_env=settings.prefect_env,
        )

    async def build(self, run: FlowRun, pool: WorkPool | None, deployment: Deployment | None) -> Job:
        await self.learn(run)
        kind, config, source = await self.configure(run, pool, deployment)
        payload = kind.build_payload(config, self.context(run, pool, deployment))
        payload = apply_customizations(
            payload, kind.customizations(config), field="customizations", source=source, target="payload"
        )
        return Job(run.id, run.name, kind.kind, payload, kind.runtime(config), source=source)

    async def configure(
        self, run: FlowRun, pool: WorkPool | None, deployment: Deployment | None
    ) -> tuple[InfraKind, Any, str]:
        """The kind and its typed config for this run, and a description of the source."""
        deployment_vars = deployment.job_variables if deployment else None
        document_id = run.infrastructure_document_id or (
            deployment.infrastructure_document_id if deployment else None
        )
        if document_id:
            block = await load_infrastructure_block(
                self.api, document_id, source=_source(pool, deployment), on_secret=self._on_secret
            )
            source = f"block {block.slug}/{block.name}" + _dep(deployment)
            kind = self._kinds.for_block_slug(block.slug, source=source)
            data = apply_overrides(block.data, deployment_vars, run.job_variables)
            data = await resolve_references(data, self.api, on_secret=self._on_secret, source=source)
            return kind, kind.config_from_block(data, source=source), source
        if pool is None:
            raise LookupError("a run without an infrastructure block needs its work pool")
        source = _source(pool, deployment)
        kind = self._kinds.for_pool_type(pool.type, source=source)
        resolved = resolve_job_configuration(
            pool.base_job_template, deployment_vars, run.job_variables, environ=self._environ, source=source
        )
        variables = merge_job_variables(deployment_vars, run.job_variables)
        if "customizations" in variables:  # not a template variable: taken as given
            resolved["customizations"] = variables["customizations"]
        resolved = await resolve_references(resolved, self.api, on_secret=self._on_secret, source=source)
        return kind, kind.config_from_pool(resolved, pool_type=pool.type, source=source), source

    async def learn(self, run: FlowRun) -> None:
        """What the labels need beyond the run: its flow's name and the server's version,
        each read once. What cannot be read is left out (as Prefect leaves out what it lacks),
        asked again for the next run after a transient failure, and never fails the run."""
        if self._server_version is None:  # "" once the server said it will not tell
            try:
                version = await self.api.server_version()
            except TransientError:
                version = None  # asked again for the next run
            except ApiError:
                version = ""  # not served here (a 404 or 403): never asked again
            if version is not None:
                self._server_version = version
        if run.flow_id and run.flow_id not in self._flow_names:
            with contextlib.suppress(ApiError):
                self._flow_names[run.flow_id] = (await read_flow(self.api, run.flow_id)).name

    def context(self, run: FlowRun, pool: WorkPool | None, deployment: Deployment | None) -> RunContext:
        """The run's env and labels, in Prefect's order (see the module's docstring)."""
        flow_name = self._flow_names.get(run.flow_id) if run.flow_id else None
        env = {**self._prefect_env, "PREFECT__FLOW_RUN_ID": run.id, "PREFECT__WORKER_NAME": self._worker_name}
        labels = {"prefect.io/flow-run-id": run.id, "prefect.io/flow-run-name": run.name}
        if self._server_version:
            labels["prefect.io/version"] = self._server_version
        if pool is not None:
            labels["prefect.io/work-pool-name"] = pool.name
            labels["prefect.io/work-pool-id"] = pool.id
        labels["prefect.io/worker-name"] = self._worker_name
        if run.flow_id:
            env["PREFECT__FLOW_ID"] = run.flow_id
            labels["prefect.io/flow-id"] = run.flow_id
            if flow_name:
                env["PREFECT__FLOW_NAME"] = flow_name
                labels["prefect.io/flow-name"] = flow_name
        if deployment is not None:
            env["PREFECT__DEPLOYMENT_ID"] = deployment.id
            env["PREFECT__DEPLOYMENT_NAME"] = deployment.name
            labels["prefect.io/deployment-id"] = deployment.id
            labels["prefect.io/deployment-name"] = deployment.name
            if deployment.updated is not None:
                labels["prefect.io/deployment-updated"] = deployment.updated.astimezone(UTC).isoformat()
        return RunContext(
            flow_run_id=run.id,
            flow_run_name=run.name,
            flow_id=run.flow_id,
            deployment_id=deployment.id if deployment else None,
            deployment_name=deployment.name if deployment else None,
            work_pool_name=pool.name if pool else None,
            worker_name=self._worker_name,
            env=env,
            labels=labels,
        )


def _dep(deployment: Deployment | None) -> str:
    return f" (deployment {deployment.name!r})" if deployment else ""


def _source(pool: WorkPool | None, deployment: Deployment | None) -> str:
    where = f"work pool {pool.name!r}" if pool else "the run"
    return where + (f" / deployment {deployment.name!r}" if deployment else "")
