"""From a claimed run to a `Job`: resolved configuration plus the run's environment.

The environment a run gets: the agent's own (minus FLOW_AGENT_* settings, which may hold
credentials the run has no business seeing), then what the engine needs to find its run
(PREFECT_API_URL, PREFECT__FLOW_RUN_ID, auth), then the job configuration's `env` on top,
where a null value unsets a variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.api import Deployment, FlowRun, WorkPool
from agent.backends.base import Job
from agent.infra import InfraError, process_config, resolve_job_configuration

__all__ = ["JobBuilder"]

ConfigBuilder = Callable[..., Any]
_CONFIGS: dict[str, ConfigBuilder] = {"process": process_config}


class JobBuilder:
    def __init__(
        self,
        *,
        api_url: str,
        api_key: str | None,
        auth_string: str | None,
        base_env: Mapping[str, str],
        worker_name: str,
    ) -> None:
        self._environ = dict(base_env)
        self._base_env = {k: v for k, v in base_env.items() if not k.startswith("FLOW_AGENT_")}
        self._prefect_env = {"PREFECT_API_URL": api_url, "PREFECT__WORKER_NAME": worker_name}
        if auth_string:
            self._prefect_env["PREFECT_API_AUTH_STRING"] = auth_string
        elif api_key:
            self._prefect_env["PREFECT_API_KEY"] = api_key

    def build(self, run: FlowRun, pool: WorkPool, deployment: Deployment | None) -> Job:
        source = f"work pool {pool.name!r}"
        if deployment is not None:
            source += f" / deployment {deployment.name!r}"
        resolved = resolve_job_configuration(
            pool.base_job_template,
            deployment.job_variables if deployment else None,
            run.job_variables,
            environ=self._environ,
            source=source,
        )
        builder = _CONFIGS.get(pool.type)
        if builder is None:
            raise InfraError(
                f"work pool type {pool.type!r} has no launcher in this agent; "
                f"supported: {', '.join(sorted(_CONFIGS))}",
                field="type",
                source=source,
            )
        config = builder(resolved, source=source)
        env = self._env(run, deployment, getattr(config, "env", {}) or {})
        labels = dict(getattr(config, "labels", {}) or {})
        return Job(run.id, run.name, config, env, labels)

    def _env(
        self, run: FlowRun, deployment: Deployment | None, overrides: Mapping[str, str | None]
    ) -> dict[str, str]:
        env = {**self._base_env, **self._prefect_env, "PREFECT__FLOW_RUN_ID": run.id}
        if run.flow_id:
            env["PREFECT__FLOW_ID"] = run.flow_id
        if deployment is not None:
            env["PREFECT__DEPLOYMENT_ID"] = deployment.id
            env["PREFECT__DEPLOYMENT_NAME"] = deployment.name
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env
