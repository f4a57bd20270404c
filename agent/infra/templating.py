"""Prefect's `{{ placeholder }}` templating, re-implemented without importing `prefect`.

The rules mirror `prefect.utilities.templating.apply_values` (3.8.8) exactly, because pool
templates written for `prefect worker start` must render the same here:

* a string that is exactly one `{{ name }}` becomes the raw value (any JSON type);
* in any other string each placeholder becomes `str(value)`;
* a missing value removes the dict key / list item (whole-string case) or the substring;
* `name` may be dotted or indexed (`a.b`, `a[0]`);
* `{{ $VAR }}` reads the environment mapping it is *given* (never `os.environ`), always as
  a string, and a missing variable becomes `""` even for a whole string (Prefect does so);
* `{{ prefect.blocks.* }}` and `{{ prefect.variables.* }}` are left intact: they need the
  server and are resolved later, asynchronously.

`InfraError` lives here because this is the bottom of the `agent.infra` import chain.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "BLOCK_PREFIX",
    "ENV_PREFIX",
    "PLACEHOLDER_RE",
    "VARIABLE_PREFIX",
    "InfraError",
    "NotSet",
    "apply_values",
    "find_placeholders",
    "lookup",
]

# Same pattern as Prefect's PLACEHOLDER_CAPTURE_REGEX: group 1 is the whole match
# (whitespace variants such as `{{x}}` and `{{ x }}` are distinct matches), group 2 the name.
PLACEHOLDER_RE: Final = re.compile(r"({{\s*([\w\.\-\[\]$]+)\s*}})")
BLOCK_PREFIX: Final = "prefect.blocks."
VARIABLE_PREFIX: Final = "prefect.variables."
ENV_PREFIX: Final = "$"

_NO_ENV: Final[Mapping[str, str]] = MappingProxyType({})


class InfraError(Exception):
    """Bad infrastructure input: fails one run, never the agent.

    `str()` is one line naming the field, the source and the fix. It must never contain a
    secret (environment values in particular), because it is logged and sent to the server
    as the CRASHED state message.
    """

    def __init__(self, message: str, *, field: str, source: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.source = source


class _NotSetType:
    """Sentinel for "no value": distinct from None, which is a real JSON value."""

    _instance: _NotSetType | None = None

    def __new__(cls) -> _NotSetType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NotSet"

    def __bool__(self) -> bool:
        return False

    def __copy__(self) -> _NotSetType:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _NotSetType:
        return self


NotSet: Final = _NotSetType()


def _is_deferred(name: str) -> bool:
    """Block and variable references need the server; another pass resolves them."""
    return name.startswith((BLOCK_PREFIX, VARIABLE_PREFIX))


def find_placeholders(obj: Any) -> set[str]:
    """Every placeholder name in a JSON-like object (`"a.b"`, `"$HOME"`, `"prefect.blocks.x.y"`)."""
    if isinstance(obj, str):
        return {name for _, name in PLACEHOLDER_RE.findall(obj)}
    if isinstance(obj, Mapping):
        return set().union(*(find_placeholders(v) for v in obj.values()))
    if isinstance(obj, list | tuple):
        return set().union(*(find_placeholders(v) for v in obj))
    return set()


def lookup(values: Any, name: str, default: Any = NotSet) -> Any:
    """Prefect's `get_from_dict`: `a.b[0]` walks dicts and lists; any miss gives `default`.

    Like Prefect, every path part that parses as an int is used as an int, so `a.0` indexes
    a list (and cannot reach a dict key "0").
    """
    value = values
    try:
        for part in name.replace("[", ".").replace("]", "").split("."):
            key: int | str
            try:
                key = int(part)
            except ValueError:
                key = part
            value = value[key]
    except (TypeError, KeyError, IndexError):
        return default
    return value


def _render_string(template: str, values: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    matches = set(PLACEHOLDER_RE.findall(template))
    if all(_is_deferred(name) for _, name in matches):
        return template
    if len(matches) == 1:
        ((full, name),) = matches
        if full == template and not name.startswith(ENV_PREFIX):
            value = lookup(values, name)
            # Copy: the value is inserted raw and must not alias the caller's variables.
            return value if value is NotSet else copy.deepcopy(value)

    def substitute(match: re.Match[str]) -> str:
        full, name = match.group(1, 2)
        if _is_deferred(name):
            return full
        if name.startswith(ENV_PREFIX):
            value: Any = environ.get(name.lstrip(ENV_PREFIX), NotSet)
        else:
            value = lookup(values, name)
        return "" if value is NotSet else str(value)

    # One pass: an inserted value is never scanned again. Prefect replaces placeholder
    # after placeholder in set order, so a value that itself contains "{{ }}" may or may
    # not be expanded depending on hash order; for any other value the result is the same.
    return PLACEHOLDER_RE.sub(substitute, template)


def apply_values(template: Any, values: Mapping[str, Any], *, environ: Mapping[str, str] = _NO_ENV) -> Any:
    """Fill `{{ }}` placeholders in `template` (a JSON-like object) from `values`.

    Returns a new object; inputs are not modified. A top-level string that is exactly one
    missing placeholder returns `NotSet`. Raises `ValueError` for non-JSON types, as
    Prefect does.
    """
    if template is NotSet or template is None or isinstance(template, int | float):
        return template  # bool is an int: returned as is too
    if isinstance(template, str):
        return _render_string(template, values, environ)
    if isinstance(template, Mapping):
        rendered = {k: apply_values(v, values, environ=environ) for k, v in template.items()}
        return {k: v for k, v in rendered.items() if v is not NotSet}
    if isinstance(template, list | tuple):
        items = (apply_values(v, values, environ=environ) for v in template)
        return [v for v in items if v is not NotSet]
    raise ValueError(f"unexpected template type {type(template).__name__!r}")
