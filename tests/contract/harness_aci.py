"""The ACI harness: the real management client over HTTPS against the ARM fake.

A static-token credential replaces the run's credentials, so the SDK's production
`ARMChallengeAuthenticationPolicy` still sends the bearer token the fake checks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken
from fakes.aci_fake import STATIC_TOKEN, AciFake

from agent.backends.aci import AciBackend
from agent.backends.base import BackendOptions, Handle, Job
from agent.infra.aci import AciKind
from agent.infra.spec import RunContext

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-agents"


class StaticTokenCredential:
    """A `TokenCredential` with a fixed token: no identity service involved."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(STATIC_TOKEN, int(time.time()) + 3600)


class AciHarness:
    kind = "aci"
    supports_start_timeout = True
    supports_timeout = False  # a container group has no run-time limit of its own

    def __init__(self, fake: AciFake) -> None:
        self.fake = fake
        self.backend = AciBackend(
            BackendOptions(watch_interval=0.1, azure_arm_endpoint=fake.url),
            credential=StaticTokenCredential(),
            client_kwargs={"connection_verify": fake.ca_file},
        )
        self._kind = AciKind()

    def job(self, name: str, **variables: Any) -> Job:
        resolved = {
            "image": "prefecthq/prefect:3-latest",
            "resource_group_name": RESOURCE_GROUP,
            "subscription_id": SUBSCRIPTION,
            "task_start_timeout_seconds": 2,
            **variables,
        }
        config = self._kind.config_from_pool(
            resolved, pool_type="azure-container-instance", source="contract"
        )
        payload = self._kind.build_payload(
            config, RunContext(name, name, env={"PREFECT_API_URL": "http://x"})
        )
        return Job(name, name, "aci", payload, self._kind.runtime(config))

    def _name(self, handle: Handle) -> str:
        return handle.pid.rsplit("/", 1)[1]

    async def finish(self, handle: Handle, *, exit_code: int, oom: bool = False) -> None:
        self.fake.terminate(self._name(handle), exit_code, "OOMKilled" if oom else None)

    async def never_start(self, handle: Handle, *, reason: str) -> None:
        self.fake.stick_waiting(self._name(handle), reason)

    async def stick_waiting(self, handle: Handle, *, reason: str) -> None:
        """Waiting, with the state's startTime, as Azure shows a container that never runs."""
        self.fake.stick_waiting(self._name(handle), reason)

    async def time_out(self, handle: Handle) -> None:
        raise NotImplementedError("ACI has no timeout of its own")

    async def finish_racing_cancel(self, handle: Handle, *, exit_code: int) -> None:
        """The container is Terminated before the kill's delete arrives."""
        self.fake.terminate(self._name(handle), exit_code)

    async def leftovers(self, handle: Handle) -> list[str]:
        name = self._name(handle)
        return [group for group in self.fake.list_groups() if group == name]

    async def aclose(self) -> None:
        await self.backend.aclose()
        self.fake.stop()


def make_harness(tmp_path: Path) -> AciHarness:
    return AciHarness(AciFake().start())
