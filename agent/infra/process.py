"""Typed configuration of the local process backend, from a resolved job configuration.

Fields and defaults are those of Prefect's `process` pool (3.8.8 `ProcessJobConfiguration`),
with the command kept as an argument list instead of a string to be split at launch.
Validation errors become one-line `InfraError`s that name the job variable, the source
and the fix, and never show an environment value (they are often secrets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Annotated, Any, ClassVar, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from agent.infra.container import merged_env
from agent.infra.fields import (
    CUSTOM,
    Command,
    EnvHidingModel,
    EnvName,
    EnvValue,
    StreamOutput,
    custom_error,
    describe,
    error_path,
    json_type,
)
from agent.infra.patch import parse_customizations
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError

__all__ = ["SUPERVISOR_MODULE", "ProcessJobConfig", "ProcessKind", "ProcessRuntime", "process_config"]

# Prefect's workspace supervisor (3.8.8): prepares the run's workspace, then execs the engine,
# under `uv run` for a uv project when PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES is on. The
# backend appends its config file at launch (backends/process/workspace.py).
SUPERVISOR_MODULE: Final = "prefect.runner._workspace_supervisor"
_AUTO_INSTALL: Final = "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES"
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})  # pydantic's bool words


def _platform_path(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        # As Prefect does: a relative path written on Windows ("flows\\etl") works here.
        return Path(PureWindowsPath(value).as_posix())
    return value


def _must_be_directory(value: Path | None) -> Path | None:
    if value is not None and value.exists() and not value.is_dir():
        raise custom_error(
            "must be a directory, but {path} is not one",
            "point it at a directory, or leave it empty to run in a temporary directory",
            path=str(value),
        )
    return value


WorkingDir = Annotated[Path | None, BeforeValidator(_platform_path), AfterValidator(_must_be_directory)]


class ProcessJobConfig(EnvHidingModel):
    """How to start one flow run as a local process.

    `command` None means the backend's default engine command; `env` values of None
    unset a variable; `working_dir` None means a fresh temporary directory. The repr
    shows env names only: the values are often secrets.
    """

    # extra="ignore": pools may declare variables of their own (used elsewhere in the
    # template); rejecting them would break pools that work with `prefect worker start`.
    model_config = ConfigDict(frozen=True, extra="ignore")

    command: Command = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    stream_output: StreamOutput = True
    working_dir: WorkingDir = None
    # RFC 6902 operations on the launch payload {"command", "env", "cwd", "stream_output"}
    customizations: list[dict[str, Any]] = Field(default_factory=list)


# field -> (what the field must be, what one item of it must be, fix for the field,
# fix for an item)
_HELP: Final[dict[str, tuple[str, str, str, str]]] = {
    "command": (
        "a command line string or a list of strings",
        "a string",
        'give a command such as "python -m prefect.engine", or leave it empty for the default',
        "give every argument as a string",
    ),
    "env": (
        'an object of NAME: "value" strings',
        "a string, a number, a boolean or null",
        'give env as an object such as {"NAME": "value"}',
        'quote the value as a string, e.g. "1", or use null to unset the variable',
    ),
    "labels": (
        "an object of string values",
        "a string",
        'give labels as an object such as {"team": "data"}',
        "quote each label value as a string",
    ),
    "name": ("a string or null", "", "set it to a string, or leave it empty", ""),
    "stream_output": ("a boolean", "", "set it to true or false", ""),
    "working_dir": (
        "a directory path",
        "",
        "set it to a directory, or leave it empty to run in a temporary directory",
        "",
    ),
}
_UNKNOWN_HELP: Final = ("valid", "valid", "correct it", "correct it")
# Values of these fields are never echoed: env holds secrets, a command may embed one.
_HIDDEN: Final = frozenset({"env", "command"})


def _error_line(error: ErrorDetails, source: str) -> tuple[str, str]:
    """(one-line message, field path) for one pydantic error."""
    path = error_path(error["loc"])
    field = str(error["loc"][0]) if error["loc"] else "job_configuration"
    whole, item, whole_fix, item_fix = _HELP.get(field, _UNKNOWN_HELP)
    fix = whole_fix if path == field else item_fix
    where = f"job variable {path!r}" + (f" from {source}" if source else "")
    if error["type"] == CUSTOM:
        return f"{where} {error['msg']}; {error.get('ctx', {}).get('fix', fix)}", path
    expected = whole if path == field else item
    got = describe(error.get("input"), field in _HIDDEN)
    return f"{where} must be {expected} (got {got}); {fix}", path


def process_config(resolved: Mapping[str, Any], *, source: str) -> ProcessJobConfig:
    """Validate a resolved job configuration into a `ProcessJobConfig`.

    Raises `InfraError` for the first problem found. The pydantic error is not chained
    (`from None`): it carries the offending input, which may be a secret.
    """
    if not isinstance(resolved, Mapping):
        where = f" of {source}" if source else ""
        raise InfraError(
            f"job configuration{where} must be an object (got {json_type(resolved)}); "
            "fix the work pool's base job template",
            field="job_configuration",
            source=source,
        )
    try:
        return ProcessJobConfig.model_validate(dict(resolved))
    except ValidationError as exc:
        message, path = _error_line(exc.errors(include_url=False)[0], source)
    raise InfraError(message, field=path, source=source) from None


@dataclass(frozen=True)
class ProcessRuntime:
    """What the process backend needs beyond the payload: nothing today. The command, its
    env, working directory and output streaming are all in the payload, where
    customizations can patch them; agent-wide settings (the state dir for exit records)
    come in the backend's options."""


class ProcessKind:
    """Local processes: Prefect's `process` pool type and the Prefect 2 `process` block.

    The payload is what the process backend executes: `command` (argv), the complete
    `env` (the agent's environment without its own FLOW_AGENT_* settings, the run's
    Prefect variables, then the configuration's env, where null unsets), `cwd` (None: a
    fresh temporary directory) and `stream_output`. Customizations patch that payload, so
    `/command/-` appends an argument and `/env/NAME` sets a variable.
    """

    kind: ClassVar[str] = "process"

    def __init__(self, *, python: str, base_env: Mapping[str, str]) -> None:
        self._python = python
        self._base_env = {k: v for k, v in base_env.items() if not k.startswith("FLOW_AGENT_")}

    def config_from_pool(
        self, resolved: Mapping[str, Any], *, pool_type: str, source: str
    ) -> ProcessJobConfig:
        return process_config(_with_customizations(resolved, source), source=source)

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> ProcessJobConfig:
        return process_config(_with_customizations(data, source), source=source)

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, ProcessJobConfig)
        env = merged_env({**self._base_env, **ctx.env}, config.env)
        return {
            "command": list(config.command or self._default_command(env)),
            "env": env,
            "cwd": str(config.working_dir) if config.working_dir else None,
            "stream_output": config.stream_output,
        }

    def _default_command(self, env: Mapping[str, str]) -> list[str]:
        """Prefect's engine; through Prefect's workspace supervisor when the run asks for
        its project's dependencies (`uv run`), which only the supervisor provides. Otherwise
        the engine itself: it runs the same pull steps and storage, one interpreter start
        sooner, and can be forked warm (ARCHITECTURE.md, "The process start path")."""
        if env.get(_AUTO_INSTALL, "").strip().lower() in _TRUE:
            return [self._python, "-m", SUPERVISOR_MODULE]
        return [self._python, "-m", "prefect.engine"]

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, ProcessJobConfig)
        return list(config.customizations)

    def runtime(self, config: BaseModel) -> ProcessRuntime:
        assert isinstance(config, ProcessJobConfig)
        return ProcessRuntime()


def _with_customizations(values: Mapping[str, Any], source: str) -> Any:
    if not isinstance(values, Mapping):
        return values  # process_config explains what it should have been
    values = dict(values)
    if "customizations" in values:
        values["customizations"] = parse_customizations(
            values["customizations"], field="customizations", source=source
        )
    return values
