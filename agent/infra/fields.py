"""Field types every infrastructure kind shares, and the words their errors are built from.

The annotated types validate job variables and block fields the way Prefect's pools take
them (`Command` splits a string like a shell, `EnvValue` turns numbers and booleans into
strings, `StreamOutput` accepts the two JSON words a `{{ $VAR }}` renders). Their own
errors use the pydantic error type `CUSTOM`: the message is already worded for the user,
and `ctx["fix"]` says what to do. `json_type`, `describe` and `error_path` turn any
pydantic error into the words of a one-line `InfraError`, never echoing a value.

Nothing here imports another kind: process.py and container.py build on this module.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, Strict
from pydantic_core import PydanticCustomError

__all__ = [
    "CUSTOM",
    "Command",
    "EnvHidingModel",
    "EnvName",
    "EnvValue",
    "StreamOutput",
    "custom_error",
    "describe",
    "error_path",
    "json_type",
]

# Error type of our own validators: their message is already worded for the user and
# `ctx["fix"]` says what to do.
CUSTOM: Final = "flow_agent"


def custom_error(message: str, fix: str, **ctx: str) -> PydanticCustomError:
    """A validator error of type `CUSTOM`; `message` may use `{name}` for the `ctx` values."""
    return PydanticCustomError(CUSTOM, message, {"fix": fix, **ctx})


def _split_command(value: Any) -> Any:
    """A string is split like a shell would; empty strings and lists mean "the default"."""
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:  # unbalanced quotes, trailing backslash
            raise custom_error(
                "could not be split into arguments ({reason})",
                "balance the quotes, or give the command as a list of strings",
                reason=str(exc),
            ) from None
        return parts or None
    if isinstance(value, list | tuple) and not value:
        return None
    return value


def _coerce_env_value(value: Any) -> Any:
    # Prefect coerces with str(), so True becomes "True"; objects and lists are rejected
    # here instead of being turned into their Python repr.
    return str(value) if isinstance(value, bool | int | float) else value


def _check_env_name(name: str) -> str:
    if not name or "=" in name or "\0" in name:
        raise custom_error(
            "is not a valid environment variable name",
            "use a non-empty name without '=' or NUL characters",
        )
    return name


def _check_env_value(value: str | None) -> str | None:
    if value is not None and "\0" in value:
        raise custom_error("contains a NUL character (value hidden)", "remove the NUL character")
    return value


def _bool_words(value: Any) -> Any:
    # `{{ $VAR }}` always renders a string, so accept the two JSON words; pydantic's lax
    # mode would also take "yes", "on", 1 ... which a JSON schema boolean does not.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


# argv; None (also from "" or []) means the kind's default command
Command = Annotated[list[str] | None, BeforeValidator(_split_command)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
# None unsets the variable
EnvValue = Annotated[str | None, BeforeValidator(_coerce_env_value), AfterValidator(_check_env_value)]
# a strict boolean that also takes the strings "true" and "false"
StreamOutput = Annotated[bool, Strict(), BeforeValidator(_bool_words)]


class EnvHidingModel(BaseModel):
    """A model whose repr shows the names of its `env` field only: the values are often secrets."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for field, value in super().__repr_args__():
            if field == "env":
                yield field, {key: "<hidden>" for key in value}
            else:
                yield field, value


_JSON_TYPES: Final = {
    dict: "object",
    list: "list",
    tuple: "list",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON name of `value`'s type ("object", "list", ...), else the Python one."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


# A string this short is shown ("yes", "on"): shorter than any secret the masking
# guarantees to hide (8 characters), and made of plain printable ASCII only, so its
# quoted form is the value itself.
_SHOWN_CHARS: Final = 7


def _plain(text: str) -> bool:
    return (
        len(text) <= _SHOWN_CHARS and text.isascii() and text.isprintable() and not set(text) & set("\\'\"")
    )


def describe(value: Any, hidden: bool) -> str:
    """`value` as an error shows it: never the value itself, only its type and size.

    Numbers, booleans, null and very short plain words are shown as they are (they
    explain the mistake and hide nothing); a field whose values are often secret shows
    its type only.
    """
    kind = json_type(value)
    if hidden:
        size = f" of {len(value)} characters" if isinstance(value, str) else ""
        return f"{kind}{size}, value hidden"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if _plain(value) else f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return f"a value of type {kind}"


def error_path(loc: tuple[int | str, ...]) -> str:
    """("env", "FOO") -> "env.FOO"; ("command", 0) -> "command[0]"; dict-key markers dropped."""
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
