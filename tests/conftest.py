"""Shared fixtures: one real Prefect server per session, a fresh pool per test, agent processes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:  # `support` importable whatever the import mode
    sys.path.insert(0, str(_TESTS))

from support.agent_proc import AgentProcess  # noqa: E402
from support.postgres import PostgresCluster, PostgresUnavailable, start_postgres  # noqa: E402
from support.prefect_api import PrefectAPI  # noqa: E402
from support.server import PrefectServer, start_prefect_server  # noqa: E402

# Set by .ci/run, which installs PostgreSQL: there, a missing PostgreSQL fails the tests
# that need it instead of skipping them.
REQUIRE_POSTGRES = "FLOW_AGENT_REQUIRE_POSTGRES"


_PRISTINE_LOGGING = structlog.get_config()


@pytest.fixture(autouse=True)
def _pristine_logging() -> Iterator[None]:
    """Each test starts with structlog's own defaults: a command invoked in-process (typer's
    CliRunner, in a test or in a module-scoped fixture) configures logging at WARNING for the
    whole process, after which a later test's `capture_logs` never sees an info line."""
    structlog.configure(**_PRISTINE_LOGGING)
    yield


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    return any(report is not None and report.failed for report in reports)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api(prefect_server: PrefectServer) -> Iterator[PrefectAPI]:
    with PrefectAPI(prefect_server.api_url) as client:
        yield client


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster, started only if a test asks for it."""
    try:
        cluster = start_postgres()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{exc} ({REQUIRE_POSTGRES}=1: PostgreSQL tests must run here)")
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def prefect_server_pg(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    """A second real Prefect server, backed by PostgreSQL as production servers are."""
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home-pg"), database_url=postgres.url())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api_pg(prefect_server_pg: PrefectServer) -> Iterator[PrefectAPI]:
    with PrefectAPI(prefect_server_pg.api_url) as client:
        yield client


# `database` picks the server; a test that takes `any_server`, `any_api` or
# `any_start_agent` runs once against each.
_SERVER_FIXTURE = {"sqlite": "prefect_server", "postgres": "prefect_server_pg"}
_API_FIXTURE = {"sqlite": "api", "postgres": "api_pg"}


@pytest.fixture(params=["sqlite", "postgres"])  # sqlite first: its server is up already
def database(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_server(request: pytest.FixtureRequest, database: str) -> PrefectServer:
    return request.getfixturevalue(_SERVER_FIXTURE[database])


@pytest.fixture
def any_api(request: pytest.FixtureRequest, database: str) -> PrefectAPI:
    return request.getfixturevalue(_API_FIXTURE[database])


@pytest.fixture
def pool(request: pytest.FixtureRequest) -> str:
    """A pool name of this test's own. Not created: the agent creates missing pools; tests
    that need it beforehand (to create deployments) call `api.create_process_pool(pool)`."""
    short = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    return f"t-{short.strip('-')[:24]}-{uuid.uuid4().hex[:6]}"


StartAgent = Callable[..., AgentProcess]


@contextlib.contextmanager
def _agents(request: pytest.FixtureRequest, server: PrefectServer, tmp_path: Path) -> Iterator[StartAgent]:
    agents: list[AgentProcess] = []

    def start(
        pool: str, *args: str, api_url: str | None = None, env: dict[str, str] | None = None
    ) -> AgentProcess:
        agent = AgentProcess(
            api_url or server.api_url,
            pool,
            tmp_path / f"agent-{len(agents) + 1}.log",
            *args,
            env=env,
            prefect_home=tmp_path / "prefect-home",
        )
        agents.append(agent)
        return agent.start()

    yield start

    for agent in agents:
        agent.stop()
    if _failed(request):
        for agent in agents:
            print(agent.describe())
        print(f"--- prefect server log tail\n{server.log_tail(30)}")


@pytest.fixture
def start_agent(
    request: pytest.FixtureRequest, prefect_server: PrefectServer, tmp_path: Path
) -> Iterator[StartAgent]:
    """`start_agent(pool, *args, api_url=None, env=None)` starts an agent subprocess; all are
    stopped after the test, and their log tails printed if it failed."""
    with _agents(request, prefect_server, tmp_path) as start:
        yield start


@pytest.fixture
def any_start_agent(
    request: pytest.FixtureRequest, any_server: PrefectServer, tmp_path: Path
) -> Iterator[StartAgent]:
    """`start_agent` against `any_server`."""
    with _agents(request, any_server, tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def registered(api: PrefectAPI) -> None:
    """The five infrastructure block types, registered once with `flow-agent blocks register`."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "blocks", "register"],
        env={"PREFECT_API_URL": api.api_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
