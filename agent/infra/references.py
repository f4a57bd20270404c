"""Steps 7-8 of job configuration resolution: block and variable references.

Prefect 3.8.8's `resolve_block_document_references` then `resolve_variables`, on a job
configuration that `resolve_job_configuration` already templated:

* `{"$ref": {"block_document_id": id}}` becomes that block document's `data`;
* `{{ prefect.blocks.<slug>.<name>[.path] }}` becomes the block's data, or `x` for a
  single-field `{"value": x}` block (secret, string, json…), or the value at `path`;
  a whole-string placeholder gives the raw value, an inline one `str(value)` (a dict or
  list inline is an error, as in Prefect);
* `{{ prefect.variables.<name> }}` becomes the variable's value (raw when whole, `str()`
  inline) or `""` when there is no such variable (Prefect does so, silently).

Blocks are resolved before variables, as in Prefect, so a block's value may hold variable
placeholders but not the other way round. Every value that came out of a secret field
(the block schema's `secret_fields`, and all of a `secret` block) is handed to `on_secret`
before it is used anywhere, so the log redactor masks it in every line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

from agent.api.blocks import read_block_document, read_block_document_by_name
from agent.api.client import PrefectClient
from agent.api.variables import read_variable
from agent.blocks.secrets import secret_parts
from agent.infra.templating import (
    BLOCK_PREFIX,
    PLACEHOLDER_RE,
    VARIABLE_PREFIX,
    InfraError,
    NotSet,
    lookup,
)

__all__ = ["resolve_references", "secret_values"]

_SECRET_BLOCK: Final = "secret"
_MISSING: Final = object()
_BLOCK_FIX: Final = (
    "create the block (Prefect UI: Blocks, or `prefect block create {slug}`) or fix the name "
    "in the work pool's base job template or the job variables"
)


def _leaves(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    if value is None or isinstance(value, bool):
        return []
    text = str(value)
    # a multi-line secret (a private key) may be logged line by line by a library
    lines = [line.strip() for line in text.splitlines()] if "\n" in text else []
    return [text, *(line for line in lines if line)]


def _at_path(data: Any, parts: list[str]) -> list[Any]:
    """Values at a `secret_fields` path; `*` stands for every key (Prefect's SecretDict)."""
    if not parts:
        return [data]
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(data, Mapping):
            # a credentials mapping: all but its identifiers (the project id stays readable)
            children = secret_parts(data) if not rest else list(data.values())
            return [v for child in children for v in _at_path(child, rest)]
        return [] if rest else [data]
    if isinstance(data, Mapping) and head in data:
        return _at_path(data[head], rest)
    return []


def secret_values(document: Mapping[str, Any]) -> list[str]:
    """Every secret string in a block document read with `include_secrets=true`."""
    data = document.get("data") or {}
    block_type = document.get("block_type") or {}
    if block_type.get("slug") == _SECRET_BLOCK:
        return _leaves(data)
    fields = (document.get("block_schema") or {}).get("fields") or {}
    found: list[str] = []
    for path in fields.get("secret_fields") or []:
        for value in _at_path(data, str(path).split(".")):
            found += _leaves(value)
    return found


def _where(path: str, source: str) -> str:
    return f"{path or 'the job configuration'}{f' of {source}' if source else ''}"


class _Resolver:
    def __init__(self, client: PrefectClient, on_secret: Callable[[str], None], source: str) -> None:
        self._client = client
        self._on_secret = on_secret
        self._source = source
        self._by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}
        self._variables: dict[str, Any] = {}

    # -- fetching (one request per distinct block / variable) ----------------------------------------

    def _remember(self, document: dict[str, Any]) -> dict[str, Any]:
        for secret in secret_values(document):
            self._on_secret(secret)
        return document

    async def _block_by_id(self, document_id: str, path: str) -> dict[str, Any]:
        if document_id not in self._by_id:
            document = await read_block_document(self._client, document_id)
            if document is None:
                raise InfraError(
                    f"block document {document_id} referenced at {_where(path, self._source)} "
                    "does not exist (it may have been deleted); point the $ref at an existing "
                    "block or create a new one",
                    field=path,
                    source=self._source,
                )
            self._by_id[document_id] = self._remember(document)
        return self._by_id[document_id]

    async def _block_by_name(self, slug: str, name: str, placeholder: str, path: str) -> dict[str, Any]:
        if (slug, name) not in self._by_name:
            document = await read_block_document_by_name(self._client, slug, name)
            if document is None:
                raise InfraError(
                    f"block '{slug}/{name}' used by {placeholder} at {_where(path, self._source)} "
                    f"does not exist; {_BLOCK_FIX.format(slug=slug)}",
                    field=path,
                    source=self._source,
                )
            self._by_name[(slug, name)] = self._remember(document)
        return self._by_name[(slug, name)]

    async def _variable(self, name: str) -> Any:
        if name not in self._variables:
            variable = await read_variable(self._client, name)
            self._variables[name] = _MISSING if variable is None else variable.value
        return self._variables[name]

    # -- blocks (step 7) ---------------------------------------------------------------------------------

    async def _block_value(self, name: str, placeholder: str, path: str) -> Any:
        parts = name.removeprefix(BLOCK_PREFIX).split(".", 2)
        if len(parts) < 2 or not all(parts[:2]):
            raise InfraError(
                f"{placeholder} at {_where(path, self._source)} is not a block reference; "
                "write {{ prefect.blocks.<block-type-slug>.<block-name>[.field] }}",
                field=path,
                source=self._source,
            )
        slug, doc_name, *keypath = parts
        data: Any = (await self._block_by_name(slug, doc_name, placeholder, path)).get("data") or {}
        names_value = bool(keypath) and (keypath[0] == "value" or keypath[0].startswith(("value.", "value[")))
        if isinstance(data, Mapping) and len(data) == 1 and "value" in data and not names_value:
            data = data["value"]  # as Prefect: single-value blocks unwrap unless the path says "value"
        if keypath:
            found = lookup(data, keypath[0])
            if found is NotSet:
                keys = ", ".join(sorted(data)) if isinstance(data, Mapping) else type(data).__name__
                raise InfraError(
                    f"{placeholder} at {_where(path, self._source)}: block '{slug}/{doc_name}' has "
                    f"no {keypath[0]!r} (it has: {keys}); fix the path after the block name",
                    field=path,
                    source=self._source,
                )
            data = found
        return copy.deepcopy(data)

    async def _blocks_in_string(self, text: str, path: str) -> Any:
        matches = {(full, name) for full, name in PLACEHOLDER_RE.findall(text)}
        blocks = [(full, name) for full, name in matches if name.startswith(BLOCK_PREFIX)]
        if not blocks:
            return text
        if len(matches) == 1 and blocks[0][0] == text:
            return await self._block_value(blocks[0][1], blocks[0][0], path)
        for full, name in sorted(blocks):
            value = await self._block_value(name, full, path)
            if isinstance(value, dict | list):
                raise InfraError(
                    f"{full} at {_where(path, self._source)} is a {type(value).__name__}, which "
                    "cannot be put inside a string; use a single field (e.g. '.value') or make "
                    "the placeholder the whole value",
                    field=path,
                    source=self._source,
                )
            text = text.replace(full, str(value))
        return text

    async def blocks(self, obj: Any, path: str = "") -> Any:
        if isinstance(obj, Mapping):
            ref = obj.get("$ref")
            if isinstance(ref, Mapping) and ref.get("block_document_id"):
                document = await self._block_by_id(str(ref["block_document_id"]), path)
                return copy.deepcopy(document.get("data") or {})
            return {k: await self.blocks(v, _join(path, k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [await self.blocks(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, str):
            return await self._blocks_in_string(obj, path)
        return obj

    # -- variables (step 8) -------------------------------------------------------------------------------

    async def variables(self, obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: await self.variables(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [await self.variables(v) for v in obj]
        if not isinstance(obj, str):
            return obj
        matches = set(PLACEHOLDER_RE.findall(obj))
        wanted = sorted((full, name) for full, name in matches if name.startswith(VARIABLE_PREFIX))
        if not wanted:
            return obj
        if len(matches) == 1 and wanted[0][0] == obj:
            value = await self._variable(wanted[0][1].removeprefix(VARIABLE_PREFIX))
            return "" if value is _MISSING else copy.deepcopy(value)
        for full, name in wanted:
            value = await self._variable(name.removeprefix(VARIABLE_PREFIX))
            obj = obj.replace(full, "" if value is _MISSING else str(value))
        return obj


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


async def resolve_references(
    obj: Any,
    client: PrefectClient,
    *,
    on_secret: Callable[[str], None],
    source: str = "",
) -> Any:
    """`obj` with block and variable references replaced; inputs are not modified.

    `source` describes where `obj` came from (e.g. "deployment 'etl/daily' in work pool
    'k8s'") for error messages. A missing block or a bad path raises `InfraError` naming
    the field it was found at; server errors (`ApiError`) pass through.
    """
    resolver = _Resolver(client, on_secret, source)
    return await resolver.variables(await resolver.blocks(obj))
