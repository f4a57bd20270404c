"""Which keys of a secret credentials mapping are identifiers, readable by anyone.

Prefect marks a whole `SecretDict` (a GCP service account's key file, for instance) as
secret. Masking all of it hides the project id and the region too, and a masked
`namespaces/********` makes `render` useless. The keys below name where and what, never
grant access: they stay readable. Everything else under such a mapping (`private_key`,
`client_secret`, `aws_secret_access_key`, passwords, and any key not listed) is secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["READABLE_KEYS", "secret_parts"]

READABLE_KEYS: Final = frozenset(
    {
        # GCP service account key file: where and what kind, no access
        "type",
        "project_id",
        "project",
        "auth_uri",
        "token_uri",
        "auth_provider_x509_cert_url",
        "universe_domain",
        # AWS and Azure placement
        "region",
        "region_name",
        "location",
    }
)


def secret_parts(value: Any) -> list[Any]:
    """The secret values of a mapping marked secret as a whole: all but its readable keys."""
    if isinstance(value, Mapping):
        return [v for k, v in value.items() if str(k).lower() not in READABLE_KEYS]
    return [value]
