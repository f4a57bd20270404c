"""A throwaway PostgreSQL cluster for one test session, from Debian's `postgresql` binaries.

`start_postgres()` runs initdb into a fresh temporary directory, starts the server on a
free TCP port (its unix socket in the same directory, so it never meets a system cluster),
and creates one database; `PostgresCluster.stop()` stops it and removes the directory.

PostgreSQL refuses to run as root. When the tests run as root (CI does), every
PostgreSQL command runs as the `postgres` system user the Debian package creates, in a
directory that user owns; otherwise as the current user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.server import free_port, tail

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bin_dir", "start_postgres"]

_SUPERUSER = "flow"  # trust authentication: the cluster lives as long as the session
_RUN_AS = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (Debian), else initdb on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version(Path(p).parent.parent.name)
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
        "`apt-get install -y postgresql`, or run .ci/run, which installs it"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path  # owned by the user the server runs as; data, socket and log inside
    port: int
    database: str
    run_as: str | None  # None: the current user

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{_SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's binaries as the cluster's user; raise with its output on failure."""
        command = [str(self.bin_dir / tool), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.root, env=_clean_env()
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"--- postgres log tail\n{self.log_tail()}"
            )
        return result

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    """No PG* variable of the caller may point the tools at another server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C.UTF-8"}


def start_postgres(database: str = "prefect") -> PostgresCluster:
    bin_dir = find_bin_dir()
    run_as = _RUN_AS if os.geteuid() == 0 else None
    # Not under pytest's tmp dir: that is private to the current user, and the server's
    # user must own its directory and reach it.
    root = Path(tempfile.mkdtemp(prefix="flow-agent-pg-"))
    if run_as is not None:
        try:
            user = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise PostgresUnavailable(f"no {run_as!r} system user to run PostgreSQL as") from exc
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PostgresCluster(bin_dir, root, free_port(), database, run_as)
    try:
        _init_and_start(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _init_and_start(cluster: PostgresCluster) -> None:
    data = str(cluster.data_dir)
    cluster.run(
        "initdb", "-D", data, "-U", _SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync", timeout=120
    )
    options = " ".join(
        [
            f"-p {cluster.port}",
            f"-k {cluster.root}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=300",  # two Prefect servers' pools and services, with room
            # A throwaway database: durability buys nothing here and costs the 2-core machine
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
    )
    log = str(cluster.log_path)
    cluster.run("pg_ctl", "start", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", timeout=90)
    socket_dir, port = str(cluster.root), str(cluster.port)
    cluster.run("createdb", "-h", socket_dir, "-p", port, "-U", _SUPERUSER, cluster.database)
