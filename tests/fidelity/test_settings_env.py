"""Prefect settings pass-through: what `Settings.prefect_env` captures (agent/prefect_profile.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.prefect_profile import BUILTIN_PROFILE, is_secret_setting, prefect_settings_env
from agent.settings import Settings

PROFILES = """
active = "work"

[profiles.work]
PREFECT_API_URL = "http://profile:4200/api"
PREFECT_TASKS_DEFAULT_RETRIES = 2
PREFECT_LOGGING_LOG_PRINTS = true

[profiles.other]
PREFECT_LOGGING_LEVEL = "ERROR"
"""


def _home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "profiles.toml").write_text(PROFILES)
    return {"PREFECT_HOME": str(tmp_path)}


def test_active_profile_then_environment_on_top(tmp_path: Path) -> None:
    environ = {**_home(tmp_path), "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_TASKS_DEFAULT_RETRIES": "5"}
    assert prefect_settings_env(environ) == {
        "PREFECT_API_URL": "http://profile:4200/api",
        "PREFECT_TASKS_DEFAULT_RETRIES": "5",
        "PREFECT_LOGGING_LOG_PRINTS": "True",  # TOML's true, rendered as Prefect renders it
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
    }


def test_prefect_profile_picks_the_profile_and_is_not_copied(tmp_path: Path) -> None:
    environ = {**_home(tmp_path), "PREFECT_PROFILE": "other"}
    assert prefect_settings_env(environ) == {"PREFECT_LOGGING_LEVEL": "ERROR", "PREFECT_HOME": str(tmp_path)}


def test_no_file_or_unknown_profile_falls_back_to_prefects_builtin(tmp_path: Path) -> None:
    assert prefect_settings_env({"PREFECT_HOME": str(tmp_path / "none")}) == {
        **BUILTIN_PROFILE,
        "PREFECT_HOME": str(tmp_path / "none"),
    }
    environ = {**_home(tmp_path), "PREFECT_PROFILE": "missing"}
    assert prefect_settings_env(environ) == {**BUILTIN_PROFILE, "PREFECT_HOME": str(tmp_path)}


def test_profiles_path_setting_wins_over_home(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text('active = "x"\n[profiles.x]\nPREFECT_LOGGING_LEVEL = "WARNING"\n')
    environ = {**_home(tmp_path), "PREFECT_PROFILES_PATH": str(other)}
    assert prefect_settings_env(environ)["PREFECT_LOGGING_LEVEL"] == "WARNING"


def test_only_prefect_settings_are_copied(tmp_path: Path) -> None:
    environ = {
        "PREFECT_HOME": str(tmp_path),
        "FLOW_AGENT_LIMIT": "3",
        "AWS_SECRET_ACCESS_KEY": "nope",
        "PREFECT__FLOW_RUN_ID": "not-ours",
        "PREFECT_SOME_UNKNOWN": "1",  # passed: the child's Prefect decides (documented)
    }
    expected = {**BUILTIN_PROFILE, "PREFECT_HOME": str(tmp_path), "PREFECT_SOME_UNKNOWN": "1"}
    assert prefect_settings_env(environ) == expected


def test_broken_profiles_file_gives_no_profile_settings(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text("active = [\n")
    assert prefect_settings_env({"PREFECT_HOME": str(tmp_path)}) == {"PREFECT_HOME": str(tmp_path)}


def test_secret_settings_reach_the_redactor(tmp_path: Path) -> None:
    assert is_secret_setting("PREFECT_API_KEY") and is_secret_setting("PREFECT_SERVER_DATABASE_PASSWORD")
    assert not is_secret_setting("PREFECT_LOGGING_LEVEL")
    settings = Settings(
        api_url="http://x/api",
        prefect_env={"PREFECT_API_KEY": "pnu_from_profile_123", "PREFECT_LOGGING_LEVEL": "DEBUG"},
    )
    assert "pnu_from_profile_123" in settings.secrets()
    assert "DEBUG" not in settings.secrets()
    assert "pnu_from_profile_123" not in repr(settings)


def test_settings_capture_the_environment_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    settings = Settings(api_url="http://x/api")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "ERROR")
    assert settings.prefect_env["PREFECT_LOGGING_LEVEL"] == "DEBUG"


def test_the_capture_matches_prefects_own_settings_env(tmp_path: Path) -> None:
    """Prefect 3.8.8 in a child with the same environment and profiles file: its worker's
    `_base_environment()` and flow-agent's capture agree on every name Prefect knows, with
    the values written in Prefect's own rendering. (Unknown names: Prefect drops them,
    flow-agent passes them; the README says why.)"""
    (tmp_path / "profiles.toml").write_text(PROFILES)
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_API_KEY": "pnu_fidelity_key",
        "PREFECT_SOME_UNKNOWN": "1",
    }
    code = (
        "import json; from prefect.workers.base import BaseJobConfiguration as C; "
        "print(json.dumps(C._base_environment()))"
    )
    command = [sys.executable, "-c", code]
    child = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    prefects = json.loads(child.stdout.strip().splitlines()[-1])
    ours = prefect_settings_env(environ)
    assert ours.pop("PREFECT_SOME_UNKNOWN") == "1" and "PREFECT_SOME_UNKNOWN" not in prefects
    assert ours == prefects


def test_the_default_home_is_the_given_environments(tmp_path: Path) -> None:
    (tmp_path / ".prefect").mkdir()
    (tmp_path / ".prefect" / "profiles.toml").write_text(PROFILES)
    assert prefect_settings_env({"HOME": str(tmp_path)})["PREFECT_API_URL"] == "http://profile:4200/api"
