"""The fidelity suite: Prefect's own workers (prefect-aws, -gcp, -azure, -kubernetes) against
flow-agent, on the session's real Prefect server. The blocks and variables the cases refer
to are made once, with Prefect's own block classes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_LEVEL, temporary_settings
from prefect.variables import Variable
from prefect_aws import AwsCredentials
from prefect_azure.credentials import AzureContainerInstanceCredentials
from prefect_gcp import GcpCredentials
from support.server import PrefectServer

from fidelity.harness import SECRET_VALUE, World


def _service_account() -> dict[str, str]:
    """A well-formed service account key (a fresh RSA key; it opens no Google account)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return {
        "type": "service_account",
        "project_id": "fid-project",
        "private_key_id": "fid",
        "private_key": pem,
        "client_email": "flows@fid-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def world(prefect_server: PrefectServer) -> Iterator[World]:
    url = prefect_server.api_url
    # A setting given to the Prefect side is passed to its jobs: flow-agent gets the same
    # settings as its Prefect env (harness.both_sides) and must place them the same way.
    with temporary_settings({PREFECT_API_URL: url, PREFECT_LOGGING_LEVEL: "DEBUG"}):
        world = World(url)
        blocks = {
            "fid-secret": Secret(value=SECRET_VALUE),
            "fid-aws": AwsCredentials(region_name="eu-west-1", aws_access_key_id="AKIAFIDELITY"),
            "fid-gcp": GcpCredentials(project="fid-project", service_account_info=_service_account()),
            "fid-azure": AzureContainerInstanceCredentials(
                client_id="cid", tenant_id="tid", client_secret="csecret"
            ),
        }
        for name, block in blocks.items():
            world.blocks[name] = str(block.save(name, overwrite=True))
        # a `{{ prefect.variables.* }}` reference, resolved on both sides
        Variable.set("fid_team", "data-platform", overwrite=True)
        yield world
