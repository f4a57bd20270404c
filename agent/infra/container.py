"""What the container kinds (ECS, Cloud Run, ACI, Kubernetes) share.

* `DEFAULT_COMMAND`, `Origin`, `SecretDict`: the engine command a container runs when
  none is configured, where a configuration came from, credential blocks' data;
* turning a source's data into a typed config, or into one-line `InfraError`s that name
  the field, the source and the fix and never echo a hidden value. The kinds word these
  errors in one of two ways, kept as they are because users and tests know them:
  - `validate_model` / `require_object` (ECS, Cloud Run): "job variable 'cpu' from
    <source>: <pydantic's problem> (got int: 3); <fix>", fixes given per field;
  - `validate_fields` / `require_template_object` (ACI, Kubernetes): "job variable 'cpu'
    from <source> must be <expectation> (got 3); <fix>", with `FieldHints` per field on
    top of `COMMON_HINTS`;
* `merged_env`, `stable_suffix`, `reroot`: the run's environment, run-derived names and
  customizations moved under the payload key they patch.

The kind modules import from here (and from `agent.infra.fields`), never from each other.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import ErrorDetails

from agent.infra.fields import CUSTOM, describe, error_path
from agent.infra.templating import InfraError

__all__ = [
    "COMMON_HINTS",
    "DEFAULT_COMMAND",
    "FieldHints",
    "Origin",
    "SecretDict",
    "config_error",
    "field_error",
    "merged_env",
    "require_object",
    "require_template_object",
    "reroot",
    "stable_suffix",
    "validate_fields",
    "validate_model",
]

DEFAULT_COMMAND: Final = ("prefect", "flow-run", "execute")  # reads PREFECT__FLOW_RUN_ID
# "pool": a work pool's resolved job configuration; "block": a Prefect 2 block's data
Origin = Literal["pool", "block"]
# Credential blocks' data: kept for the backend, out of reprs and dumps (they hold keys).
SecretDict = Annotated[dict[str, Any] | None, Field(repr=False, exclude=True)]
_M = TypeVar("_M", bound=BaseModel)


def merged_env(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The run's environment with the configured env on top; None unsets a variable."""
    env = {**base, **overrides}
    return {name: value for name, value in env.items() if value is not None}


def stable_suffix(flow_run_id: str, length: int) -> str:
    """Hex digits derived from the run id: the same run always gets the same name."""
    return hashlib.sha256(flow_run_id.encode()).hexdigest()[:length]


def reroot(operations: Iterable[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """RFC 6902 operations written against a part of the payload, moved under `root` ("/job")."""
    rerooted = []
    for op in operations:
        moved = {**copy.deepcopy(op), "path": root + op["path"]}
        if isinstance(op.get("from"), str):
            moved["from"] = root + op["from"]
        rerooted.append(moved)
    return rerooted


def config_error(message: str, field: str, source: str) -> InfraError:
    return InfraError(message, field=field, source=source)


# ---------------------------------------------------------------- ECS / Cloud Run wording


def require_object(value: Any, what: str, source: str) -> Mapping[str, Any]:
    """`value` if it is a mapping; else "<what> of <source> must be an object"."""
    if not isinstance(value, Mapping):
        raise config_error(f"{what} of {source} must be an object", what.replace(" ", "_"), source)
    return value


def validate_model(
    model: type[_M],
    data: Mapping[str, Any],
    *,
    source: str,
    fixes: Mapping[str, str],
    hidden: frozenset[str],
    what: str = "job variable",
) -> _M:
    """`model` from `data`, or one-line `InfraError` naming the field, the source and the fix.

    Not chained (`from None`): pydantic errors carry the input, which may be a secret.
    """
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    raise _model_error(error, source, fixes, hidden, what) from None


def _model_error(
    error: ErrorDetails, source: str, fixes: Mapping[str, str], hidden: frozenset[str], what: str
) -> InfraError:
    loc = [part for part in error["loc"] if part != "[key]"]
    path = error_path(error["loc"]) or "configuration"
    field = str(loc[0]) if loc else path
    fix = fixes.get(field, f"correct {field}")
    problem = error["msg"][:1].lower() + error["msg"][1:]
    if error["type"] != "missing":
        value = error.get("input")
        shown = repr(value)
        hide = field in hidden or len(shown) > 60
        problem += f" (got {type(value).__name__}{', value hidden' if hide else ': ' + shown})"
    where = f" from {source}" if source else ""
    return InfraError(f"{what} {path!r}{where}: {problem}; {fix}", field=path, source=source)


# ---------------------------------------------------------------- ACI / Kubernetes wording

# field -> (what it must be, how to fix it)
FieldHints = Mapping[str, tuple[str, str]]
COMMON_HINTS: Final[dict[str, tuple[str, str]]] = {
    "command": ("a command line string or a list of strings", "leave it empty for the default"),
    "env": ('an object of NAME: "value" strings', 'give env as {"NAME": "value"}; null unsets'),
    "labels": ("an object of string values", 'give labels such as {"team": "data"}'),
    "name": ("a string or null", "set it to a string, or leave it empty"),
    "stream_output": ("a boolean", "set it to true or false"),
}


def require_template_object(value: Any, what: str, source: str) -> None:
    """Nothing if `value` is a mapping; else an error pointing at the pool template or block."""
    if not isinstance(value, Mapping):
        raise InfraError(
            f"{what} from {source} must be an object (got {type(value).__name__}); "
            "fix the work pool's base job template or the block",
            field="job_configuration",
            source=source,
        )


def validate_fields(
    model: type[_M],
    data: Mapping[str, Any],
    *,
    source: str,
    noun: str,
    hints: FieldHints,
    hidden: frozenset[str],
    whole: frozenset[str] = frozenset(),
) -> _M:
    """The typed config, or an `InfraError` for the first problem (never chained: it holds input)."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    raise field_error(error, source=source, noun=noun, hints=hints, hidden=hidden, whole=whole) from None


def field_error(
    error: ErrorDetails,
    *,
    source: str,
    noun: str,
    hints: FieldHints,
    hidden: frozenset[str],
    whole: frozenset[str] = frozenset(),
) -> InfraError:
    """One pydantic error as "<noun> 'path' from <source> ...; <fix>".

    `noun` is "job variable" or "field"; values of `hidden` fields are never shown; errors
    inside a `whole` field (a union, whose per-shape errors would name a model class) are
    reported on the field itself.
    """
    path = error_path(error["loc"])
    field = str(error["loc"][0]) if error["loc"] else "job_configuration"
    if field in whole:
        path, error = field, {**error, "type": "model_type"}
    expected, fix = hints.get(field, ("valid", "correct it"))
    where = f"{noun} {path!r} from {source}"
    if error["type"] == CUSTOM:
        message = f"{where} {error['msg']}; {error.get('ctx', {}).get('fix', fix)}"
    elif error["type"] == "missing" or (error["type"] == "string_too_short" and path == field):
        message = f"{where} is not set; {fix}"
    else:
        got = describe(error.get("input"), field in hidden)
        should = f"must be {expected}" if path == field else error["msg"].replace("Input should", "should")
        message = f"{where} {should} (got {got}); {fix}"
    return InfraError(message, field=path, source=source)
