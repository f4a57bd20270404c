"""The five infrastructure blocks in code: configure them, save and load them on the server,
and run a command on them directly, as Prefect 2's blocks allowed.

    from agent.infra_blocks import CloudRunJob

    job = CloudRunJob(image="us-docker.pkg.dev/p/r/tools:1", region="us-central1",
                      credentials={"project": "p", "service_account_info": {...}})
    job.save("nightly", overwrite=True)          # shows and edits in the UI
    result = CloudRunJob.load("nightly").run(command=["dbt", "run"], env={"MODE": "full"})
    result.exit_code, result.oom, result.explanation, result.infrastructure_id

Field names and defaults are Prefect 2's (`agent.blocks` holds the models the UI's forms
are generated from), so a block made in the UI loads here and one saved here edits there.
`run` goes through the same kinds, customizations and backends as flow runs
(`agent.direct`); `arun` is its async twin. Like `run_deployment`, this is a library entry
point: the server and the agent's settings come from PREFECT_API_URL / FLOW_AGENT_*.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import anyio
from pydantic import ValidationError

from agent.api.blocks import read_block_document_by_name, register_block_type_and_schema, save_block_document
from agent.api.client import PrefectClient
from agent.blocks import get_block_spec
from agent.blocks.cloud import AzureContainerInstanceJobBlock, CloudRunJobBlock, ECSTaskBlock
from agent.blocks.models import KubernetesJobBlock, ProcessBlock
from agent.direct import DirectSession, Request, Result, Target
from agent.infra.fields import describe, error_path
from agent.observe.logging import get_logger
from agent.orchestrate.trigger import client_from_settings
from agent.settings import Settings

__all__ = [
    "AzureContainerInstanceJob",
    "BlockError",
    "CloudRunJob",
    "ECSTask",
    "EcsTask",
    "KubernetesJob",
    "Process",
    "Result",
]

B = TypeVar("B", bound="_Runnable")


class BlockError(ValueError):
    """One line: which block or field is wrong, and what to do."""


def _one_line(title: str, exc: ValidationError) -> BlockError:
    error = exc.errors(include_url=False)[0]
    field = error_path(error["loc"]) or "block"
    got = describe(error.get("input"), True)
    return BlockError(f"{title} field {field!r}: {error['msg']} (got {got}); fix that field")


class _Runnable:
    """What the five blocks share: save, load, run. The data are the model's fields."""

    slug: ClassVar[str]

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _one_line(type(self).__name__, exc) from None

    # -- the server ------------------------------------------------------------------------

    def save(self, name: str, *, overwrite: bool = False) -> str:
        """Save as the block `<slug>/<name>` (registering the block type if needed); its id."""
        return anyio.run(lambda: self.asave(name, overwrite=overwrite))

    async def asave(self, name: str, *, overwrite: bool = False, client: PrefectClient | None = None) -> str:
        async with _client(client) as api:
            spec = get_block_spec(self.slug)
            assert spec is not None
            registration = await register_block_type_and_schema(api, spec)
            data = self.model_dump(mode="json")  # type: ignore[attr-defined]
            existing = await read_block_document_by_name(api, self.slug, name)
            if existing is not None and not overwrite:
                raise BlockError(
                    f"a {self.slug} block named {name!r} exists already; pass overwrite=True to replace it"
                )
            existing_id = str(existing["id"]) if existing is not None else None
            return await save_block_document(api, registration, name, data, existing_id=existing_id)

    @classmethod
    def load(cls: type[B], name: str) -> B:
        """The saved block `<slug>/<name>`, made in code or in the UI."""
        return anyio.run(lambda: cls.aload(name))

    @classmethod
    async def aload(cls: type[B], name: str, *, client: PrefectClient | None = None) -> B:
        async with _client(client) as api:
            document = await read_block_document_by_name(api, cls.slug, name)
        if document is None:
            raise BlockError(
                f"no {cls.slug} block named {name!r}; `flow-agent blocks list` lists them, or save one first"
            )
        data = {k: v for k, v in (document.get("data") or {}).items() if k != "block_type_slug"}
        block = cls(**data)
        block._saved_name = name  # type: ignore[attr-defined]
        return block

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        output: Callable[[str], None] | None = None,
        image: str | None = None,
    ) -> Result:
        """Run `command` on this infrastructure to its end; output lines go to `output`
        (default: the `agent.infra_blocks` logger). No flow run is made."""
        return anyio.run(lambda: self.arun(command, env, output=output, image=image))

    async def arun(
        self,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        output: Callable[[str], None] | None = None,
        image: str | None = None,
    ) -> Result:
        data = self.model_dump(mode="json")  # type: ignore[attr-defined]
        target = Target.inline(self.slug, data, getattr(self, "_saved_name", ""))
        request = Request(list(command or ()), dict(env or {}), image)
        log = get_logger("agent.infra_blocks", block=target.ref)
        sink = output or (lambda line: log.info(line, stream="output"))
        async with DirectSession(_settings(), environ=dict(os.environ)) as session:
            return await session.run(target, request, output=sink)


def _settings() -> Settings:
    """The agent's settings from FLOW_AGENT_* / PREFECT_* (a library entry point, like
    `run_deployment`); a bad value is one line naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = ".".join(str(p) for p in error["loc"]) or "settings"
        variable = "PREFECT_API_URL" if name == "api_url" else f"FLOW_AGENT_{name.upper()}"
        raise BlockError(f"invalid setting {name!r} ({variable}): {error['msg']}") from None


def _client(client: PrefectClient | None) -> Any:
    if client is not None:
        return _Borrowed(client)
    return client_from_settings(_settings())


class _Borrowed:
    """A caller's open client, used without closing it."""

    def __init__(self, client: PrefectClient) -> None:
        self._client = client

    async def __aenter__(self) -> PrefectClient:
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        return None


class Process(_Runnable, ProcessBlock):
    slug: ClassVar[str] = "process"


class EcsTask(_Runnable, ECSTaskBlock):
    slug: ClassVar[str] = "ecs-task"


ECSTask = EcsTask  # prefect_aws's name


class CloudRunJob(_Runnable, CloudRunJobBlock):
    slug: ClassVar[str] = "cloud-run-job"


class AzureContainerInstanceJob(_Runnable, AzureContainerInstanceJobBlock):
    slug: ClassVar[str] = "azure-container-instance-job"


class KubernetesJob(_Runnable, KubernetesJobBlock):
    slug: ClassVar[str] = "kubernetes-job"
