"""The five Prefect 2 infrastructure blocks as pydantic models: field names, defaults, docs.

They exist to generate the block schemas the Prefect UI renders as forms (titles and
descriptions are what users read there); running a block is the business of the typed
configs in `agent.infra`. Names and defaults are Prefect 2's (`prefect.infrastructure`,
prefect-aws 0.4, prefect-gcp 0.5, prefect-azure 0.3; see backends.md), so documents saved
by Prefect 2 load unchanged. Credentials fields hold a nested credentials block; they are
typed as plain objects here and turned into block selectors at registration. The three
cloud blocks are in `agent.blocks.cloud`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["InfrastructureBlock", "KubernetesJobBlock", "ProcessBlock"]

# -- fields every Prefect 2 infrastructure block has (prefect.infrastructure.base) --------------


class InfrastructureBlock(BaseModel):
    env: dict[str, str | None] = Field(
        default_factory=dict,
        title="Environment",
        description="Environment variables to set in the configured infrastructure.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels applied to the infrastructure for metadata purposes.",
    )
    name: str | None = Field(
        default=None, description="Name applied to the infrastructure for identification."
    )
    command: list[str] | None = Field(
        default=None,
        description=(
            "The command to run in the infrastructure. Defaults to the command that starts "
            "the Prefect engine for the flow run."
        ),
    )


class ProcessBlock(InfrastructureBlock):
    """Run a command as a new process."""

    type: Literal["process"] = Field(default="process", description="The type of infrastructure.")
    stream_output: bool = Field(
        default=True,
        description="If set, output will be streamed from the process to local standard output.",
    )
    working_dir: str | None = Field(
        default=None,
        title="Working Directory",
        description=(
            "If set, the process will open within the specified path as the working "
            "directory. Otherwise, a temporary directory will be created."
        ),
    )


class KubernetesJobBlock(InfrastructureBlock):
    """Runs a command as a Kubernetes Job."""

    type: Literal["kubernetes-job"] = Field(
        default="kubernetes-job", description="The type of infrastructure."
    )
    image: str | None = Field(
        default=None,
        description="The image reference of a container image to use for the job, for example, "
        "`docker.io/prefecthq/prefect:2-latest`. The behavior is as described in the Kubernetes "
        "documentation and uses the latest version of Prefect by default, unless an image is "
        "already present in a provided job manifest.",
    )
    namespace: str | None = Field(
        default=None,
        description="The Kubernetes namespace to use for this job. Defaults to 'default' "
        "unless a namespace is already present in a provided job manifest.",
    )
    service_account_name: str | None = Field(
        default=None, description="The Kubernetes service account to use for this job."
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] | None = Field(
        default=None,
        description="The Kubernetes image pull policy to use for job containers.",
    )
    cluster_config: dict[str, Any] | None = Field(
        default=None,
        title="Cluster Config",
        description="The Kubernetes cluster config to use for this job; if not provided, the "
        "in-cluster configuration, then the local kube config, is used.",
    )
    job: dict[str, Any] = Field(
        default_factory=lambda: _base_job_manifest(),
        title="Base Job Manifest",
        description="The base manifest for the Kubernetes Job.",
    )
    customizations: list[dict[str, Any]] = Field(
        default_factory=list,
        title="Customizations",
        description="A list of JSON 6902 patches to apply to the base Job manifest.",
    )
    job_watch_timeout_seconds: int | None = Field(
        default=None,
        description="Number of seconds to wait for the job to complete before marking it as "
        "crashed. Defaults to `None`, which means no timeout will be enforced.",
    )
    pod_watch_timeout_seconds: int = Field(
        default=60,
        description="Number of seconds to watch for pod creation before timing out.",
    )
    stream_output: bool = Field(
        default=True,
        description="If set, output will be streamed from the job to local standard output.",
    )
    finished_job_ttl: int | None = Field(
        default=None,
        description="The number of seconds to retain jobs after completion. If set, finished "
        "jobs will be cleaned up by Kubernetes after the given delay. If None (default), jobs "
        "will need to be manually removed.",
    )


def _base_job_manifest() -> dict[str, Any]:
    """Prefect 2's `KubernetesJob.base_job_manifest()`."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {}},
        "spec": {
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "containers": [{"name": "prefect-job", "env": []}],
                }
            }
        },
    }
