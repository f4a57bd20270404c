"""JSON Patch (RFC 6902) customizations, applied last to a request payload.

Prefect 2's infrastructure blocks took `customizations` / `task_customizations` as a
list of operations or a JSON string of one; both are accepted. A patch that does not
apply fails that run with the operation and the path that failed, never the values
(they may be secrets).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonpatch
import jsonpointer

from agent.infra.templating import InfraError

__all__ = ["apply_customizations", "parse_customizations"]

_OPS = {"add", "remove", "replace", "move", "copy", "test"}


def parse_customizations(value: Any, *, field: str, source: str) -> list[dict[str, Any]]:
    """A list of RFC 6902 operations from a list, a JSON string, or nothing."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InfraError(
                f"{field} from {source} is not valid JSON ({exc.msg} at character {exc.pos}); "
                "give a list of JSON Patch operations",
                field=field,
                source=source,
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(op, dict) for op in value):
        raise InfraError(
            f"{field} from {source} must be a list of JSON Patch operations like "
            '{"op": "add", "path": "/a/b", "value": 1}',
            field=field,
            source=source,
        )
    for index, op in enumerate(value):
        if op.get("op") not in _OPS or not isinstance(op.get("path"), str):
            raise InfraError(
                f"{field}[{index}] from {source} needs an 'op' ({', '.join(sorted(_OPS))}) and a "
                f"'path' string (got op={op.get('op')!r}, path={op.get('path')!r})",
                field=f"{field}[{index}]",
                source=source,
            )
    return value


def apply_customizations(
    payload: Any, operations: list[dict[str, Any]], *, field: str, source: str, target: str = "payload"
) -> Any:
    """`payload` with the operations applied, one at a time so a failure names its operation."""
    result = copy.deepcopy(payload)
    for index, op in enumerate(operations):
        try:
            result = jsonpatch.JsonPatch([op]).apply(result)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise InfraError(
                f"{field}[{index}] from {source} could not be applied to the {target}: "
                f"{op.get('op')} {op.get('path')!r} failed ({_reason(exc)}); fix the path "
                "(parents must exist; use 'add' to create a key, '/-' to append to a list)",
                field=f"{field}[{index}]",
                source=source,
            ) from None
    return result


def _reason(exc: Exception) -> str:
    # jsonpatch and jsonpointer echo documents and values in their messages; the payload
    # holds the run's environment, so keep only the structural part
    if isinstance(exc, jsonpatch.JsonPatchTestFailed):
        return "the 'test' value differs"
    text = re.sub(r" (in|of) [\[{].*$", "", str(exc), flags=re.S)
    return text[:200]
