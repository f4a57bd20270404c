"""Job configuration: default templates, merging (section 7), the typed process config."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from agent.infra import (
    InfraError,
    ProcessJobConfig,
    default_base_job_template,
    expand_dot_keys,
    known_pool_types,
    merge_job_variables,
    process_config,
    resolve_job_configuration,
)

SOURCE = "deployment 'etl/daily'"
SECRET = "hunter2-very-secret"


@pytest.fixture
def template() -> dict[str, Any]:
    return default_base_job_template("process")


def resolve(template: dict[str, Any], dep: Any = None, run: Any = None, **kw: Any) -> Any:
    return resolve_job_configuration(template, dep, run, source=SOURCE, **kw)


def infra_error(config: dict[str, Any]) -> InfraError:
    with pytest.raises(InfraError) as info:
        process_config(config, source=SOURCE)
    return info.value


class TestDefaultTemplates:
    def test_process_is_the_bundled_file(self, template: dict[str, Any]) -> None:
        path = resources.files("agent.infra").joinpath("templates/process.json")
        assert template == json.loads(path.read_text(encoding="utf-8"))
        assert "process" in known_pool_types()

    def test_each_call_returns_a_fresh_copy(self, template: dict[str, Any]) -> None:
        template["job_configuration"]["env"] = "changed"
        assert default_base_job_template("process")["job_configuration"]["env"] == "{{ env }}"

    @pytest.mark.parametrize("pool_type", ["nomad", "../templates/process", "", "PROCESS"])
    def test_unknown_type_lists_the_known_ones(self, pool_type: str) -> None:
        with pytest.raises(InfraError, match="use one of: .*process") as info:
            default_base_job_template(pool_type)
        assert info.value.field == "type"


class TestMergeJobVariables:
    def test_env_merged_per_key_run_wins(self) -> None:
        dep = {"env": {"A": "dep", "B": "dep"}, "name": "dep"}
        run = {"env": {"B": "run", "C": "run"}, "name": "run"}
        merged = merge_job_variables(dep, run)
        assert merged == {"env": {"A": "dep", "B": "run", "C": "run"}, "name": "run"}

    def test_everything_else_is_replaced_not_merged(self) -> None:
        merged = merge_job_variables({"labels": {"a": "1"}}, {"labels": {"b": "2"}})
        assert merged == {"labels": {"b": "2"}}

    def test_run_env_without_deployment_env(self) -> None:
        assert merge_job_variables({"name": "n"}, {"env": {"A": "1"}}) == {
            "name": "n",
            "env": {"A": "1"},
        }

    def test_none_inputs(self) -> None:
        assert merge_job_variables(None, None) == {}

    def test_inputs_are_not_modified(self) -> None:
        dep, run = {"env": {"A": "1"}}, {"env": {"B": "2"}, "x": [1]}
        before = copy.deepcopy((dep, run))
        merged = merge_job_variables(dep, run)
        merged["x"].append(2)
        assert (dep, run) == before


class TestExpandDotKeys:
    def test_dotted_then_nested_wins(self) -> None:
        expanded = expand_dot_keys({"env.A": "dot", "env": {"A": "nested", "B": "b"}, "x": 1})
        assert expanded == {"env": {"A": "nested", "B": "b"}, "x": 1}

    def test_deep_paths(self) -> None:
        assert expand_dot_keys({"a.b.c": 1, "a.b.d": 2}) == {"a": {"b": {"c": 1, "d": 2}}}

    def test_conflicting_paths_name_the_keys(self) -> None:
        with pytest.raises(InfraError, match=r"'env.A.B' from src.*'env.A'") as info:
            expand_dot_keys({"env.A": "x", "env.A.B": "y"}, source="src")
        assert info.value.field == "env.A.B"


class TestResolveJobConfiguration:
    def test_stock_template_without_variables(self, template: dict[str, Any]) -> None:
        resolved = resolve(template)
        assert resolved == {"stream_output": True}
        config = process_config(resolved, source=SOURCE)
        assert config == ProcessJobConfig()
        assert (config.command, config.env, config.labels, config.name) == (None, {}, {}, None)
        assert config.stream_output is True
        assert config.working_dir is None

    def test_reference_env_example(self, template: dict[str, Any]) -> None:
        template["variables"]["properties"]["env"]["default"] = {
            "POOL_DEFAULT": "1",
            "TOKEN": "{{ prefect.blocks.secret.my-secret }}",
        }
        dep = {"env": {"DEP": "d", "POOL_DEFAULT": "overridden-by-deployment"}}
        run = {"env": {"RUN": "r"}, "env.DOTTED": "x"}
        resolved = resolve(template, dep, run)
        assert resolved["env"] == {
            "POOL_DEFAULT": "overridden-by-deployment",
            "TOKEN": "{{ prefect.blocks.secret.my-secret }}",
            "DOTTED": "x",
            "DEP": "d",
            "RUN": "r",
        }
        assert list(resolved["env"]) == ["POOL_DEFAULT", "TOKEN", "DOTTED", "DEP", "RUN"]

    def test_run_beats_deployment_beats_pool_default(self, template: dict[str, Any]) -> None:
        template["variables"]["properties"]["name"]["default"] = "pool-{{ $WHO }}"
        assert resolve(template)["name"] == "pool-{{ $WHO }}"  # values are not re-templated
        assert resolve(template, {"name": "dep"})["name"] == "dep"
        assert resolve(template, {"name": "dep"}, {"name": "run"})["name"] == "run"

    def test_deployment_working_dir_kept(self, template: dict[str, Any], tmp_path: Path) -> None:
        resolved = resolve(template, {"working_dir": str(tmp_path)}, {"name": "n"})
        assert resolved == {"working_dir": str(tmp_path), "name": "n", "stream_output": True}

    def test_literal_env_in_job_configuration(self) -> None:
        template = {
            "job_configuration": {"env": {"FIXED": "f", "WHO": "{{ $USER }}-{{ name }}"}},
            "variables": {"properties": {"env": {"default": {"POOL": "p"}}}},
        }
        resolved = resolve(template, {"env": {"DEP": "d"}, "name": "n"}, environ={"USER": "u"})
        assert resolved == {"env": {"FIXED": "f", "WHO": "u-n", "POOL": "p", "DEP": "d"}}

    def test_custom_variables_and_environ(self) -> None:
        template = {
            "job_configuration": {"command": "run --size {{ size }} --home {{ $HOME }}"},
            "variables": {"properties": {"size": {"type": "integer", "default": 2}}},
        }
        resolved = resolve(template, None, {"size": 8}, environ={"HOME": "/h"})
        assert resolved == {"command": "run --size 8 --home /h"}

    def test_template_without_variables_section(self) -> None:
        resolved = resolve({"job_configuration": {"name": "{{ name }}"}}, {"name": "x"})
        assert resolved == {"name": "x"}

    def test_inputs_are_not_modified(self, template: dict[str, Any]) -> None:
        template["variables"]["properties"]["env"]["default"] = {"P": "1"}
        dep, run = {"env": {"D": "1"}}, {"env": {"R": "1"}}
        before = copy.deepcopy((template, dep, run))
        resolve(template, dep, run)["env"]["X"] = "mutated"
        assert (template, dep, run) == before

    @pytest.mark.parametrize(
        ("bad", "field", "words"),
        [
            ({}, "base_job_template", "is empty"),
            ([], "base_job_template", "not an object"),
            ({"variables": {}}, "job_configuration", "no 'job_configuration'"),
            ({"job_configuration": "x"}, "job_configuration", "no 'job_configuration'"),
            ({"job_configuration": {}, "variables": []}, "variables", "'variables'"),
            ({"job_configuration": {}, "variables": {"properties": 1}}, "variables.properties", ""),
            (
                {"job_configuration": {}, "variables": {"properties": {"v": "s"}}},
                "variables.properties.v",
                "",
            ),
        ],
    )
    def test_broken_templates_name_the_pool_and_the_fix(self, bad: Any, field: str, words: str) -> None:
        with pytest.raises(InfraError) as info:
            resolve_job_configuration(bad, None, None, source="work pool 'local'")
        message = str(info.value)
        assert info.value.field == field
        assert info.value.source == "work pool 'local'"
        assert "work pool 'local'" in message and words in message
        assert "prefect work-pool update" in message
        assert "\n" not in message

    def test_env_that_is_not_an_object_hides_its_value(self) -> None:
        template = {"job_configuration": {"env": {"A": "a"}}, "variables": {}}
        with pytest.raises(InfraError, match="job variable 'env' from deployment") as info:
            resolve(template, {"env": f"TOKEN={SECRET}"})
        assert SECRET not in str(info.value)

    def test_pool_env_default_that_is_not_an_object(self) -> None:
        template = {
            "job_configuration": {"env": {"A": "a"}},
            "variables": {"properties": {"env": {"default": "nope"}}},
        }
        with pytest.raises(InfraError, match="default for variable 'env'"):
            resolve(template)


class TestProcessConfig:
    def test_full_config(self, tmp_path: Path) -> None:
        config = process_config(
            {
                "command": "python -m 'my flows.run' --flag",
                "env": {"S": "s", "I": 3, "F": 1.5, "B": True, "N": None},
                "labels": {"team": "data"},
                "name": "my-run",
                "stream_output": False,
                "working_dir": str(tmp_path),
                "unknown_pool_variable": {"ignored": True},
            },
            source=SOURCE,
        )
        assert config.command == ["python", "-m", "my flows.run", "--flag"]
        assert config.env == {"S": "s", "I": "3", "F": "1.5", "B": "True", "N": None}
        assert config.labels == {"team": "data"}
        assert config.name == "my-run"
        assert config.stream_output is False
        assert config.working_dir == tmp_path

    @pytest.mark.parametrize(
        ("command", "expected"),
        [(["a", "b c"], ["a", "b c"]), ("", None), ("   ", None), ([], None), (None, None)],
    )
    def test_command_forms(self, command: Any, expected: Any) -> None:
        assert process_config({"command": command}, source=SOURCE).command == expected

    @pytest.mark.parametrize(("text", "value"), [("true", True), (" False ", False)])
    def test_stream_output_accepts_json_words(self, text: str, value: bool) -> None:
        assert process_config({"stream_output": text}, source=SOURCE).stream_output is value

    @pytest.mark.parametrize("path", ["", "  "])
    def test_blank_working_dir_means_temporary(self, path: str) -> None:
        assert process_config({"working_dir": path}, source=SOURCE).working_dir is None

    def test_windows_relative_working_dir(self) -> None:
        config = process_config({"working_dir": "flows\\etl"}, source=SOURCE)
        assert config.working_dir == Path("flows/etl")

    def test_missing_working_dir_is_left_to_the_backend(self, tmp_path: Path) -> None:
        missing = tmp_path / "not-yet"
        assert process_config({"working_dir": str(missing)}, source=SOURCE).working_dir == missing

    def test_is_frozen(self) -> None:
        config = ProcessJobConfig()
        with pytest.raises(ValueError, match="frozen"):
            config.name = "x"  # type: ignore[misc]

    def test_repr_and_str_hide_env_values(self) -> None:
        config = ProcessJobConfig(env={"API_KEY": SECRET})
        for text in (repr(config), str(config)):
            assert SECRET not in text
            assert "API_KEY" in text
        assert config.model_dump()["env"] == {"API_KEY": SECRET}

    def test_not_an_object(self) -> None:
        with pytest.raises(InfraError, match="job configuration of deployment") as info:
            process_config(["x"], source=SOURCE)  # type: ignore[arg-type]
        assert info.value.field == "job_configuration"


class TestProcessConfigErrors:
    def test_stream_output_wrong_type(self) -> None:
        error = infra_error({"stream_output": "yes"})
        assert str(error) == (
            "job variable 'stream_output' from deployment 'etl/daily' must be a boolean "
            "(got 'yes'); set it to true or false"
        )
        assert (error.field, error.source) == ("stream_output", SOURCE)

    @pytest.mark.parametrize("value", [1, None, "on", [True]])
    def test_stream_output_other_non_booleans(self, value: Any) -> None:
        assert infra_error({"stream_output": value}).field == "stream_output"

    def test_env_value_that_is_an_object(self) -> None:
        error = infra_error({"env": {"OK": "fine", "TOKEN": {"secret": SECRET}}})
        assert error.field == "env.TOKEN"
        assert "job variable 'env.TOKEN' from deployment 'etl/daily'" in str(error)
        assert "value hidden" in str(error)
        assert SECRET not in str(error)

    @pytest.mark.parametrize("env", [f"TOKEN={SECRET}", [SECRET], None])
    def test_env_that_is_not_an_object(self, env: Any) -> None:
        error = infra_error({"env": env})
        assert error.field == "env"
        assert SECRET not in str(error)
        assert "value hidden" in str(error)

    @pytest.mark.parametrize("name", ["", "A=B", "A\0"])
    def test_env_bad_names(self, name: str) -> None:
        error = infra_error({"env": {name: SECRET}})
        assert "not a valid environment variable name" in str(error)
        assert SECRET not in str(error)

    def test_env_value_with_nul(self) -> None:
        error = infra_error({"env": {"K": SECRET + "\0"}})
        assert error.field == "env.K"
        assert SECRET not in str(error)

    @pytest.mark.parametrize("command", ["python -c 'unbalanced", 'echo "x', "trailing \\"])
    def test_command_bad_quoting(self, command: str) -> None:
        error = infra_error({"command": command})
        assert error.field == "command"
        assert "could not be split into arguments" in str(error)
        assert SOURCE in str(error)

    def test_command_with_non_string_argument(self) -> None:
        error = infra_error({"command": ["python", 3]})
        assert error.field == "command[1]"
        assert "must be a string" in str(error)

    def test_command_of_wrong_type_is_not_echoed(self) -> None:
        error = infra_error({"command": {"token": SECRET}})
        assert error.field == "command"
        assert SECRET not in str(error)

    def test_working_dir_that_is_a_file(self, tmp_path: Path) -> None:
        file = tmp_path / "file.txt"
        file.write_text("x")
        error = infra_error({"working_dir": str(file)})
        assert error.field == "working_dir"
        assert "must be a directory" in str(error) and str(file) in str(error)

    def test_labels_and_name(self) -> None:
        assert infra_error({"labels": {"a": 1}}).field == "labels.a"
        assert infra_error({"labels": "a=b"}).field == "labels"
        assert "must be a string or null (got 5)" in str(infra_error({"name": 5}))

    def test_first_error_only_one_line(self) -> None:
        error = infra_error({"command": 5, "stream_output": "nope"})
        assert error.field == "command"
        assert "\n" not in str(error)

    def test_error_is_not_chained_to_the_validation_error(self) -> None:
        error = infra_error({"env": {"T": {"s": SECRET}}})
        assert error.__cause__ is None and error.__suppress_context__

    def test_without_source(self) -> None:
        with pytest.raises(InfraError, match=r"^job variable 'stream_output' must be"):
            process_config({"stream_output": "x"}, source="")

    def test_end_to_end_bad_deployment_variable(self, template: dict[str, Any]) -> None:
        resolved = resolve(template, {"stream_output": "yes", "env": {"K": SECRET}})
        error = infra_error(resolved)
        assert error.field == "stream_output" and SECRET not in str(error)
