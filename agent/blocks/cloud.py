"""The Prefect 2 cloud infrastructure blocks: ECS task, Cloud Run job, ACI container group.

prefect-aws 0.4 `ECSTask`, prefect-gcp 0.5 `CloudRunJob`, prefect-azure 0.3
`AzureContainerInstanceJob`: field names, defaults and docs as users saw them in the UI.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from agent.blocks.models import InfrastructureBlock

__all__ = [
    "ACRManagedIdentity",
    "AzureContainerInstanceJobBlock",
    "CloudRunJobBlock",
    "DockerRegistry",
    "ECSTaskBlock",
]


class ECSTaskBlock(InfrastructureBlock):
    """Run a command as an ECS task."""

    type: Literal["ecs-task"] = Field(default="ecs-task", description="The slug for this task type.")
    aws_credentials: dict[str, Any] | None = Field(
        default=None,
        title="AWS Credentials",
        description="The AWS credentials to use to connect to ECS. Defaults to the agent's AWS environment.",
    )
    task_definition_arn: str | None = Field(
        default=None,
        title="Task Definition ARN",
        description=(
            "An identifier for an existing task definition to use. If fields are set on the "
            "`ECSTask` that conflict with the task definition, a new copy will be registered "
            "with the required values. Cannot be used with `task_definition`."
        ),
    )
    task_definition: dict[str, Any] | None = Field(
        default=None,
        description=(
            "A task definition to use, as a JSON object in the format of ECS "
            "RegisterTaskDefinition. Cannot be used with `task_definition_arn`."
        ),
    )
    family: str | None = Field(
        default=None,
        description=(
            "A family for the task definition. If not provided, it will be inferred from the "
            "task definition. If the task definition does not have a family, the name will be "
            "generated from the flow and deployment names."
        ),
    )
    image: str | None = Field(
        default=None,
        description=(
            "The image to use for the Prefect container in the task. If this value is not "
            "null, it will override the value in the task definition. Defaults to the "
            "Prefect image."
        ),
    )
    auto_deregister_task_definition: bool = Field(
        default=True,
        description="If set, any task definitions that are created by this block will be deregistered.",
    )
    cpu: int | None = Field(
        default=None,
        title="CPU",
        description="The amount of CPU to provide to the ECS task. Valid amounts are specified "
        "in the AWS documentation. If not provided, a default value of 1024 will be used.",
    )
    memory: int | None = Field(
        default=None,
        description="The amount of memory to provide to the ECS task. Valid amounts are specified "
        "in the AWS documentation. If not provided, a default value of 2048 will be used.",
    )
    execution_role_arn: str | None = Field(
        default=None,
        title="Execution Role ARN",
        description="An execution role to use for the task. This controls the permissions of "
        "the task when it is launching. If not provided, it will be taken from the task definition.",
    )
    configure_cloudwatch_logs: bool | None = Field(
        default=None,
        description="If `True`, the Prefect container will be configured to send its output to "
        "the AWS CloudWatch logs service. This functionality requires an execution role with "
        "logs:CreateLogStream, logs:CreateLogGroup, and logs:PutLogEvents permissions. The "
        "default for this field is `False` unless `stream_output` is set.",
    )
    cloudwatch_logs_options: dict[str, str] = Field(
        default_factory=dict,
        description="When `configure_cloudwatch_logs` is enabled, this setting may be used to "
        "pass additional options to the CloudWatch logs configuration or override the default "
        "options (awslogs-create-group, awslogs-region, awslogs-stream-prefix).",
    )
    stream_output: bool | None = Field(
        default=None,
        description="If `True`, logs will be streamed from the Prefect container to the local "
        "console. Unless you have configured AWS CloudWatch logs manually on your task "
        "definition, this requires the same prerequisites outlined in `configure_cloudwatch_logs`.",
    )
    launch_type: Literal["FARGATE", "EC2", "EXTERNAL", "FARGATE_SPOT"] | None = Field(
        default="FARGATE",
        description="The type of ECS task run infrastructure that should be used. Note that "
        "'FARGATE_SPOT' is not a formal ECS launch type, but we will configure the proper "
        "capacity provider strategy if set here.",
    )
    vpc_id: str | None = Field(
        default=None,
        title="VPC ID",
        description="The AWS VPC to link the task run to. This is only applicable when using "
        "the 'awsvpc' network mode for your task. FARGATE tasks require this network mode, but "
        "for EC2 tasks the default network mode is 'bridge'. If using the 'awsvpc' network mode "
        "and this field is null, your default VPC will be used. If no default VPC can be found, "
        "the task run will fail.",
    )
    cluster: str | None = Field(
        default=None,
        description="The ECS cluster to run the task in. The ARN or name may be provided. If "
        "not provided, the default cluster will be used.",
    )
    task_role_arn: str | None = Field(
        default=None,
        title="Task Role ARN",
        description="A role to attach to the task run. This controls the permissions of the task "
        "while it is running.",
    )
    task_customizations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="A list of JSON 6902 patches to apply to the task run request, e.g. "
        '[{"op": "add", "path": "/networkConfiguration/awsvpcConfiguration/securityGroups", '
        '"value": ["sg-1"]}].',
    )
    task_start_timeout_seconds: int = Field(
        default=120,
        description="The amount of time to watch for the start of the ECS task before marking "
        "it as failed. The task must enter a RUNNING state to be considered started.",
    )
    task_watch_poll_interval: float = Field(
        default=5.0,
        description="The amount of time to wait between AWS API calls while monitoring the state "
        "of an ECS task.",
    )


class CloudRunJobBlock(InfrastructureBlock):
    """Infrastructure block used to run GCP Cloud Run Jobs (Cloud Run Admin API v1)."""

    type: Literal["cloud-run-job"] = Field(
        default="cloud-run-job", description="The slug for this task type."
    )
    image: str = Field(
        title="Image Name",
        description="The image to use for a new Cloud Run Job. This value must refer to an "
        "image within either Google Container Registry or Google Artifact Registry, like "
        "`gcr.io/<project_name>/<repo>/`.",
    )
    region: str = Field(description="The region where the Cloud Run Job resides.")
    credentials: dict[str, Any] = Field(
        title="GCP Credentials",
        description="The GCP Credentials used to initiate the Cloud Run Job.",
    )
    cpu: int | None = Field(
        default=None,
        title="CPU",
        description="The amount of compute allocated to the Cloud Run Job. The int must be "
        "valid based on the rules specified at "
        "https://cloud.google.com/run/docs/configuring/cpu#setting-jobs .",
    )
    memory: int | None = Field(
        default=None,
        description="The amount of memory allocated to the Cloud Run Job.",
    )
    memory_unit: Literal["G", "Gi", "M", "Mi"] | None = Field(
        default=None,
        description="The unit of memory. See "
        "https://cloud.google.com/run/docs/configuring/memory-limits#setting for additional details.",
    )
    vpc_connector_name: str | None = Field(
        default=None, description="The name of the VPC connector to use for the Cloud Run Job."
    )
    args: list[str] | None = Field(
        default=None,
        description="Arguments to be passed to your Cloud Run Job's entrypoint command.",
    )
    keep_job: bool | None = Field(
        default=False,
        description="Keep the completed Cloud Run Job on Google Cloud Platform.",
    )
    timeout: int | None = Field(
        default=600,
        gt=0,
        le=3600,
        title="Job Timeout",
        description="The length of time that Prefect will wait for a Cloud Run Job to complete "
        "before raising an exception.",
    )
    max_retries: int | None = Field(
        default=3,
        ge=0,
        le=10,
        title="Max Retries",
        description="The maximum retries setting specifies the number of times a task is "
        "allowed to restart in case of failure before being failed permanently.",
    )


class DockerRegistry(BaseModel):
    """A Docker registry with a username and a password."""

    username: str = Field(description="The username to log into the registry with.")
    password: SecretStr = Field(description="The password to log into the registry with.")
    registry_url: str = Field(
        description='The URL to the registry. Generally, "http" or "https" can be omitted.'
    )
    reauth: bool = Field(default=True, description="Whether or not to reauthenticate on each interaction.")


class ACRManagedIdentity(BaseModel):
    """An Azure Container Registry reached with a user-assigned managed identity."""

    registry_url: str = Field(
        title="Registry URL",
        description="The URL to the registry, such as myregistry.azurecr.io. Generally, 'http' "
        "or 'https' can be omitted.",
    )
    identity: str = Field(description="The user-assigned Azure managed identity for the private registry.")


class AzureContainerInstanceJobBlock(InfrastructureBlock):
    """Run tasks using Azure Container Instances."""

    type: Literal["container-instance-job"] = Field(
        default="container-instance-job", description="The slug for this task type."
    )
    aci_credentials: dict[str, Any] | None = Field(
        default=None,
        title="Azure Container Instance Credentials",
        description="Credentials for Azure Container Instances; if not provided, "
        "DefaultAzureCredential (the environment, a managed identity, the Azure CLI) is used.",
    )
    resource_group_name: str = Field(
        title="Azure Resource Group Name",
        description="The name of the Azure Resource Group in which to run Prefect ACI tasks.",
    )
    subscription_id: SecretStr = Field(
        title="Azure Subscription ID",
        description="The ID of the Azure subscription to create containers under.",
    )
    identities: list[str] | None = Field(
        default=None,
        title="Identities",
        description="A list of user-assigned identities to associate with the container group. "
        "The identities should be an ARM resource IDs in the form: "
        "'/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/{identityName}'.",
    )
    image: str | None = Field(
        default=None,
        description="The image to use for the Prefect container in the task. This value "
        "defaults to a Prefect base image matching your local versions.",
    )
    entrypoint: str | None = Field(
        default="/opt/prefect/entrypoint.sh",
        description="The entrypoint of the container you wish you run. This value defaults to "
        "the entrypoint used by Prefect images and should only be changed when using a custom "
        "image that is not based on an official Prefect image. Any commands set on deployments "
        "will be passed to the entrypoint as parameters.",
    )
    image_registry: DockerRegistry | ACRManagedIdentity | None = Field(
        default=None,
        title="Image Registry (Optional)",
        description="To use any private container registry with a username and password, choose "
        "DockerRegistry. To use a private Azure Container Registry with a managed identity, "
        "choose ACRManagedIdentity.",
    )
    cpu: float = Field(
        default=1.0,
        title="CPU",
        description="The number of virtual CPUs to assign to the task container. If not "
        "provided, a default value of 1.0 will be used.",
    )
    gpu_count: int | None = Field(
        default=None,
        title="GPU Count",
        description="The number of GPUs to assign to the task container. If not provided, no "
        "GPU will be used.",
    )
    gpu_sku: str | None = Field(
        default=None,
        title="GPU SKU",
        description="The Azure GPU SKU to use. See the ACI documentation for a list of GPU SKUs "
        "available in each Azure region.",
    )
    memory: float = Field(
        default=1.0,
        description="The amount of memory in gigabytes to provide to the ACI task. Valid "
        "amounts are specified in the Azure documentation. If not provided, a default value of "
        "1.0 will be used unless present on the task definition.",
    )
    subnet_ids: list[str] | None = Field(
        default=None,
        title="Subnet IDs",
        description="A list of Azure subnet IDs the container should be connected to.",
    )
    dns_servers: list[str] | None = Field(
        default=None,
        title="DNS Servers",
        description="A list of custom DNS Servers the container should use.",
    )
    stream_output: bool | None = Field(
        default=None,
        description="If `True`, logs will be streamed from the Prefect container to the local console.",
    )
    task_start_timeout_seconds: int = Field(
        default=240,
        description="The amount of time to watch for the start of the ACI container before "
        "marking it as failed.",
    )
    task_watch_poll_interval: float = Field(
        default=5.0,
        description="The number of seconds to wait between Azure API calls while monitoring the "
        "state of an Azure Container Instances task.",
    )
