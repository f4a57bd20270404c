"""The Prefect 2 infrastructure block types, as the Prefect UI needs them registered.

A stock Prefect 3 server knows none of them, so a deployment whose
`infrastructure_document_id` points at (say) an `ecs-task` document cannot even be shown,
and nobody can create one from the UI. `INFRASTRUCTURE_BLOCKS` holds each type's card
(name, description, docs link, code example) and its schema in Prefect's format, generated
from the pydantic models in `agent.blocks.models` and post-processed to Prefect's
conventions: `definitions` instead of `$defs`, `position` 0, 1, 2… in form order,
`secret_fields` for masking, `block_type_slug`, `block_schema_references` (filled in at
registration, when the server tells us the credentials blocks' checksums).

Which block types there are is the registry's (`agent.registry`: each kind's
`block_slug`); this module holds their cards. A slug without a card here, or a card no kind
names, fails at import rather than leave a block type out of the UI.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, SecretBytes, SecretStr

from agent.api.blocks import BlockTypeSpec
from agent.blocks.cloud import AzureContainerInstanceJobBlock, CloudRunJobBlock, ECSTaskBlock
from agent.blocks.models import KubernetesJobBlock, ProcessBlock
from agent.registry import REGISTRY, Registry

__all__ = [
    "CAPABILITY",
    "INFRASTRUCTURE_BLOCKS",
    "INFRASTRUCTURE_SLUGS",
    "block_schema_fields",
    "block_specs",
    "get_block_spec",
]

CAPABILITY: Final = "run-infrastructure"
_LOGO: Final = "https://cdn.sanity.io/images/3ugk85nk/production/"


def _secret_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Prefect's `_collect_secret_fields`: dotted paths of SecretStr fields, nested models too."""
    found: list[str] = []
    for name, info in model.model_fields.items():
        found += _secrets_in(info.annotation, f"{prefix}{name}")
    return found


def _secrets_in(annotation: Any, path: str) -> list[str]:
    if annotation in (SecretStr, SecretBytes):
        return [path]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _secret_fields(annotation, f"{path}.")
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found: list[str] = []
        for arg in typing.get_args(annotation):
            found += [p for p in _secrets_in(arg, path) if p not in found]
        return found
    return []


def block_schema_fields(model: type[BaseModel], *, slug: str, title: str) -> dict[str, Any]:
    """The block schema `fields` Prefect would generate for `model`, without references."""
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    definitions = schema.pop("$defs", None)
    properties: dict[str, Any] = schema["properties"]
    # `type` first as in Prefect 2 (declared on the base class there), then model order.
    order = ["type", *(name for name in properties if name != "type")]
    schema["properties"] = {
        name: {**properties[name], "position": position} for position, name in enumerate(order)
    }
    schema["title"] = title
    schema["block_type_slug"] = slug
    schema["secret_fields"] = _secret_fields(model)
    schema["block_schema_references"] = {}
    if definitions:
        schema["definitions"] = definitions
    return schema


def _code_example(slug: str, python_class: str) -> str:
    return (
        "Point a deployment at a saved block; flow-agent runs its flow runs on this "
        "infrastructure:\n"
        "```bash\n"
        f"flow-agent deployment set-infra my-flow/my-deployment {slug}/BLOCK_NAME\n"
        "```\n"
        "Use a field in a work pool's base job template:\n"
        "```json\n"
        f'{{"env": {{"FROM_BLOCK": "{{{{ prefect.blocks.{slug}.BLOCK_NAME.name }}}}"}}}}\n'
        "```\n"
        f"Documents saved by Prefect 2's `{python_class}` load unchanged."
    )


def _spec(
    model: type[BaseModel],
    *,
    name: str,
    slug: str,
    title: str,
    documentation_url: str,
    logo: str | None,
    python_class: str,
    references: Mapping[str, str] | None = None,
) -> BlockTypeSpec:
    description = (model.__doc__ or "").strip()
    return BlockTypeSpec(
        name=name,
        slug=slug,
        description=(
            f"{description} A Prefect 2 infrastructure block, run by flow-agent for deployments "
            "whose infrastructure document is one of these (`flow-agent deployment set-infra`)."
        ),
        fields=block_schema_fields(model, slug=slug, title=title),
        code_example=_code_example(slug, python_class),
        documentation_url=documentation_url,
        logo_url=f"{_LOGO}{logo}" if logo else None,
        capabilities=(CAPABILITY,),
        references=dict(references or {}),
    )


_CARDS: Final[tuple[BlockTypeSpec, ...]] = (
    _spec(
        ProcessBlock,
        name="Process",
        slug="process",
        title="Process",
        documentation_url="https://docs-2.prefect.io/latest/api-ref/prefect/infrastructure/#prefect.infrastructure.Process",
        logo=None,  # Prefect 2 had none of its own for Process
        python_class="prefect.infrastructure.Process",
    ),
    _spec(
        ECSTaskBlock,
        name="ECS Task",
        slug="ecs-task",
        title="ECSTask",
        documentation_url="https://prefecthq.github.io/prefect-aws/ecs/#prefect_aws.ecs.ECSTask",
        logo="d74b16fe84ce626345adf235a47008fea2869a60-225x225.png",
        python_class="prefect_aws.ecs.ECSTask",
        references={"aws_credentials": "aws-credentials"},
    ),
    _spec(
        CloudRunJobBlock,
        name="GCP Cloud Run Job",
        slug="cloud-run-job",
        title="CloudRunJob",
        documentation_url="https://prefecthq.github.io/prefect-gcp/cloud_run/#prefect_gcp.cloud_run.CloudRunJob",
        logo="10424e311932e31c477ac2b9ef3d53cefbaad708-250x250.png",
        python_class="prefect_gcp.cloud_run.CloudRunJob",
        references={"credentials": "gcp-credentials"},
    ),
    _spec(
        AzureContainerInstanceJobBlock,
        name="Azure Container Instance Job",
        slug="azure-container-instance-job",
        title="AzureContainerInstanceJob",
        documentation_url="https://prefecthq.github.io/prefect-azure/container_instance/#prefect_azure.container_instance.AzureContainerInstanceJob",
        logo="54e3fa7e00197a4fbd1d82ed62494cb58d08c96a-250x250.png",
        python_class="prefect_azure.container_instance.AzureContainerInstanceJob",
        references={"aci_credentials": "azure-container-instance-credentials"},
    ),
    _spec(
        KubernetesJobBlock,
        name="Kubernetes Job",
        slug="kubernetes-job",
        title="KubernetesJob",
        documentation_url="https://docs-2.prefect.io/latest/api-ref/prefect/infrastructure/#prefect.infrastructure.KubernetesJob",
        logo="2d0b896006ad463b49c28aaac14f31e00e32cfab-250x250.png",
        python_class="prefect.infrastructure.KubernetesJob",
        references={"cluster_config": "kubernetes-cluster-config"},
    ),
)


def block_specs(registry: Registry = REGISTRY) -> tuple[BlockTypeSpec, ...]:
    """The cards of the registry's block slugs, in the registry's order."""
    cards = {spec.slug: spec for spec in _CARDS}
    slugs = registry.block_slugs()
    if missing := [slug for slug in slugs if slug not in cards]:
        raise LookupError(
            f"block slug(s) {', '.join(missing)} of agent.registry have no block spec in agent.blocks"
        )
    if unused := [slug for slug in cards if slug not in slugs]:
        raise LookupError(
            f"block spec(s) {', '.join(unused)} in agent.blocks belong to no kind of agent.registry"
        )
    return tuple(cards[slug] for slug in slugs)


INFRASTRUCTURE_BLOCKS: Final[tuple[BlockTypeSpec, ...]] = block_specs()
INFRASTRUCTURE_SLUGS: Final[tuple[str, ...]] = tuple(spec.slug for spec in INFRASTRUCTURE_BLOCKS)


def get_block_spec(slug: str) -> BlockTypeSpec | None:
    return next((spec for spec in INFRASTRUCTURE_BLOCKS if spec.slug == slug), None)
