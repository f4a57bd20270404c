"""AWS sessions and clients for the ECS backend, and the one place SDK errors are mapped.

A run's credentials are the default boto3 chain, or the fields of an `AwsCredentials`
block (`EcsRuntime.aws_credentials`): keys, profile, region, `aws_client_parameters`
(endpoint_url, verify, use_ssl, config) and `assume_role_arn`. Clients are cached by a
digest of those fields, so runs that share credentials share a connection pool. botocore
retries are switched off: `translate` (the backend's one classifier, given to `SdkCalls`)
makes throttling and 5xx a `BackendUnavailable`, retried by the agent's one policy (or by
the next watch tick).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import boto3
import botocore.exceptions
from botocore.config import Config

from agent.backends.base import BackendError, BackendUnavailable, InfrastructureNotFound, LaunchError
from agent.backends.sdk import SdkCalls

__all__ = ["Aws", "AwsClients", "NOT_FOUND", "translate"]

_THROTTLED = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "ServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
    }
)
# RegisterTaskDefinition answers a burst on one family with a ClientException (#16485)
_THROTTLED_MESSAGES = ("too many concurrent attempts", "rate exceeded")
NOT_FOUND = ("not found", "could not find", "no registered tasks", "does not exist")
_CONNECTION = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
_CONFIG_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.ProfileNotFound,
)
_ASSUMED_LIFETIME = 3000.0  # seconds; STS credentials last an hour, renew well before
_LOGS_LOCK = threading.Lock()  # boto3 sessions are not thread safe: one client made at a time


@dataclass(frozen=True)
class Aws:
    """The clients of one set of credentials, in one region."""

    key: str  # digest of the credentials, never the credentials
    region: str
    ecs: Any
    ec2: Any
    expires: float = float("inf")
    session: Any = field(default=None, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _logs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def logs(self, region: str | None = None) -> Any:
        """The CloudWatch Logs client of `region` (an awslogs group may live in another
        region than the cluster); made once per region, in the calling worker thread."""
        region = region or self.region
        with _LOGS_LOCK:
            if region not in self._logs:
                if self.session is None:
                    raise botocore.exceptions.NoRegionError()
                self._logs[region] = self.session.client("logs", region_name=region, **self.options)
            return self._logs[region]


def translate(exc: BaseException, what: str) -> BackendError:
    """An SDK exception as one of the backend's errors; the message carries no values."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")[:500]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{what}: {code}: {message}" if message else f"{what}: {code or status}"
        if (
            code in _THROTTLED
            or status >= 500
            or status == 429
            or any(m in message.lower() for m in _THROTTLED_MESSAGES)
        ):
            return BackendUnavailable(f"AWS is throttling or unavailable ({text})")
        if any(m in message.lower() for m in NOT_FOUND) or code.endswith("NotFoundException"):
            return InfrastructureNotFound(text)
        return LaunchError(text)
    if isinstance(exc, _CONNECTION):
        return BackendUnavailable(f"{what}: cannot reach AWS ({type(exc).__name__})")
    if isinstance(exc, _CONFIG_ERRORS):
        return LaunchError(
            f"{what}: {exc}; give the AWS credentials and region_name in an AwsCredentials block "
            "(aws_credentials) or through the agent's environment (AWS_* variables, profile, role)"
        )
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        # botocore quotes the offending value, which may be an env value: keep the path only
        report = re.sub(r", value: .*?, type:", ", type:", str(exc))
        return LaunchError(f"{what}: the request is invalid: {report[:800]}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return BackendUnavailable(f"{what}: {type(exc).__name__}")
    raise exc


class AwsClients:
    """Clients by credentials; created in a worker thread (boto3 sessions are not thread safe)."""

    def __init__(self, sdk: SdkCalls) -> None:
        self._sdk = sdk
        self._cache: dict[str, Aws] = {}
        self._lock = threading.Lock()
        self._creating: dict[str, anyio.Lock] = {}  # a burst of launches creates one session

    async def get(self, credentials: Mapping[str, Any] | None) -> Aws:
        creds = dict(credentials or {})
        key = hashlib.sha256(json.dumps(creds, sort_keys=True, default=str).encode()).hexdigest()[:16]
        async with self._creating.setdefault(key, anyio.Lock()):
            cached = self._cache.get(key)
            if cached is not None and cached.expires > time.monotonic():
                return cached
            aws = await self._sdk(lambda: self._create(key, creds), "creating the AWS session")
            self._cache[key] = aws
            return aws

    def _create(self, key: str, creds: dict[str, Any]) -> Aws:
        with self._lock:
            session = boto3.Session(
                aws_access_key_id=creds.get("aws_access_key_id"),
                aws_secret_access_key=_secret(creds.get("aws_secret_access_key")),
                aws_session_token=_secret(creds.get("aws_session_token")),
                profile_name=creds.get("profile_name"),
                region_name=creds.get("region_name"),
            )
            params = dict(creds.get("aws_client_parameters") or {})
            expires = float("inf")
            if creds.get("assume_role_arn"):
                session = _assume(session, creds, params)
                expires = time.monotonic() + _ASSUMED_LIFETIME
            region = session.region_name
            if not region:
                raise botocore.exceptions.NoRegionError()
            options = _client_options(params)
            ecs = session.client("ecs", **options)
            ec2 = session.client("ec2", **options)
        return Aws(key, region, ecs, ec2, expires, session=session, options=options)


def _secret(value: Any) -> str | None:
    # pydantic SecretStr survives in some block payloads as {"value": ...} or a plain string
    if isinstance(value, Mapping):
        value = value.get("value")
    return None if value in (None, "") else str(value)


def _client_options(params: Mapping[str, Any]) -> dict[str, Any]:
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # one retry policy: ours
        max_pool_connections=50,  # launches run in parallel threads; avoid pool-full stalls
        connect_timeout=10,
        read_timeout=60,
    )
    user_config = params.get("config")
    if isinstance(user_config, Mapping) and user_config:
        config = config.merge(Config(**user_config))
    options: dict[str, Any] = {"config": config}
    if params.get("endpoint_url"):
        options["endpoint_url"] = str(params["endpoint_url"])
    verify = params.get("verify_cert_path") or params.get("verify")
    if verify is not None:
        options["verify"] = verify
    if params.get("use_ssl") is not None:
        options["use_ssl"] = bool(params["use_ssl"])
    return options


def _assume(session: Any, creds: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    sts = session.client("sts", **_client_options(params))
    kwargs = {"RoleSessionName": "flow-agent", **dict(creds.get("assume_role_kwargs") or {})}
    answer = sts.assume_role(RoleArn=creds["assume_role_arn"], **kwargs)["Credentials"]
    return boto3.Session(
        aws_access_key_id=answer["AccessKeyId"],
        aws_secret_access_key=answer["SecretAccessKey"],
        aws_session_token=answer["SessionToken"],
        region_name=session.region_name,
    )
