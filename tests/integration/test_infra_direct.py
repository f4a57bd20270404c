"""`flow-agent infra run|render|logs|wait|kill` and the Python block API on the process
backend, against the session's real Prefect server (issue 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from support.prefect_api import PrefectAPI, wait_for

from agent.infra_blocks import BlockError, KubernetesJob, Process

pytestmark = pytest.mark.integration


@pytest.fixture
def env(api: PrefectAPI, registered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "PREFECT_API_URL": api.api_url,
        "FLOW_AGENT_DATA_DIR": str(tmp_path / "data"),
        "FLOW_AGENT_KILL_GRACE": "2",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


@pytest.fixture
def block(env: dict[str, str]) -> str:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    Process(env={"FROM_BLOCK": "yes"}).save(name)
    return f"process/{name}"


def infra(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "infra", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _with_token(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("DIRECT_TOKEN") == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_run_prints_the_output_and_exits_with_the_workloads_code(env: dict[str, str], block: str) -> None:
    result = infra(env, "run", block, "--", "sh", "-c", 'echo hi; echo "block says $FROM_BLOCK"; exit 3')
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == ["hi", "block says yes"]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("flow-agent: exit code 3: Process exited with an unexpected status code.")


def test_a_sigkilled_command_exits_137_with_the_oom_explanation(env: dict[str, str], block: str) -> None:
    result = infra(env, "run", block, "--", "sh", "-c", "kill -9 $$")
    assert result.returncode == 137
    [line] = result.stderr.strip().splitlines()
    assert "SIGKILL" in line and "OOM warning" in line


def test_sigint_to_the_cli_kills_the_workload_and_leaves_no_process(env: dict[str, str], block: str) -> None:
    token = uuid.uuid4().hex
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "infra",
            "run",
            block,
            "--env",
            f"DIRECT_TOKEN={token}",
            "--",
            "sh",
            "-c",
            "echo started; sleep 300 & wait",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None and cli.stdout.readline().strip() == "started"
        assert _with_token(token)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 130
        assert "killed" in (cli.stderr.read() if cli.stderr else "")
        assert _with_token(token) == []
    finally:
        cli.kill()


def test_unknown_block_and_bad_input_are_one_line(env: dict[str, str], block: str) -> None:
    missing = infra(env, "run", "process/no-such-block", "--", "true")
    assert missing.returncode == 125
    assert missing.stderr.count("\n") == 1 and "no process block named 'no-such-block'" in missing.stderr
    wrong = infra(env, "run", "nope/x", "--", "true")
    assert wrong.returncode == 2 and "block type 'nope'" in wrong.stderr and "Traceback" not in wrong.stderr
    image = infra(env, "run", "--pool", "x", "--image", "busybox", "--", "true")
    assert image.returncode == 125 and "Traceback" not in image.stderr
    # a workload that cannot be provisioned: one line, before anything runs
    nowhere = infra(env, "run", block, "--job-var", "working_dir=/no/such/dir", "--", "true")
    assert nowhere.returncode == 125 and nowhere.stderr.count("\n") == 1, nowhere.stderr
    assert "/no/such/dir" in nowhere.stderr


def test_detach_prints_an_id_that_logs_wait_and_kill_work_on(env: dict[str, str], block: str) -> None:
    token = uuid.uuid4().hex
    started = infra(
        env,
        "run",
        block,
        "--detach",
        "--env",
        f"DIRECT_TOKEN={token}",
        "--",
        "sh",
        "-c",
        "echo one; echo two; sleep 300 & wait",
    )
    assert started.returncode == 0, started.stderr
    ident = started.stdout.strip()
    assert ident.startswith(f"{block}:")
    wait_for(lambda: infra(env, "logs", ident).stdout == "one\ntwo\n", timeout=20)
    assert _with_token(token)
    killed = infra(env, "kill", ident)
    assert killed.returncode == 0, killed.stderr
    assert _with_token(token) == []
    ended = infra(env, "wait", ident)
    assert ended.returncode == 130 and "interrupted" in ended.stderr


def test_a_detached_run_ends_by_itself_and_wait_says_how(env: dict[str, str], block: str) -> None:
    ident = infra(env, "run", block, "-d", "--", "sh", "-c", "echo done; exit 4").stdout.strip()
    ended = infra(env, "wait", ident)
    assert ended.returncode == 4
    assert infra(env, "logs", "--follow", ident).stdout == "done\n"


def test_pool_template_with_job_variables(
    env: dict[str, str], api: PrefectAPI, pool: str, tmp_path: Path
) -> None:
    api.create_process_pool(pool)
    result = infra(
        env,
        "run",
        "--pool",
        pool,
        "--job-var",
        f"working_dir={tmp_path}",
        "--env",
        "X=1",
        "--",
        "sh",
        "-c",
        'pwd; echo "x=$X"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path), "x=1"]


def test_render_shows_the_payload_masked_and_launches_nothing(env: dict[str, str], block: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    result = infra(
        {**env, "PREFECT_API_KEY": secret},
        "render",
        block,
        "--json",
        "--env",
        f"K={secret}",
        "--job-var",
        'customizations=[{"op": "add", "path": "/env/PATCHED", "value": "yes"}]',
        "--",
        "echo",
        "hi",
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout
    import json

    document = json.loads(result.stdout)
    assert document["kind"] == "process" and document["direct_run"].startswith("direct-")
    assert document["payload"]["command"] == ["echo", "hi"]
    assert document["payload"]["env"]["FROM_BLOCK"] == "yes" and document["payload"]["env"]["K"] == "********"
    assert "PREFECT_API_URL" not in document["payload"]["env"]
    assert document["payload"]["env"]["PATCHED"] == "yes"  # the JSON Patch customizations apply


def test_save_then_load_round_trips_and_reads_as_the_registered_type(
    env: dict[str, str], api: PrefectAPI
) -> None:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    block = Process(
        command=["python", "-V"], env={"A": "1", "B": None}, working_dir="/tmp", stream_output=False
    )
    block_id = block.save(name)
    document = api.request("GET", f"/block_types/slug/process/block_documents/name/{name}").json()
    assert document["id"] == block_id and document["block_type"]["slug"] == "process"
    assert document["data"]["command"] == ["python", "-V"] and document["data"]["env"] == {
        "A": "1",
        "B": None,
    }
    assert Process.load(name) == block
    with pytest.raises(BlockError, match="overwrite=True"):
        Process(command=["true"]).save(name)
    assert Process(command=["true"]).save(name, overwrite=True) == block_id
    assert Process.load(name).command == ["true"]


def test_a_block_made_in_the_ui_loads_in_code(env: dict[str, str], api: PrefectAPI) -> None:
    document = api.create_block_document(
        "kubernetes-job",
        {"image": "busybox:1", "namespace": "jobs", "env": {"A": "1"}, "finished_job_ttl": 60},
    )
    loaded = KubernetesJob.load(document["name"])
    assert (loaded.image, loaded.namespace, loaded.env, loaded.finished_job_ttl) == (
        "busybox:1",
        "jobs",
        {"A": "1"},
        60,
    )
    assert loaded.job["kind"] == "Job"  # the UI left it out: Prefect 2's default
    with pytest.raises(BlockError, match="no kubernetes-job block named 'missing'"):
        KubernetesJob.load("missing")


def test_run_from_python_with_a_callback_and_its_async_twin(env: dict[str, str]) -> None:
    lines: list[str] = []
    result = Process(env={"WHO": "block"}).run(
        command=["sh", "-c", 'echo "hi $WHO $X"; exit 2'], env={"X": "1"}, output=lines.append
    )
    assert lines == ["hi block 1"]
    assert (result.exit_code, result.oom) == (2, False) and "exit code 2" in result.explanation
    assert result.infrastructure_id.startswith("process/unsaved:")
    oom = anyio.run(lambda: Process().arun(command=["sh", "-c", "kill -9 $$"], output=lines.append))
    assert oom.exit_code == 137 and oom.oom and "OOM" in oom.explanation


def test_bad_block_fields_are_one_line(env: dict[str, str]) -> None:
    with pytest.raises(BlockError) as caught:
        Process(command="not a list")
    assert "\n" not in str(caught.value) and "'command'" in str(caught.value)


@pytest.fixture(autouse=True)
def _no_leftover_followers(tmp_path: Path) -> Iterator[None]:
    yield
    for proc in psutil.process_iter():
        try:
            if proc.cmdline()[-2:] == ["infra", "follow"] and proc.environ().get(
                "FLOW_AGENT_DATA_DIR", ""
            ).startswith(str(tmp_path)):
                proc.kill()
        except (psutil.Error, IndexError):
            continue
    time.sleep(0)
