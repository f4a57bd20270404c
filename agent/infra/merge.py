"""Pool base job template + deployment + run job variables -> one job configuration.

This is `BaseJobConfiguration.resolve_for_flow_run` / `from_template_and_values` of
Prefect 3.8.8, step for step (numbered as in the protocol reference, section 7), minus
the server look-ups of `{{ prefect.blocks.* }}` / `{{ prefect.variables.* }}`, which are
left intact for a later asynchronous pass. Deviations from Prefect are limited to inputs
where Prefect would crash with a bare TypeError: here they raise `InfraError` naming the
field, the source and the fix. Inputs are never modified (Prefect mutates the deployment's
env dict in place).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from agent.infra.templating import InfraError, apply_values

__all__ = ["expand_dot_keys", "merge_job_variables", "resolve_job_configuration"]

_NO_ENV: Final[Mapping[str, str]] = MappingProxyType({})
_TEMPLATE_FIX: Final = (
    "reset it with `prefect work-pool get-default-base-job-template --type <type> > t.json` "
    "and `prefect work-pool update <pool> --base-job-template t.json`"
)
_ENV_FIX: Final = 'give env as an object of NAME: "value" strings'


def _of(source: str) -> str:
    return f" of {source}" if source else ""


def _from(source: str) -> str:
    return f" from {source}" if source else ""


def merge_job_variables(
    deployment_vars: Mapping[str, Any] | None, run_vars: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Step 1: deployment job variables, then the run's on top.

    `env` is merged per variable (the run wins) when both sides are objects; every other
    key, dot-keys such as `"env.FOO"` included, is simply replaced by the run's value.
    """
    merged = copy.deepcopy(dict(deployment_vars or {}))
    run = copy.deepcopy(dict(run_vars or {}))
    if isinstance(merged.get("env"), Mapping) and isinstance(run.get("env"), Mapping):
        merged["env"] = {**merged["env"], **run.pop("env")}
    merged.update(run)
    return merged


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in top.items():
        if isinstance(result.get(key), dict) and isinstance(value, dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def _set_path(target: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(target.get(part, {}), dict):
            prefix = ".".join(parts[: depth + 1])
            raise InfraError(
                f"job variable {dotted!r}{_from(source)} cannot be set because {prefix!r} "
                f"is not an object; remove one of {dotted!r} and {prefix!r}",
                field=dotted,
                source=source,
            )
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def expand_dot_keys(variables: Mapping[str, Any], *, source: str = "") -> dict[str, Any]:
    """Step 4: `{"env.FOO": "x"}` -> `{"env": {"FOO": "x"}}`.

    Dot-keys are expanded first and plain keys deep-merged on top, so the nested form
    wins over the dotted form when both set the same variable (as in Prefect).
    """
    expanded: dict[str, Any] = {}
    for key, value in variables.items():
        if "." in key:
            _set_path(expanded, key, value, source)
    for key, value in variables.items():
        if "." in key:
            continue
        if isinstance(expanded.get(key), dict) and isinstance(value, dict):
            expanded[key] = _deep_merge(expanded[key], value)
        else:
            expanded[key] = value
    return expanded


def _template_error(problem: str, field: str, source: str) -> InfraError:
    return InfraError(
        f"base job template{_of(source)} {problem}; {_TEMPLATE_FIX}", field=field, source=source
    )


def _split_template(template: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 2: a copy of `job_configuration` and the non-None defaults of the variables."""
    if not isinstance(template, Mapping):
        raise _template_error("is not an object", "base_job_template", source)
    if not template:
        raise _template_error("is empty", "base_job_template", source)
    job_configuration = template.get("job_configuration")
    if not isinstance(job_configuration, Mapping):
        raise _template_error("has no 'job_configuration' object", "job_configuration", source)
    # A template without "variables" simply has no defaults (Prefect would KeyError).
    schema = template.get("variables", {})
    if not isinstance(schema, Mapping):
        raise _template_error("has a 'variables' that is not an object", "variables", source)
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise _template_error(
            "has 'variables.properties' that is not an object", "variables.properties", source
        )
    defaults: dict[str, Any] = {}
    for name, prop in properties.items():
        if not isinstance(prop, Mapping):
            field = f"variables.properties.{name}"
            raise _template_error(f"has {field!r} that is not an object", field, source)
        # None defaults are skipped so that a missing key removes the placeholder.
        if prop.get("default") is not None:
            defaults[name] = prop["default"]
    return copy.deepcopy(dict(job_configuration)), copy.deepcopy(defaults)


def _merge_default_env(base: dict[str, Any], defaults: Mapping[str, Any], source: str) -> None:
    """Step 3: the pool's default env goes into the template before any override."""
    default_env = defaults.get("env")
    if not default_env:
        return
    if not isinstance(base.get("env"), Mapping):
        base["env"] = default_env
    elif isinstance(default_env, Mapping):
        base["env"] = {**base["env"], **default_env}
    else:
        raise _template_error("has a default for variable 'env' that is not an object", "env", source)


def _merge_variable_env(base: dict[str, Any], variables: Mapping[str, Any], source: str) -> None:
    """Step 5: a literal env object in the template is merged with the variables' env."""
    env = variables.get("env")
    if not (isinstance(base.get("env"), Mapping) and env):
        return
    if not isinstance(env, Mapping):
        raise InfraError(
            f"job variable 'env'{_from(source)} must be an object "
            f"(got {type(env).__name__}, value hidden); {_ENV_FIX}",
            field="env",
            source=source,
        )
    base["env"] = {**base["env"], **env}


def resolve_job_configuration(
    base_job_template: Mapping[str, Any],
    deployment_vars: Mapping[str, Any] | None,
    run_vars: Mapping[str, Any] | None,
    *,
    environ: Mapping[str, str] = _NO_ENV,
    source: str = "",
) -> dict[str, Any]:
    """The job configuration for one run: section 7, steps 1-6.

    `environ` feeds `{{ $VAR }}` placeholders (the agent's environment, passed in
    explicitly); `source` describes where the inputs came from (e.g. "deployment
    'etl/daily' in work pool 'local'") and is used only in error messages. The result
    still holds any `{{ prefect.blocks.* }}` / `{{ prefect.variables.* }}` placeholders.
    """
    base, variables = _split_template(base_job_template, source)
    _merge_default_env(base, variables, source)
    job_variables = merge_job_variables(deployment_vars, run_vars)
    variables.update(expand_dot_keys(job_variables, source=source))
    _merge_variable_env(base, variables, source)
    resolved: dict[str, Any] = apply_values(base, variables, environ=environ)
    return resolved
