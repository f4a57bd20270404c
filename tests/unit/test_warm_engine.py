"""When a process run may start warm (agent/backends/process/warm.py), and what is said."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent.backends.process import warm
from agent.backends.process.warm import WarmEngine, _key, _Zygote

ENGINE = [sys.executable, "-m", "prefect.engine"]
ENV = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "PREFECT_API_URL": "http://x/api"}


def _spawn(fn):  # accepts() never spawns anything
    raise AssertionError("nothing to spawn")


def test_only_the_default_engine_command_with_the_agents_python_starts_warm() -> None:
    engine = WarmEngine(_spawn)

    assert engine.accepts(ENGINE, ENV)
    assert not engine.accepts(["sh", "-c", "python -m prefect.engine"], ENV)
    assert not engine.accepts([*ENGINE, "--extra"], ENV)
    assert not engine.accepts(["/usr/bin/python3", "-m", "prefect.engine"], ENV)


def test_turned_off_nothing_starts_warm() -> None:
    assert not WarmEngine(_spawn, enabled=False).accepts(ENGINE, ENV)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append(event)


def test_another_python_is_said_once_a_custom_command_not_at_all(monkeypatch) -> None:
    said = _Log()
    monkeypatch.setattr(warm, "log", said)
    engine = WarmEngine(_spawn)
    for _ in range(3):
        engine.accepts(["/opt/other/python", "-m", "prefect.engine"], ENV)
        engine.accepts(["sh", "-c", "exit 0"], ENV)

    assert said.lines == ["runs with another Python than the agent's start cold"]


def test_runs_share_a_warm_engine_only_with_the_same_environment_but_for_run_variables() -> None:
    run = {"PREFECT__FLOW_RUN_ID": "1", "PREFECT__CONTROL_TOKEN": "t", "PREFECT__FLOW_NAME": "f"}
    assert _key({**ENV, **run}) == _key(ENV)
    assert not any(name.startswith("PREFECT__") for name, _ in _key({**ENV, **run}))
    for other in (
        {"PYTHONPATH": "/elsewhere"},
        {"LANG": "de_DE.UTF-8"},
        {"SSL_CERT_FILE": "/etc/corp-ca.pem"},  # Prefect's api.ssl_cert_file default, read at import
        {"PREFECT_LOGGING_LEVEL": "DEBUG"},
        {"NO_COLOR": "1"},  # read by the console handler Prefect's logging builds
        {"JOB_VARIABLE": "x"},
    ):
        assert _key({**ENV, **other}) != _key(ENV), other


def test_a_warm_engine_is_stale_once_a_directory_it_imports_from_changes(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    zygote = _Zygote(None, None, frozenset())  # type: ignore[arg-type]
    zygote.paths = {str(site): site.stat().st_mtime}
    assert not zygote.stale()

    os.utime(site, (site.stat().st_atime, site.stat().st_mtime + 10))  # a package installed

    assert zygote.stale()


def _zygote_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zygote_under_test", warm.ZYGOTE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prebuilt_tls_contexts_are_each_handed_out_once_for_the_same_file_only(
    tmp_path: Path, monkeypatch
) -> None:
    import ssl

    import certifi

    zygote = _zygote_module()
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setattr(zygote, "_TLS_CONTEXTS", 3)
    original = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", original)  # put back after the test
    tls = zygote._tls_contexts()
    assert tls is not None and tls[0] == str(bundle)
    prebuilt = list(tls[2])

    zygote._use_tls_contexts(tls)
    first = ssl.create_default_context(cafile=str(bundle))
    other = ssl.create_default_context(cafile=certifi.where())  # another file: built as asked
    insecure = ssl.create_default_context()
    second = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(bundle))

    assert first in prebuilt and second in prebuilt and first is not second
    assert other not in prebuilt and insecure not in prebuilt
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats() == other.cert_store_stats()

    bundle.write_bytes(bundle.read_bytes() + b"\n")  # changed since: built from the file as it is
    changed = ssl.create_default_context(cafile=str(bundle))
    assert changed not in prebuilt and len(tls[2]) == 1


def test_the_original_function_is_back_once_the_prebuilt_contexts_are_used_up(monkeypatch) -> None:
    import ssl

    zygote = _zygote_module()
    monkeypatch.setattr(zygote, "_TLS_CONTEXTS", 2)
    original = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", original)
    tls = zygote._tls_contexts()
    assert tls is not None
    zygote._use_tls_contexts(tls)

    taken = [ssl.create_default_context(cafile=tls[0]) for _ in range(3)]

    assert len({id(context) for context in taken}) == 3 and not tls[2]
    assert ssl.create_default_context is original


def test_runs_of_new_environments_start_cold_while_engines_churn(monkeypatch) -> None:
    import anyio

    said = _Log()
    monkeypatch.setattr(warm, "log", said)

    async def main() -> None:
        engine = WarmEngine(_spawn)  # spawning anything would fail the test
        now = anyio.current_time()
        engine._starts = [now - 1.0] * warm._CHURN_STARTS
        assert await engine._ready({**ENV, "JOB_RUN": "1"}) is None
        assert await engine._ready({**ENV, "JOB_RUN": "2"}) is None
        engine._starts = [now - warm._CHURN_WINDOW - 1.0] * warm._CHURN_STARTS
        assert not engine._churning()

    anyio.run(main)
    assert said.lines == [
        "run environments change too often for warm engines; runs of a new environment start cold"
    ]


_PRELOADED = """
import importlib.util, sys
import prefect.engine
from prefect.client.schemas.objects import FlowRun

spec = importlib.util.spec_from_file_location("zygote", sys.argv[1])
zygote = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zygote)

def deferred():  # of every model the engine's own walk finds (over 100 before: it finds them)
    return sum(not m.__dict__.get("__pydantic_complete__", True) for m in zygote._models())

before, flow_run_before = deferred(), FlowRun.__pydantic_complete__
zygote._preload()
print(before, flow_run_before, deferred(), FlowRun.__pydantic_complete__,
      "anyio._backends._asyncio" in sys.modules)
"""


def test_the_warm_engine_builds_the_models_prefect_defers_before_any_run_forks() -> None:
    import subprocess

    # a fresh interpreter: this one's pydantic models may have been built by other tests
    done = subprocess.run(
        [sys.executable, "-c", _PRELOADED, str(warm.ZYGOTE)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    before, flow_run_before, after, flow_run_after, anyio_backend = done.stdout.split()
    assert int(before) > 100 and flow_run_before == "False"
    assert int(after) == 0 and flow_run_after == "True" and anyio_backend == "True"
