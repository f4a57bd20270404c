"""`{{ }}` templating: Prefect 3.8.8 `apply_values` semantics, without Prefect."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.infra import NotSet, apply_values, find_placeholders
from agent.infra.templating import lookup


class TestWholeStringPlaceholder:
    @pytest.mark.parametrize(
        "value", [5, 1.5, True, False, None, "s", [1, 2], {"a": [1, 2]}, {"nested": {"x": 1}}]
    )
    def test_is_replaced_by_the_raw_value(self, value: Any) -> None:
        assert apply_values({"k": "{{ v }}"}, {"v": value}) == {"k": value}

    @pytest.mark.parametrize("spelling", ["{{v}}", "{{ v }}", "{{   v\t}}"])
    def test_whitespace_inside_braces_is_ignored(self, spelling: str) -> None:
        assert apply_values({"k": spelling}, {"v": 7}) == {"k": 7}

    def test_missing_value_removes_the_key(self) -> None:
        assert apply_values({"k": "{{ v }}", "other": 1}, {}) == {"other": 1}

    def test_missing_value_removes_the_list_item(self) -> None:
        assert apply_values(["a", "{{ v }}", "b"], {}) == ["a", "b"]

    def test_top_level_missing_value_is_not_set(self) -> None:
        assert apply_values("{{ v }}", {}) is NotSet
        assert not NotSet

    def test_none_is_a_value_not_a_missing_one(self) -> None:
        assert apply_values({"k": "{{ v }}"}, {"v": None}) == {"k": None}

    def test_raw_value_is_a_copy(self) -> None:
        values = {"v": {"a": [1]}}
        result = apply_values({"k": "{{ v }}"}, values)
        result["k"]["a"].append(2)
        assert values == {"v": {"a": [1]}}


class TestMixedStrings:
    def test_reference_example(self) -> None:
        template = {"b": "pre-{{ x }}-{{ y }}", "c": "{{ y }}"}
        assert apply_values(template, {"x": 5}) == {"b": "pre-5-"}

    def test_json_value_inline_uses_python_str(self) -> None:
        values = {"j": {"a": [1, 2]}}
        assert apply_values("{{ j }}", values) == {"a": [1, 2]}
        assert apply_values("x-{{ j }}", values) == "x-{'a': [1, 2]}"

    @pytest.mark.parametrize(("value", "text"), [(True, "True"), (None, "None"), (1.5, "1.5")])
    def test_scalars_inline_use_python_str(self, value: Any, text: str) -> None:
        assert apply_values("v={{ v }}", {"v": value}) == f"v={text}"

    def test_surrounding_space_makes_it_mixed(self) -> None:
        assert apply_values(" {{ v }}", {"v": 5}) == " 5"

    def test_same_placeholder_twice(self) -> None:
        assert apply_values("{{ v }}{{ v }}", {"v": 5}) == "55"

    def test_different_spellings_of_one_name(self) -> None:
        assert apply_values("{{v}}-{{ v }}", {"v": 1}) == "1-1"

    def test_inserted_values_are_not_templated_again(self) -> None:
        # Prefect's result here depends on set order; one pass is the deterministic choice.
        values = {"name": "{{ x }}", "x": 1}
        assert apply_values("n-{{ name }}-{{ x }}", values) == "n-{{ x }}-1"


class TestLookups:
    def test_dotted_and_indexed(self) -> None:
        values = {"a": {"b": [10, {"c": "deep"}]}}
        assert apply_values("{{ a.b[0] }}", values) == 10
        assert apply_values("{{ a.b[1].c }}", values) == "deep"
        assert apply_values("{{ a.b.1.c }}", values) == "deep"
        assert apply_values("x{{ a.b[5] }}", values) == "x"

    def test_hyphenated_names(self) -> None:
        assert apply_values("{{ my-var }}", {"my-var": "ok"}) == "ok"

    @pytest.mark.parametrize("name", ["a.missing", "a.b[9]", "a.b.x", "s.0.z", "nope"])
    def test_misses_give_the_default(self, name: str) -> None:
        assert lookup({"a": {"b": [1]}, "s": "str"}, name) is NotSet
        assert lookup({"a": {"b": [1]}}, name, "d") == "d"

    def test_numeric_parts_index_lists_not_dict_keys(self) -> None:
        # Prefect casts every numeric part to int, so a dict key "0" is unreachable.
        assert lookup({"d": {"0": "x"}}, "d.0") is NotSet
        assert lookup({"l": ["x", "y"]}, "l[-1]") == "y"


class TestEnvironmentPlaceholders:
    def test_reads_the_given_environ_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FA_TEST_VAR", "from-os")
        assert apply_values("{{ $FA_TEST_VAR }}", {}) == ""
        assert apply_values("{{ $FA_TEST_VAR }}", {}, environ={"FA_TEST_VAR": "given"}) == "given"

    def test_mixed_and_missing(self) -> None:
        environ = {"HOME": "/home/u"}
        assert apply_values("{{ $HOME }}/x{{ $NOPE }}", {}, environ=environ) == "/home/u/x"

    def test_whole_string_missing_env_is_empty_string_not_removed(self) -> None:
        # Prefect treats $ placeholders as text even when they are the whole string.
        assert apply_values({"k": "{{ $NOPE }}"}, {}) == {"k": ""}

    def test_value_named_like_the_variable_is_not_used(self) -> None:
        assert apply_values("{{ $X }}", {"$X": "v", "X": "v"}, environ={}) == ""


class TestDeferredPlaceholders:
    @pytest.mark.parametrize(
        "text",
        [
            "{{ prefect.blocks.secret.my-secret }}",
            "{{prefect.variables.my_var}}",
            "{{ prefect.blocks.json.cfg.key.path }}",
        ],
    )
    def test_whole_string_is_left_intact(self, text: str) -> None:
        assert apply_values({"k": text}, {"prefect": {"blocks": 1}}) == {"k": text}

    def test_mixed_string_keeps_them_and_fills_the_rest(self) -> None:
        template = "{{ a }}-{{ prefect.variables.v }}-{{ $E }}-{{ missing }}"
        result = apply_values(template, {"a": 1}, environ={"E": "e"})
        assert result == "1-{{ prefect.variables.v }}-e-"

    def test_a_name_merely_starting_with_prefect_is_templated(self) -> None:
        assert apply_values("{{ prefect_thing }}", {"prefect_thing": 3}) == 3


class TestStructures:
    def test_nested_dicts_and_lists(self) -> None:
        template = {"a": ["{{ x }}", {"b": "{{ y }}", "c": "lit"}], "n": 1, "f": False, "z": None}
        result = apply_values(template, {"x": [1], "y": "Y"})
        assert result == {"a": [[1], {"b": "Y", "c": "lit"}], "n": 1, "f": False, "z": None}

    def test_input_is_not_modified(self) -> None:
        template = {"a": ["{{ x }}", {"b": "{{ y }}"}]}
        before = copy.deepcopy(template)
        apply_values(template, {"x": 1})
        assert template == before

    def test_strings_without_placeholders_are_unchanged(self) -> None:
        assert apply_values("{{ not closed", {}) == "{{ not closed"
        assert apply_values("{{ has space }}", {"has": 1}) == "{{ has space }}"

    def test_non_json_types_are_rejected(self) -> None:
        with pytest.raises(ValueError, match="unexpected template type"):
            apply_values({"k": object()}, {})


class TestFindPlaceholders:
    def test_finds_every_kind_everywhere(self) -> None:
        template = {
            "a": "{{ x }}-{{y}}",
            "b": ["{{ $HOME }}", {"c": "{{ prefect.blocks.secret.s }}"}],
            "d": 5,
            "e": None,
        }
        assert find_placeholders(template) == {"x", "y", "$HOME", "prefect.blocks.secret.s"}

    def test_nothing_to_find(self) -> None:
        assert find_placeholders({"a": "plain", "b": [1, True, None]}) == set()
        assert find_placeholders(3) == set()
