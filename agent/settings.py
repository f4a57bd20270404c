"""One typed, frozen settings object, built once at the edge (the CLI).

Sources, strongest first: command-line flags, `FLOW_AGENT_*` environment variables,
Prefect's own `PREFECT_API_URL` / `PREFECT_API_KEY` / `PREFECT_API_AUTH_STRING`, defaults.
Nothing else in the agent reads the environment; constructors get what they need from here.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.prefect_profile import is_secret_setting, prefect_settings_env
from agent.retry import RetryPolicy

__all__ = ["Settings", "default_data_dir"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flow-agent"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOW_AGENT_", frozen=True, extra="ignore", populate_by_name=True
    )

    # -- server ------------------------------------------------------------------------------
    api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("FLOW_AGENT_API_URL", "PREFECT_API_URL")
    )
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FLOW_AGENT_API_KEY", "PREFECT_API_KEY")
    )
    api_auth_string: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FLOW_AGENT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"),
    )
    request_timeout: float = Field(30.0, gt=0)
    # Prefect's own settings (active profile, env-set PREFECT_* on top), captured once here
    # and put into every job's environment as Prefect's workers do (agent/prefect_profile.py)
    prefect_env: dict[str, str] = Field(
        default_factory=lambda: prefect_settings_env(os.environ), repr=False, exclude=True
    )

    # -- what to serve ---------------------------------------------------------------------------
    pools: Annotated[list[str], NoDecode] = Field(default_factory=list)
    queues: Annotated[list[str], NoDecode] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1, description="Most runs this agent has in flight.")
    name: str = Field(default_factory=lambda: f"flow-agent-{socket.gethostname()}")
    create_pools: bool = True

    # -- loops (seconds) --------------------------------------------------------------------------
    poll_interval: float = Field(5.0, gt=0)
    prefetch_seconds: float = Field(10.0, ge=0)
    heartbeat_interval: float = Field(30.0, gt=0)
    cancel_check_interval: float = Field(2.0, gt=0)
    reconcile_interval: float = Field(
        30.0, gt=0, description="Seconds between looks for runs whose agent died."
    )
    claim_concurrency: int = Field(8, ge=1)
    events: bool = Field(True, description="Use the server's event stream to react at once.")
    log_flush_interval: float = Field(1.0, gt=0)

    # -- shutdown and kills (seconds) -------------------------------------------------------------
    kill_grace: float = Field(30.0, ge=0, description="SIGTERM to SIGKILL when killing a run.")
    shutdown_grace: float = Field(
        60.0, ge=0, description="After the first stop signal, how long running runs may finish."
    )

    # -- retry policy -------------------------------------------------------------------------------
    retry_initial: float = Field(0.5, gt=0)
    retry_max: float = Field(30.0, gt=0)
    retry_jitter: float = Field(0.2, ge=0, le=1)
    retry_budget: float = Field(60.0, gt=0)

    # -- backends ------------------------------------------------------------------------------------
    python: str = Field(default_factory=lambda: sys.executable)
    warm_start: bool = Field(
        True, description="Fork default-command process runs from an engine with Prefect imported."
    )
    watch_interval: float = Field(5.0, gt=0, description="Seconds between status reads of cloud runs.")
    gcp_endpoint: str | None = None
    azure_arm_endpoint: str | None = None
    kubeconfig: str | None = None

    # -- embedded server and logging -----------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    server_port: int = Field(4200, ge=0, le=65535)
    health_port: int | None = Field(None, ge=0, le=65535, description="Serve /healthz, /readyz, /metrics.")
    health_host: str = "0.0.0.0"  # probes come from outside the pod
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _split_lists = field_validator("pools", "queues", mode="before")(_split)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"PREFECT_API_URL must start with http:// or https:// (got {value!r}); "
                "e.g. http://127.0.0.1:4200/api"
            )
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self

    @property
    def state_dir(self) -> Path:
        """What must outlive the agent on this host (local runs' exit status records)."""
        return self.data_dir / "state"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial=self.retry_initial,
            maximum=self.retry_max,
            jitter=self.retry_jitter,
            budget=self.retry_budget,
        )

    def auth_token(self) -> str | None:
        """What a websocket's auth frame carries: the basic auth string, else the API key."""
        for secret in (self.api_auth_string, self.api_key):
            if secret is not None:
                return secret.get_secret_value()
        return None

    def secrets(self) -> list[str]:
        """Values that must never be printed (fed to the log redactor)."""
        found = [self.api_key, self.api_auth_string]
        values = [s.get_secret_value() for s in found if s is not None]
        values += [value for name, value in self.prefect_env.items() if is_secret_setting(name)]
        # the password half of a basic auth string is a secret on its own, too
        for value in list(values):
            if ":" in value:
                values.append(value.split(":", 1)[1])
        return [v for v in values if len(v) >= 4]
