"""The Kubernetes kind: pool and block configs, the Job payload (golden files), bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.golden import assert_golden, render_payload, run_context

from agent.infra import InfraError, default_base_job_template, resolve_job_configuration
from agent.infra.kubernetes import KubernetesConfig, KubernetesKind
from agent.registry import REGISTRY

SOURCE = "deployment 'etl/daily'"
SECRET = "pnu_secret"
RUN_ID = "0b1c6a1e-1b7e-4c1e-9a2b-7f6c0d7e8f90"
CTX = run_context(
    RUN_ID,
    api_url="http://prefect:4200/api",
    api_key=SECRET,
    labels={"prefect.io/flow-run-name": "crimson-fox"},
    flow_id="5f0c2d7e-0000-4000-8000-000000000001",
    deployment_id="5f0c2d7e-0000-4000-8000-000000000002",
    work_pool_name="k8s",
)
KIND = KubernetesKind()
# the pool types and block slug are named once, in the registry's entry of the kind
ENTRY = REGISTRY.get(KIND.kind)


def from_pool(
    dep: dict[str, Any] | None = None, run: dict[str, Any] | None = None, template: Any = None
) -> Any:
    template = template or default_base_job_template("kubernetes")
    resolved = resolve_job_configuration(template, dep, run, source=SOURCE)
    return KIND.config_from_pool(resolved, pool_type="kubernetes", source=SOURCE)


def render(config: Any) -> dict[str, Any]:
    return render_payload(KIND, config, CTX, field="customizations", source=SOURCE)


def error(call: Any, *args: Any, **kwargs: Any) -> InfraError:
    with pytest.raises(InfraError) as info:
        call(*args, **kwargs)
    assert SECRET not in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def customizable_template() -> dict[str, Any]:
    template = default_base_job_template("kubernetes")
    template["job_configuration"]["customizations"] = "{{ customizations }}"
    template["variables"]["properties"]["customizations"] = {"type": "array", "default": []}
    return template


class TestKind:
    def test_identity(self) -> None:
        assert (KIND.kind, ENTRY.pool_types, ENTRY.block_slug) == (
            "kubernetes",
            ("kubernetes",),
            "kubernetes-job",
        )

    def test_template_has_prefects_variable_names(self) -> None:
        names = set(default_base_job_template("kubernetes")["variables"]["properties"])
        assert {
            "namespace",
            "image",
            "service_account_name",
            "image_pull_policy",
            "backoff_limit",
            "finished_job_ttl",
            "cpu_request",
            "memory_limit",
            "cluster_config",
        } <= names


class TestFromPool:
    def test_stock_template(self) -> None:
        config = from_pool(
            {"image": "prefecthq/prefect:3-latest", "env": {"TEAM": "data", "DROP": None}},
            {"labels": {"team": "Data Eng!"}, "cpu_request": "500m", "memory_limit": "1Gi"},
        )
        assert isinstance(config, KubernetesConfig)
        assert config.namespace == "default" and config.pod_watch_timeout_seconds == 60
        assert_golden("kubernetes", "pool_stock", render(config))

    def test_customizations_apply_to_the_job_manifest(self) -> None:
        ops = [
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "gpu"}},
            {"op": "replace", "path": "/spec/backoffLimit", "value": 3},
        ]
        config = from_pool(
            {
                "image": "img:1",
                "namespace": "flows",
                "service_account_name": "runner",
                "finished_job_ttl": 300,
                "command": "python -m prefect.engine",
                "annotations": {"owner": "data"},
                "name": "Nightly ETL",
            },
            {"customizations": ops},
            template=customizable_template(),
        )
        assert KIND.customizations(config)[0]["path"] == "/job/spec/template/spec/nodeSelector"
        assert_golden("kubernetes", "pool_customized", render(config))

    def test_hard_coded_value_from_env_is_kept_after_ours(self) -> None:
        template = default_base_job_template("kubernetes")
        secret_ref = {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}
        manifest = template["job_configuration"]["job_manifest"]
        manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [
            secret_ref,
            {"name": "A", "value": "t"},
        ]
        env = render(from_pool({"image": "i", "env": {"A": "ours"}}, template=template))["job"]
        entries = env["spec"]["template"]["spec"]["containers"][0]["env"]
        assert entries[-1] == secret_ref
        assert [e for e in entries if e["name"] == "A"] == [{"name": "A", "value": "ours"}]

    def test_env_as_a_kubernetes_list(self) -> None:
        ref = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}
        config = from_pool({"image": "i"}, {"env": [{"name": "A", "value": "1"}, ref]})
        assert config.env == {"A": "1"} and config.env_refs == (ref,)
        entries = render(config)["job"]["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "A", "value": "1"} in entries and ref in entries

    @pytest.mark.parametrize(
        ("backoff", "user", "expected"),
        [
            (0, None, "reschedule"),
            (0, "relinquish", "relinquish"),
            (2, "reschedule", "relinquish"),
        ],
    )
    def test_sigterm_behaviour_follows_backoff_limit(
        self, backoff: int, user: str | None, expected: str
    ) -> None:
        env = {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": user} if user else {}
        job = render(from_pool({"image": "i", "backoff_limit": backoff, "env": env}))["job"]
        entries = job["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR", "value": expected} in entries

    def test_run_labels_win_and_are_sanitised(self) -> None:
        labels = {"prefect.io/flow-run-id": "mine", "Über key": "ça va?", "empty": "***"}
        metadata = render(from_pool({"image": "i", "labels": labels}))["job"]["metadata"]
        assert metadata["labels"]["prefect.io/flow-run-id"] == RUN_ID
        assert metadata["labels"]["Uber-key"] == "ca-va"
        assert metadata["labels"]["empty"] == ""

    def test_literal_generate_name_and_name_are_kept(self) -> None:
        template = default_base_job_template("kubernetes")
        template["job_configuration"]["job_manifest"]["metadata"]["generateName"] = "etl-"
        assert (
            render(from_pool({"image": "i"}, template=template))["job"]["metadata"]["generateName"] == "etl-"
        )

    def test_default_command_and_string_command(self) -> None:
        args = lambda c: render(c)["job"]["spec"]["template"]["spec"]["containers"][0]["args"]  # noqa: E731
        assert args(from_pool({"image": "i"})) == ["prefect", "flow-run", "execute"]
        assert args(from_pool({"image": "i", "command": "python -m 'a b'"})) == ["python", "-m", "a b"]

    def test_repr_hides_env_values(self) -> None:
        config = from_pool({"image": "i", "env": {"TOKEN": SECRET}})
        assert SECRET not in repr(config) and "TOKEN" in repr(config)


class TestFromBlock:
    def test_prefect2_defaults(self) -> None:
        config = KIND.config_from_block(
            {
                "type": "kubernetes-job",
                "image": "prefecthq/prefect:3-latest",
                "namespace": None,
                "job": None,
                "customizations": [],
                "stream_output": True,
                "unknown": 1,
            },
            source="block 'k8s'",
        )
        assert config.namespace == "default" and config.pod_watch_timeout_seconds == 60
        assert config.job_watch_timeout_seconds is None and config.finished_job_ttl is None
        assert_golden("kubernetes", "block_default", render(config))

    def test_shortcuts_then_customizations(self) -> None:
        data = {
            "type": "kubernetes-job",
            "image": "registry/flows:2",
            "namespace": "prefect",
            "service_account_name": "flow-runner",
            "image_pull_policy": "Always",
            "finished_job_ttl": 60,
            "labels": {"team": "data"},
            "env": {"EXTRA": "1", "PREFECT_API_KEY": None},
            "command": ["python", "-m", "prefect.engine"],
            "name": "daily",
            "cluster_config": {"config": {"users": [{"user": {"token": SECRET}}]}, "context_name": "prod"},
            "customizations": json.dumps(
                [
                    {
                        "op": "add",
                        "path": "/spec/template/spec/containers/0/resources",
                        "value": {"limits": {"nvidia.com/gpu": "1"}},
                    },
                    {"op": "add", "path": "/metadata/labels/cost-center", "value": "42"},
                ]
            ),
        }
        config = KIND.config_from_block(data, source="block 'k8s'")
        assert SECRET not in repr(config)
        payload = render(config)
        assert payload["namespace"] == payload["job"]["metadata"]["namespace"] == "prefect"
        assert_golden("kubernetes", "block_customized", payload)

    def test_manifest_namespace_is_the_fallback(self) -> None:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"namespace": "jobs"},
            "spec": {"template": {"spec": {"containers": [{"name": "prefect-job", "image": "i"}]}}},
        }
        config = KIND.config_from_block({"job": job}, source="block 'k8s'")
        assert render(config)["namespace"] == "jobs"


class TestBadInput:
    def test_missing_image(self) -> None:
        exc = error(from_pool, {})
        assert exc.field == "image" and SOURCE in str(exc) and "prefecthq/prefect" in str(exc)

    @pytest.mark.parametrize("namespace", ["Bad_NS", "-x", "a" * 64])
    def test_invalid_namespace(self, namespace: str) -> None:
        assert error(from_pool, {"image": "i", "namespace": namespace}).field == "namespace"

    def test_invalid_service_account(self) -> None:
        assert (
            error(from_pool, {"image": "i", "service_account_name": "Not OK"}).field == "service_account_name"
        )

    def test_invalid_label_key(self) -> None:
        assert "'///'" in str(error(from_pool, {"image": "i", "labels": {"///": "x"}}))

    @pytest.mark.parametrize("quantity", ["lots", "1 Gi", "-1"])
    def test_invalid_quantity(self, quantity: str) -> None:
        exc = error(from_pool, {"image": "i", "memory_request": quantity})
        assert exc.field.endswith("resources.requests.memory") and "512Mi" in str(exc)

    def test_invalid_pull_policy_in_block(self) -> None:
        exc = error(KIND.config_from_block, {"image": "i", "image_pull_policy": "Sometimes"}, source="b")
        assert exc.field == "image_pull_policy" and "IfNotPresent" in str(exc)

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda m: m.update(kind="CronJob"), "job_manifest"),
            (lambda m: m["spec"]["template"]["spec"]["containers"][0].update(name="main"), "name"),
            (lambda m: m["spec"]["template"]["spec"].update(restartPolicy="OnFailure"), "restartPolicy"),
            (lambda m: m["spec"]["template"]["spec"].update(containers=[]), "containers"),
        ],
    )
    def test_manifest_structure(self, change: Any, field: str) -> None:
        template = default_base_job_template("kubernetes")
        change(template["job_configuration"]["job_manifest"])
        exc = error(from_pool, {"image": "i"}, template=template)
        assert exc.field.startswith("job_manifest") and exc.field.endswith(field)

    def test_wrong_types_do_not_echo_secrets(self) -> None:
        exc = error(from_pool, {"image": "i", "env": {"TOKEN": [SECRET]}})
        assert exc.field == "env.TOKEN"
        exc = error(KIND.config_from_block, {"image": "i", "cluster_config": SECRET}, source="block 'k'")
        assert exc.field == "cluster_config" and "value hidden" in str(exc)

    @pytest.mark.parametrize(
        ("field", "value"), [("finished_job_ttl", -1), ("pod_watch_timeout_seconds", "soon")]
    )
    def test_numbers(self, field: str, value: Any) -> None:
        exc = error(KIND.config_from_block, {"image": "i", field: value}, source="block 'k'")
        assert exc.field == field and "block 'k'" in str(exc)

    def test_bad_customizations(self) -> None:
        exc = error(KIND.config_from_block, {"image": "i", "customizations": "[{"}, source="block 'k'")
        assert exc.field == "customizations"
        config = KIND.config_from_block(
            {"image": "i", "customizations": [{"op": "replace", "path": "/nope/x", "value": SECRET}]},
            source="b",
        )
        exc = error(render, config)
        assert exc.field == "customizations[0]"

    def test_job_must_be_an_object(self) -> None:
        assert (
            error(KIND.config_from_block, {"image": "i", "job": "apiVersion: batch/v1"}, source="b").field
            == "job"
        )

    def test_pool_without_job_manifest(self) -> None:
        exc = error(KIND.config_from_pool, {"namespace": "default"}, pool_type="kubernetes", source=SOURCE)
        assert exc.field == "job_manifest"
