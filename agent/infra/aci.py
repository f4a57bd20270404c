"""The Azure Container Instances kind: an `azure-container-instance` pool or a Prefect 2
`azure-container-instance-job` block -> one container group.

Both sources become one `AciConfig` with the fields and defaults of Prefect 3.8.8's
`AzureContainerJobConfiguration` (prefect-azure 0.4.13) and of the 2.x block. The payload
is the REST request that creates the group: `{"subscription_id", "resource_group",
"container_group_name", "api_version", "container_group": <ContainerGroup body>}`.

Prefect 3 deploys the pool's `arm_template` as an ARM deployment; here the container
group resource of that template (`resources[0]`) is the base of the body instead, with
its `[parameters('...')]` expressions evaluated: `container_group_name` and
`container_name` are the run's group name, other parameters need a literal
`defaultValue`. `location` comes from a `location` key (job variable or block field),
else the parameter's literal default; when neither exists (the stock
`[resourceGroup().location]`) the body has no `location` and the backend puts in the
resource group's location, the one value it has to look up.

**Customizations target the container group body** (`/properties/containers/0/...`),
like the Kubernetes kind targets its manifest: from a `customizations` key in the pool's
resolved job configuration or in the block data (a list or a JSON string);
`customizations()` returns them re-rooted under `/container_group`.

Environment values named PREFECT_API_KEY, PREFECT_API_AUTH_STRING or listed in the
`secure_env` names go in `secureValue`, which Azure never shows back.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr

from agent.infra.container import (
    COMMON_HINTS,
    DEFAULT_COMMAND,
    merged_env,
    require_template_object,
    reroot,
    validate_fields,
)
from agent.infra.fields import Command, EnvHidingModel, EnvName, EnvValue, StreamOutput
from agent.infra.patch import parse_customizations
from agent.infra.spec import RunContext
from agent.infra.templating import InfraError

__all__ = [
    "ENV_SECRETS",
    "AciConfig",
    "AciCredentials",
    "AciKind",
    "AciRuntime",
    "AcrIdentity",
    "RegistryLogin",
]

ENV_SECRETS: Final = frozenset({"PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"})
DEFAULT_ENTRYPOINT: Final = "/opt/prefect/entrypoint.sh"
API_VERSION: Final = "2022-09-01"  # the one of Prefect's template
_GROUP_TYPE: Final = "Microsoft.ContainerInstance/containerGroups"
_BODY_KEYS: Final = ("location", "tags", "zones", "identity", "properties")
_PARAMETER_RE: Final = re.compile(r"\[parameters\('([^']+)'\)\]")
_GROUP_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_TAG_FORBIDDEN: Final = re.compile(r"[<>%&\\?/]")
_OMIT: Final = object()  # a parameter whose value the backend fills in (location)


class AciCredentials(BaseModel):
    """A service principal; all three set -> ClientSecretCredential, else DefaultAzureCredential."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: SecretStr | None = None
    credential_kwargs: dict[str, Any] = Field(default_factory=dict, repr=False)


class RegistryLogin(BaseModel):
    """A private registry with a user name and password (DockerRegistry(Credentials))."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    registry_url: str
    username: str
    password: SecretStr


class AcrIdentity(BaseModel):
    """An Azure Container Registry pulled with a user-assigned managed identity."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    registry_url: str
    identity: str


class AciConfig(EnvHidingModel):
    """One container group to create. The repr hides env values and every credential."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    image: str = Field(min_length=1)
    resource_group_name: str = Field(min_length=1)
    subscription_id: SecretStr
    identities: list[str] | None = None
    entrypoint: str | None = DEFAULT_ENTRYPOINT
    # the two shapes carry no type tag: one with an "identity" is a managed identity
    image_registry: AcrIdentity | RegistryLogin | None = Field(default=None, union_mode="left_to_right")
    cpu: PositiveFloat = 1.0
    gpu_count: PositiveInt | None = None
    gpu_sku: str | None = None
    memory: PositiveFloat = 1.0  # GB
    subnet_ids: list[str] | None = None
    dns_servers: list[str] | None = None
    stream_output: StreamOutput = False
    aci_credentials: AciCredentials = Field(default_factory=AciCredentials)
    task_start_timeout_seconds: PositiveInt = 240
    task_watch_poll_interval: PositiveFloat = 5.0
    keep_container_group: StreamOutput = False
    command: Command = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    secure_env: tuple[str, ...] = ()  # more env names whose values go in secureValue
    labels: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    location: str | None = None
    api_version: str = API_VERSION
    # the pool's ARM container group resource and the literal defaults of its parameters
    container_group: dict[str, Any] | None = Field(default=None, repr=False)
    arm_parameters: dict[str, Any] = Field(default_factory=dict, repr=False)
    customizations: tuple[dict[str, Any], ...] = Field(default=(), repr=False)


@dataclass(frozen=True)
class AciRuntime:
    """What the ACI backend needs beyond the payload: the run's Azure identity, its start
    deadline, and whether the container group is kept once the run is over."""

    credentials: AciCredentials = field(default_factory=AciCredentials, repr=False)
    start_timeout_seconds: float = 240.0
    keep_container_group: bool = False
    stream_output: bool = False  # ship the container's output to the run's logs


class AciKind:
    """ACI container groups from `azure-container-instance` pools and blocks."""

    kind: ClassVar[str] = "aci"

    def config_from_pool(self, resolved: Mapping[str, Any], *, pool_type: str, source: str) -> AciConfig:
        require_template_object(resolved, "job configuration", source)
        data = dict(resolved)
        if "arm_template" in resolved:
            data.update(_from_arm_template(resolved["arm_template"], source))
        return _validate(data, source, "job variable")

    def config_from_block(self, data: Mapping[str, Any], *, source: str) -> AciConfig:
        require_template_object(data, "block data", source)
        fields = {key: value for key, value in data.items() if value is not None}
        for key in ("container_group", "arm_parameters", "api_version"):
            fields.pop(key, None)  # ours, never a block's
        return _validate(fields, source, "field")

    def build_payload(self, config: BaseModel, ctx: RunContext) -> dict[str, Any]:
        assert isinstance(config, AciConfig), type(config)
        # Prefect 3 names the group after the flow whatever `name` says
        group = _group_name(ctx.labels.get("prefect.io/flow-name") or config.name or ctx.flow_run_name, ctx)
        body = _base_body(config, group)
        container = body["properties"]["containers"][0]
        container["name"] = container.get("name") or group
        props = container.setdefault("properties", {})
        props["image"] = config.image
        command = config.command or list(DEFAULT_COMMAND)
        # an ACI command replaces the image's entrypoint, which Prefect images need
        props["command"] = [config.entrypoint, *command] if config.entrypoint else command
        props["environmentVariables"] = _environment(config, ctx)
        requests = props.setdefault("resources", {}).setdefault("requests", {})
        requests.update(cpu=config.cpu, memoryInGB=config.memory)
        if config.gpu_count:
            requests["gpu"] = {"count": config.gpu_count, "sku": config.gpu_sku}
        _group_settings(config, body)
        tags = {**config.labels, **ctx.labels}
        if tags:
            tag_of = lambda key: _TAG_FORBIDDEN.sub("_", key)[:512]  # noqa: E731
            body["tags"] = {**(body.get("tags") or {}), **{tag_of(k): str(v)[:256] for k, v in tags.items()}}
        return {
            "subscription_id": config.subscription_id.get_secret_value(),
            "resource_group": config.resource_group_name,
            "container_group_name": group,
            "api_version": config.api_version,
            "container_group": body,
        }

    def customizations(self, config: BaseModel) -> list[dict[str, Any]]:
        assert isinstance(config, AciConfig), type(config)
        return reroot(config.customizations, "/container_group")

    def runtime(self, config: BaseModel) -> AciRuntime:
        assert isinstance(config, AciConfig), type(config)
        return AciRuntime(
            credentials=config.aci_credentials,
            start_timeout_seconds=float(config.task_start_timeout_seconds),
            keep_container_group=bool(config.keep_container_group),
            stream_output=bool(config.stream_output),
        )


# ---------------------------------------------------------------- building the payload


def _group_name(base: str, ctx: RunContext) -> str:
    """Prefect 3's `<slug of the flow name>-<flow run id>`, short enough for "prefect-<name>"."""
    slug = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", slug)).strip("-")
    slug = slug[: max(55 - len(ctx.flow_run_id), 1)].strip("-") or "prefect"
    return f"{slug}-{ctx.flow_run_id}".lower()


def _base_body(config: AciConfig, group: str) -> dict[str, Any]:
    if config.container_group is None:  # a block: Prefect 2's fixed group shape
        body: dict[str, Any] = {"location": config.location} if config.location else {}
        container = {"name": group, "properties": {}}
        body["properties"] = {"containers": [container], "osType": "Linux", "restartPolicy": "Never"}
        return body
    params = {**config.arm_parameters, "container_group_name": group, "container_name": group}
    params["location"] = config.location or config.arm_parameters.get("location", _OMIT)
    body = _evaluate(config.container_group, params, "arm_template.resources[0]", "")
    return body


def _environment(config: AciConfig, ctx: RunContext) -> list[dict[str, str]]:
    env = merged_env(ctx.env, config.env)
    secure = ENV_SECRETS | set(config.secure_env)
    return [
        {"name": name, "secureValue": value} if name in secure else {"name": name, "value": value}
        for name, value in env.items()
    ]


def _group_settings(config: AciConfig, body: dict[str, Any]) -> None:
    """Registry, identities, network: set only when configured, as Prefect does."""
    props = body["properties"]
    registry = config.image_registry
    if isinstance(registry, AcrIdentity):
        props["imageRegistryCredentials"] = [{"server": registry.registry_url, "identity": registry.identity}]
    elif isinstance(registry, RegistryLogin):
        props["imageRegistryCredentials"] = [
            {"server": registry.registry_url, "username": registry.username,
             "password": registry.password.get_secret_value()}
        ]  # fmt: skip
    if config.identities:
        # only the keys count; Azure ignores the values
        identities = {identity: {} for identity in config.identities}
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": identities}
    if config.subnet_ids:
        props["subnetIds"] = [{"id": subnet} for subnet in config.subnet_ids]
    if config.dns_servers:
        props["dnsConfig"] = {"nameServers": list(config.dns_servers)}


# ---------------------------------------------------------------- the pool's ARM template


def _from_arm_template(template: Any, source: str) -> dict[str, Any]:
    """The container group resource, its parameters, and the cpu/memory Prefect would send."""

    def bad(path: str, problem: str) -> InfraError:
        return InfraError(
            f"arm_template{path} from {source} {problem}; reset the base job template with "
            "`prefect work-pool get-default-base-job-template --type azure-container-instance`",
            field=f"arm_template{path}",
            source=source,
        )

    resources = template.get("resources") if isinstance(template, Mapping) else None
    if not (isinstance(resources, list) and resources and isinstance(resources[0], Mapping)):
        raise bad(".resources", "has no resource")
    resource = resources[0]
    if resource.get("type") != _GROUP_TYPE:
        raise bad(".resources[0].type", f"is not {_GROUP_TYPE!r}")
    props = resource.get("properties")
    containers = props.get("containers") if isinstance(props, Mapping) else None
    if not (isinstance(containers, list) and containers and isinstance(containers[0], Mapping)):
        raise bad(".resources[0].properties.containers", "has no container")
    if props.get("restartPolicy", "Never") != "Never":
        raise bad(".resources[0].properties.restartPolicy", "is not 'Never' (a run must not restart)")
    parameters = template.get("parameters") or {}
    defaults = {
        name: spec["defaultValue"]
        for name, spec in (parameters.items() if isinstance(parameters, Mapping) else ())
        if isinstance(spec, Mapping) and "defaultValue" in spec and not _is_expression(spec["defaultValue"])
    }
    body = {key: copy.deepcopy(resource[key]) for key in _BODY_KEYS if key in resource}
    # fail now, not at launch, on an expression that cannot be evaluated
    probe = {**defaults, "container_group_name": "x", "container_name": "x", "location": _OMIT}
    _evaluate(body, probe, "arm_template.resources[0]", source)
    extracted: dict[str, Any] = {"container_group": body, "arm_parameters": defaults}
    extracted["api_version"] = resource.get("apiVersion") or API_VERSION
    requests = ((containers[0].get("properties") or {}).get("resources") or {}).get("requests") or {}
    if "cpu" in requests:
        extracted["cpu"] = requests["cpu"]
    if "memoryInGB" in requests:
        extracted["memory"] = requests["memoryInGB"]
    return extracted


def _is_expression(value: Any) -> bool:
    # "[[...]" is ARM's escape for a literal string starting with "["
    if not isinstance(value, str):
        return False
    return value.startswith("[") and value.endswith("]") and not value.startswith("[[")


def _evaluate(node: Any, params: Mapping[str, Any], path: str, source: str) -> Any:
    """`node` with `[parameters('x')]` replaced; keys whose value is `_OMIT` are dropped."""
    if isinstance(node, Mapping):
        items = ((k, _evaluate(v, params, f"{path}.{k}", source)) for k, v in node.items())
        return {key: value for key, value in items if value is not _OMIT}
    if isinstance(node, list):
        return [_evaluate(v, params, f"{path}[{i}]", source) for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith("[["):
        return node[1:]
    if not _is_expression(node):
        return node
    match = _PARAMETER_RE.fullmatch(node)
    if match and match.group(1) in params:
        value = params[match.group(1)]
        return value if value is _OMIT else copy.deepcopy(value)
    raise InfraError(
        f"{path} from {source} uses the ARM expression {node[:80]!r}, which flow-agent does not "
        "evaluate; replace it with a literal value or a parameter with a literal defaultValue",
        field=path,
        source=source,
    )


# ---------------------------------------------------------------- validation

_HINTS: Final[dict[str, tuple[str, str]]] = {
    **COMMON_HINTS,
    "image": ("an image reference", 'set it to an image such as "prefecthq/prefect:3-latest"'),
    "resource_group_name": ("a resource group name", "set it to the resource group to run in"),
    "subscription_id": ("a subscription id", "set it to the Azure subscription id"),
    "identities": ("a list of identity resource ids", "give a list of strings"),
    "entrypoint": ("a path or null", 'set it to "/opt/prefect/entrypoint.sh" or null'),
    "image_registry": (
        "registry credentials {registry_url, username, password} or {registry_url, identity}",
        "point it at a docker-registry-credentials block or give an ACR identity",
    ),
    "cpu": ("a number of CPUs > 0", "give a number such as 1 or 0.5"),
    "memory": ("a number of GB > 0", "give memory in GB as a number such as 1.5 (not '1Gi')"),
    "gpu_count": ("a whole number > 0 or null", "give a whole number with a gpu_sku, or null"),
    "gpu_sku": ("a GPU SKU string or null", "give an SKU such as V100, or null"),
    "subnet_ids": ("a list of subnet resource ids", "give a list of strings"),
    "dns_servers": ("a list of DNS server addresses", "give a list of strings"),
    "keep_container_group": ("a boolean", "set it to true or false"),
    "aci_credentials": (
        "an ACI credentials object",
        "point it at an azure-container-instance-credentials block",
    ),
    "task_start_timeout_seconds": ("a number of seconds > 0", "give whole seconds, e.g. 240"),
    "task_watch_poll_interval": ("a number of seconds > 0", "give seconds, e.g. 5"),
    "secure_env": ("a list of env names", 'give names such as ["DB_PASSWORD"]'),
    "location": ("an Azure region or null", 'set it to a region such as "westeurope"'),
}
# values never echoed: secrets, or objects that hold some
_HIDDEN: Final = frozenset({"env", "command", "subscription_id", "aci_credentials", "image_registry"})
# unions: their per-shape errors would name a model class, so errors name the field
_UNIONS: Final = frozenset({"image_registry"})


def _validate(data: dict[str, Any], source: str, noun: str) -> AciConfig:
    """The typed config or an `InfraError` for the first problem (never chained: it holds input)."""
    data["customizations"] = parse_customizations(
        data.get("customizations"), field="customizations", source=source
    )
    config = validate_fields(
        AciConfig, data, source=source, noun=noun, hints=_HINTS, hidden=_HIDDEN, whole=_UNIONS
    )
    if bool(config.gpu_count) != bool(config.gpu_sku):
        raise InfraError(
            f"{noun}s 'gpu_count' and 'gpu_sku' from {source} must be set together; "
            "set both (e.g. 1 and V100) or neither",
            field="gpu_count" if not config.gpu_count else "gpu_sku",
            source=source,
        )
    return config
