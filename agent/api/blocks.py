"""Block endpoints: documents (behind references and legacy blocks) and type registration.

Every call goes through `PrefectClient.request`, so the one retry policy and the one error
classification apply. Block documents are always read with `include_secrets=true` (as the
Python client does): a masked `"********"` would silently become a container's password.

Registration follows Prefect's own `Block.register_type_and_schema` (protocol reference
§8): the block type is read by slug and created or patched; the schema is POSTed and the
server answers with the existing row when the same fields and version are known already.

Two server habits make that unsafe next to Prefect's collections, whose types can share a
name with ours (prefect-kubernetes' `k8s-job` is "Kubernetes Job", like our `kubernetes-job`):
`POST /block_types/` reads the new row back by *name*, so it may answer with the other type;
and `POST /block_schemas/` dedups on checksum and version *whatever the block type*, so a
schema once filed under the wrong type keeps coming back. Every answer is checked against
our slug and our type id, and a misfiled schema is repaired (see `_own_schema`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

from agent.api.client import PrefectClient
from agent.api.errors import Conflict, NotFound
from agent.api.models import FILTER_PAGE

__all__ = [
    "BlockTypeSpec",
    "Registration",
    "list_block_documents",
    "read_block_document",
    "read_block_document_by_name",
    "register_block_type_and_schema",
    "save_block_document",
]

SCHEMA_VERSION: Final = "non-versioned"  # Prefect's DEFAULT_BLOCK_SCHEMA_VERSION
# Only for a schema whose usual row is held by another block type and used by its documents.
SIDESTEP_VERSION: Final = "non-versioned+flow-agent"
_TYPE_FIELDS: Final = ("logo_url", "documentation_url", "description", "code_example")


@dataclass(frozen=True)
class BlockTypeSpec:
    """What the UI needs to offer one block type: its card and the form (`fields`).

    `references` maps a field to the slug of a block type it embeds (credentials); at
    registration the field becomes a block selector if the server knows that type.
    """

    name: str
    slug: str
    description: str
    fields: Mapping[str, Any]
    code_example: str = ""
    documentation_url: str | None = None
    logo_url: str | None = None
    capabilities: tuple[str, ...] = ()
    references: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    slug: str
    block_type_id: str
    block_schema_id: str
    block_type: Literal["created", "updated", "unchanged"]
    # "repaired": the schema had been filed under another block type (see `_own_schema`).
    block_schema: Literal["created", "unchanged", "repaired"]


# -- block documents ----------------------------------------------------------------------------


async def read_block_document(client: PrefectClient, document_id: str) -> dict[str, Any] | None:
    """The block document with its secrets in clear; None if there is none with this id."""
    try:
        doc: dict[str, Any] = await client.request(
            "GET", f"/block_documents/{document_id}", params={"include_secrets": "true"}
        )
    except NotFound:
        return None
    return doc


async def read_block_document_by_name(client: PrefectClient, slug: str, name: str) -> dict[str, Any] | None:
    """`<slug>/<name>` with its secrets in clear; None if the type or the document is unknown."""
    path = f"/block_types/slug/{quote(slug, safe='')}/block_documents/name/{quote(name, safe='')}"
    try:
        doc: dict[str, Any] = await client.request("GET", path, params={"include_secrets": "true"})
    except NotFound:
        return None
    return doc


async def save_block_document(
    client: PrefectClient,
    registration: Registration,
    name: str,
    data: dict[str, Any],
    *,
    existing_id: str | None = None,
) -> str:
    """Create the document `name` of a registered type, or replace the data of `existing_id`
    (its schema moved to the registered one); its id."""
    if existing_id is not None:
        body = {"data": data, "merge_existing_data": False, "block_schema_id": registration.block_schema_id}
        await client.request("PATCH", f"/block_documents/{existing_id}", json=body)
        return existing_id
    body = {
        "name": name,
        "data": data,
        "block_type_id": registration.block_type_id,
        "block_schema_id": registration.block_schema_id,
    }
    created = await client.request("POST", "/block_documents/", json=body)
    return str(created["id"])


async def list_block_documents(client: PrefectClient, slugs: Sequence[str]) -> list[dict[str, Any]]:
    """Named (non-anonymous) documents of these block types, secrets masked, by name."""
    docs: list[dict[str, Any]] = []
    while True:
        body = {
            "block_types": {"slug": {"any_": list(slugs)}},
            "block_documents": {"is_anonymous": {"eq_": False}},
            "include_secrets": False,
            "limit": FILTER_PAGE,
            "offset": len(docs),
        }
        page = await client.request("POST", "/block_documents/filter", json=body) or []
        docs.extend(page)
        if len(page) < FILTER_PAGE:
            return docs


# -- registration ----------------------------------------------------------------------------------


async def _latest_schema(client: PrefectClient, block_type_id: str) -> dict[str, Any] | None:
    body = {"block_schemas": {"block_type_id": {"any_": [block_type_id]}}, "limit": 1}
    found = await client.request("POST", "/block_schemas/filter", json=body) or []
    return found[0] if found else None


async def _schema_ids(client: PrefectClient, block_type_id: str) -> set[str]:
    body = {"block_schemas": {"block_type_id": {"any_": [block_type_id]}}, "limit": 200}
    return {s["id"] for s in await client.request("POST", "/block_schemas/filter", json=body) or []}


async def _block_type_by_slug(client: PrefectClient, slug: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await client.request("GET", f"/block_types/slug/{quote(slug, safe='')}")
    except NotFound:
        return None
    return found


async def _upsert_block_type(
    client: PrefectClient, spec: BlockTypeSpec
) -> tuple[dict[str, Any], Literal["created", "updated", "unchanged"]]:
    wanted = {
        "logo_url": spec.logo_url,
        "documentation_url": spec.documentation_url,
        "description": spec.description,
        "code_example": spec.code_example,
    }
    existing = await _block_type_by_slug(client, spec.slug)
    if existing is None:
        body = {"name": spec.name, "slug": spec.slug, **wanted}
        try:
            answer: dict[str, Any] = await client.request("POST", "/block_types/", json=body)
        except Conflict:  # created meanwhile (another registration, or a retried POST)
            answer = {}
        # The server answers with the first type of that *name*: only the slug is unique.
        if answer.get("slug") == spec.slug:
            return answer, "created"
        created = await _block_type_by_slug(client, spec.slug)
        if created is None:
            raise NotFound(f"block type {spec.slug!r} is missing right after it was created", status=404)
        return created, "created"
    if all(existing.get(k) == wanted[k] for k in _TYPE_FIELDS):
        return existing, "unchanged"
    # The name is not updatable (BlockTypeUpdate has no `name`); the card text is.
    await client.request("PATCH", f"/block_types/{existing['id']}", json=wanted)
    return existing, "updated"


async def _embed_references(client: PrefectClient, spec: BlockTypeSpec) -> dict[str, Any]:
    """Turn each `references` field into a selector of documents of that block type.

    Prefect's form: the property `$ref`s a definition carrying `block_type_slug`, and
    `block_schema_references` names the nested schema by checksum. A type the server does
    not know (an old or trimmed server) leaves the field a plain object, which still works
    for data typed in as JSON.
    """
    fields = copy.deepcopy(dict(spec.fields))
    refs: dict[str, Any] = {}
    secret_fields: list[str] = list(fields.get("secret_fields", []))
    for name, slug in spec.references.items():
        try:
            block_type = await client.request("GET", f"/block_types/slug/{slug}")
        except NotFound:
            continue
        nested = await _latest_schema(client, block_type["id"])
        if nested is None:
            continue
        nested_fields = dict(nested["fields"])
        title = str(nested_fields.get("title") or slug)
        definitions = fields.setdefault("definitions", {})
        # Prefect keeps every definition at the top level, the nested ones' own included.
        definitions.update(nested_fields.pop("definitions", {}))
        definitions[title] = nested_fields
        prop = fields["properties"][name]
        keep = {k: prop[k] for k in ("title", "description", "position") if k in prop}
        ref = {"$ref": f"#/definitions/{title}"}
        required = name in fields.get("required", [])
        fields["properties"][name] = {
            **keep,
            **(ref if required else {"anyOf": [ref, {"type": "null"}], "default": None}),
        }
        refs[name] = {"block_type_slug": slug, "block_schema_checksum": nested["checksum"]}
        secret_fields += [f"{name}.{s}" for s in nested_fields.get("secret_fields", [])]
    fields["block_schema_references"] = refs
    fields["secret_fields"] = secret_fields
    return fields


async def register_block_type_and_schema(client: PrefectClient, spec: BlockTypeSpec) -> Registration:
    """Create or update the block type, then make sure the schema exists. Idempotent.

    A changed schema is a new row (schemas are immutable); the UI offers the newest one,
    older documents keep theirs.
    """
    block_type, type_action = await _upsert_block_type(client, spec)
    fields = await _embed_references(client, spec)
    known = await _schema_ids(client, block_type["id"])
    body = {
        "fields": fields,
        "block_type_id": block_type["id"],
        "capabilities": list(spec.capabilities),
        "version": SCHEMA_VERSION,
    }
    schema, deleted_misfiled = await _own_schema(client, body)
    if schema["id"] in known:
        action: Literal["created", "unchanged", "repaired"] = "unchanged"
    else:
        action = "repaired" if deleted_misfiled else "created"
    return Registration(
        slug=spec.slug,
        block_type_id=str(block_type["id"]),
        block_schema_id=str(schema["id"]),
        block_type=type_action,
        block_schema=action,
    )


async def _own_schema(client: PrefectClient, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """POST the schema; the row of our type, and whether a misfiled copy was deleted first.

    The server dedups on checksum and version only, so the answer can be a row of another
    block type: ours (the checksum covers the fields, which name our slug), filed there by a
    registration that took the wrong type id (before this check). Unused, it is deleted (it
    is that type's newest schema, so the UI showed our form for it) and created again under
    our type. Used by documents, it stays, and ours takes another version, which the server
    answers with on every later run.
    """
    schema: dict[str, Any] = await client.request("POST", "/block_schemas/", json=body)
    if str(schema["block_type_id"]) == str(body["block_type_id"]):
        return schema, False
    deleted = not await _schema_in_use(client, str(schema["id"]))
    if deleted:
        with contextlib.suppress(NotFound):  # a retried DELETE finds it gone
            await client.request("DELETE", f"/block_schemas/{schema['id']}")
        schema = await client.request("POST", "/block_schemas/", json=body)
    else:
        schema = await client.request("POST", "/block_schemas/", json={**body, "version": SIDESTEP_VERSION})
    if str(schema["block_type_id"]) != str(body["block_type_id"]):
        raise Conflict(
            f"block schema {schema['id']} with our fields belongs to another block type", status=409
        )
    return schema, deleted


async def _schema_in_use(client: PrefectClient, schema_id: str) -> bool:
    body = {
        "block_schemas": {"id": {"any_": [schema_id]}},
        "block_documents": {"is_anonymous": None},  # anonymous ones (a deployment's) count too
        "limit": 1,
    }
    return bool(await client.request("POST", "/block_documents/filter", json=body))
