"""Every command's --help: flags show no type (typer labels them `<bool>`, which reads as if
they took a value), and options that take one still show it."""

from __future__ import annotations

from typing import Any

import typer.main
from typer.testing import CliRunner

from agent.cli import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*path, name))
    return found


def test_no_flag_shows_a_bool_type_in_any_help() -> None:
    root = typer.main.get_command(app)
    paths = _commands(root)
    assert ("start",) in paths and ("deployment", "ls") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path


def test_options_that_take_a_value_still_show_its_type() -> None:
    result = CliRunner().invoke(app, ["start", "--help"], env={"COLUMNS": "160"})
    assert "<int>" in result.output and "<float>" in result.output
