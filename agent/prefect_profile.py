"""The Prefect settings a Prefect worker hands to every job it starts, captured once.

A Prefect worker puts `get_current_settings().to_environment_variables(exclude_unset=True)`
into every job's environment: each setting given by the active profile or by a
`PREFECT_*` environment variable, environment on top (wave2-facts §3). flow-agent never
imports `prefect`, so this module reads the same two sources itself, once, when the
settings are built at the edge:

* the active profile: `$PREFECT_PROFILES_PATH`, else `$PREFECT_HOME/profiles.toml`
  (default `~/.prefect/profiles.toml`); the profile named by `$PREFECT_PROFILE`, else the
  file's `active`; no file, or no such profile: Prefect's built-in `ephemeral` profile,
  as Prefect falls back to it;
* every `PREFECT_*` environment variable, on top.

What differs from Prefect, on purpose (README, "Where flow-agent differs"):
* names Prefect does not know are passed too. Prefect drops them, but the list of known
  names belongs to the Prefect version in the job's image, which the agent cannot know
  without importing `prefect`; the child's Prefect ignores names it does not know.
* values are passed as written. Prefect re-renders the values it parsed (`true` -> `True`,
  `20` -> `20.0`); the child parses either spelling to the same value.
* `PREFECT__*` (the per-run identity and control variables) and `PREFECT_PROFILE` (a profile
  name means nothing where the profiles file is not) are never copied.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["BUILTIN_PROFILE", "is_secret_setting", "prefect_settings_env", "profiles_path"]

PREFIX: Final = "PREFECT_"
# Prefect 3.8.8's `settings/profiles.toml`: active = "ephemeral", rendered as Prefect
# renders a parsed boolean
BUILTIN_PROFILE: Final = {"PREFECT_SERVER_EPHEMERAL_ENABLED": "True"}
_NEVER: Final = frozenset({"PREFECT_PROFILE"})
_SECRET_SUFFIXES: Final = ("_KEY", "_AUTH_STRING", "_PASSWORD", "_TOKEN", "_SECRET", "_CONNECTION_URL")


def prefect_settings_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The active profile's settings with the environment's `PREFECT_*` on top."""
    settings = {name: value for name, value in _active_profile(environ).items() if _passes(name)}
    settings.update((name, value) for name, value in environ.items() if _passes(name))
    return settings


def is_secret_setting(name: str) -> bool:
    """Settings whose values are credentials (API key, auth strings, database passwords)."""
    return name.endswith(_SECRET_SUFFIXES)


def profiles_path(environ: Mapping[str, str]) -> Path:
    if environ.get("PREFECT_PROFILES_PATH"):
        return _expand(environ["PREFECT_PROFILES_PATH"], environ)
    return _expand(environ.get("PREFECT_HOME") or "~/.prefect", environ) / "profiles.toml"


def _expand(path: str, environ: Mapping[str, str]) -> Path:
    # "~" is the HOME of the environment given, not of whoever calls
    if path == "~" or path.startswith("~/"):
        return Path(environ.get("HOME") or Path.home()) / path[2:]
    return Path(path)


def _passes(name: str) -> bool:
    return name.startswith(PREFIX) and not name.startswith("PREFECT__") and name not in _NEVER


def _active_profile(environ: Mapping[str, str]) -> dict[str, str]:
    path = profiles_path(environ)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return dict(BUILTIN_PROFILE)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # Prefect warns and uses no profile settings at all
    name = environ.get("PREFECT_PROFILE") or document.get("active")
    profiles = document.get("profiles")
    profile = profiles.get(name) if isinstance(profiles, dict) and isinstance(name, str) else None
    if not isinstance(profile, dict):
        return dict(BUILTIN_PROFILE)
    return {str(key): _text(value) for key, value in profile.items() if value is not None}


def _text(value: Any) -> str:
    # TOML gives booleans and numbers; Prefect renders the parsed value with str()
    return str(value)
