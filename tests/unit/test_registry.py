"""One registry of kinds: every list of kinds in the agent is derived from it."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_backend import FAKE, FakeBackend, FakeKind, fake_registered

from agent.api import PrefectClient
from agent.backends import BackendOptions, Backends, extra_for
from agent.blocks import INFRASTRUCTURE_SLUGS, block_specs
from agent.infra import InfraError, known_pool_types
from agent.infra.kinds import Kinds
from agent.infra.legacy import LEGACY_SLUGS
from agent.infra.process import ProcessKind
from agent.infra.spec import RunContext
from agent.observe.metrics import Metrics
from agent.observe.sdnotify import SystemdNotifier
from agent.registry import BUILTIN, REGISTRY, KindEntry, Registry, load
from agent.runtime.app import Agent, servable_pool_types
from agent.settings import Settings

CONTRACT = Path(__file__).resolve().parents[1] / "contract"


@pytest.fixture
def fake() -> Iterator[KindEntry]:
    with fake_registered() as entry:
        yield entry


@pytest.mark.parametrize("entry", BUILTIN, ids=lambda e: e.kind)
def test_each_builtin_kind_has_its_parts(entry: KindEntry) -> None:
    assert load(entry.kind_class).kind == entry.kind
    assert set(entry.pool_types) <= set(known_pool_types()), "every pool type needs templates/<type>.json"
    assert (CONTRACT / f"harness_{entry.kind.replace('-', '_')}.py").is_file()
    assert entry.backend_installed()  # the test environment has every extra
    backend = load(entry.backend_class)
    assert backend.kind == entry.kind
    assert isinstance(backend.runtime_type, type)
    # built as `backend_class(options)`, the same way for every kind
    assert next(iter(inspect.signature(backend).parameters)) == "options"


def test_kinds_resolve_pool_types_and_block_slugs_through_the_registry(fake: KindEntry) -> None:
    kinds = Kinds(python=sys.executable, base_env={})
    for entry in REGISTRY:
        for pool_type in entry.pool_types:
            assert kinds.for_pool_type(pool_type, source="test").kind == entry.kind
        assert entry.block_slug is not None
        assert kinds.for_block_slug(entry.block_slug, source="test").kind == entry.kind
    assert isinstance(kinds.get("fake"), FakeKind)
    assert kinds.get("fake") is kinds.get("fake")  # built once
    assert Kinds.kind_of_pool_type("fake") == "fake"
    assert Kinds.kind_of_pool_type("docker") is None


def test_an_unknown_pool_type_or_slug_names_the_supported_ones() -> None:
    kinds = Kinds(python=sys.executable, base_env={})
    with pytest.raises(InfraError, match="supported types: .*cloud-run-v2.*kubernetes.*process") as caught:
        kinds.for_pool_type("docker", source="work pool 'x'")
    assert caught.value.field == "type"
    with pytest.raises(InfraError, match="use one of .*ecs-task.*kubernetes-job") as caught:
        kinds.for_block_slug("docker-container", source="block docker-container/x")
    assert caught.value.field == "infrastructure_document_id"


def test_the_process_kind_gets_the_options_its_entry_names() -> None:
    kinds = Kinds(python="/opt/py/bin/python3", base_env={"PATH": "/bin", "FLOW_AGENT_LIMIT": "2"})
    process = kinds.get("process")
    assert isinstance(process, ProcessKind)
    config = process.config_from_pool({}, pool_type="process", source="test")
    payload = process.build_payload(config, RunContext("run-1", "run-one"))
    assert payload["command"][0] == "/opt/py/bin/python3"
    assert payload["env"]["PATH"] == "/bin" and "FLOW_AGENT_LIMIT" not in payload["env"]
    with pytest.raises(TypeError, match="'process' kind needs the option.*python"):
        Kinds(base_env={}).get("process")


def test_backends_are_the_installed_ones_built_lazily_with_one_options(fake: KindEntry) -> None:
    options = BackendOptions(watch_interval=0.5)
    backends = Backends(options)
    assert [kind for kind in backends] == REGISTRY.kinds
    assert backends.built() == []
    built = backends["fake"]
    assert isinstance(built, FakeBackend) and built.options is options
    assert backends["fake"] is built and backends.built() == [built]
    assert backends.get("docker") is None


def test_a_backend_whose_sdk_is_missing_is_not_available() -> None:
    missing = KindEntry(
        "nomad",
        "support.fake_backend:FakeKind",
        "support.fake_backend:FakeBackend",
        pool_types=("nomad",),
        sdk="no_such_sdk_module.client",
        extra="nomad",
    )
    REGISTRY.register(missing)
    try:
        backends = Backends(BackendOptions())
        assert "nomad" not in backends and "nomad" not in servable_pool_types(backends)
        assert extra_for("nomad") == "nomad"
    finally:
        REGISTRY.unregister("nomad")
    assert extra_for("nomad") is None
    assert extra_for("ecs") == "ecs" and extra_for("process") is None


def test_servable_pool_types_follow_the_backends(fake: KindEntry) -> None:
    types = servable_pool_types(Backends(BackendOptions()))
    assert types == {*REGISTRY.pool_types(), "prefect-agent"}
    assert "fake" in types and "cloud-run-v2" in types


def test_metrics_label_registered_kinds_and_call_the_rest_other() -> None:
    metrics = Metrics()
    metrics.launched("fake", 0.1)  # not registered yet
    with fake_registered():
        metrics.launched("fake", 0.1)
    metrics.launched("kubernetes", 0.1)
    text = metrics.registry.get_sample_value
    assert text("flow_agent_runs_launched_total", {"backend": "other"}) == 1
    assert text("flow_agent_runs_launched_total", {"backend": "fake"}) == 1
    assert text("flow_agent_runs_launched_total", {"backend": "kubernetes"}) == 1


def test_block_types_are_the_registrys_slugs() -> None:
    assert list(INFRASTRUCTURE_SLUGS) == REGISTRY.block_slugs() == list(LEGACY_SLUGS)
    without_card = Registry([*BUILTIN, FAKE])
    with pytest.raises(LookupError, match="block slug.*fake.*no block spec"):
        block_specs(without_card)
    without_kind = Registry(BUILTIN[:-1])
    with pytest.raises(LookupError, match="kubernetes-job .*belong to no kind"):
        block_specs(without_kind)


def test_a_kind_cannot_take_another_kinds_pool_type_or_slug() -> None:
    registry = Registry(BUILTIN)
    with pytest.raises(ValueError, match="'docker' reuses a pool type or block slug of 'process'"):
        registry.register(KindEntry("docker", "m:K", "m:B", pool_types=("docker", "process")))
    with pytest.raises(ValueError, match="reuses"):
        registry.register(KindEntry("docker", "m:K", "m:B", pool_types=("docker",), block_slug="ecs-task"))
    registry.register(KindEntry("nomad", "m:K", "m:B", pool_types=("nomad",)))  # no block: fine
    registry.register(KindEntry("docker", "m:K", "m:B", pool_types=("docker",)))
    assert registry.for_pool_type("docker") is not None and registry.block_slugs() == REGISTRY.block_slugs()


@pytest.mark.anyio
async def test_the_agent_hands_every_backend_the_users_retry_policy(fake: KindEntry, tmp_path: Path) -> None:
    settings = Settings(
        api_url="http://127.0.0.1:9/api",
        pools=["p"],
        retry_initial=0.25,
        retry_max=7.0,
        retry_budget=11.0,
        watch_interval=0.5,
        data_dir=tmp_path,
    )
    api = PrefectClient.from_settings(settings)
    try:
        agent = Agent(settings, api, environ={}, metrics=Metrics(), notifier=SystemdNotifier(None))
        backend = agent.backends["fake"]
        assert isinstance(backend, FakeBackend)
        assert backend.options.retry == settings.retry_policy
        assert backend.options.retry.initial == 0.25 and backend.options.retry.budget == 11.0
        assert backend.options.watch_interval == 0.5
        assert backend.options.state_dir == tmp_path / "state"
    finally:
        await api.aclose()
