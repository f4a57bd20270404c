"""Detached direct runs: a follower process owns the run, so its cleanup still happens.

A cloud backend deletes what it made (the Cloud Run job, the ACI group, the Kubernetes Job)
when it sees the end, so a detached run needs a watcher until then. `flow-agent infra run
--detach` starts one: `flow-agent infra follow` in a session of its own, given the request
on its stdin (never on its command line: env values may be secrets). It launches, answers
`id <INFRASTRUCTURE_ID>` (or `error <one line>`) on its stdout, then writes the workload's
output, masked, to `<state dir>/direct/<run id>.log` and its end to `<run id>.json`. A
SIGTERM makes it kill the workload and clean up, as Ctrl-C does a foreground run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import psutil

from agent.direct.build import DirectError, Request, Target
from agent.direct.run import Result

__all__ = ["Records", "answer", "decode_request", "encode_request", "start_follower"]


class Records:
    """A detached run's files on this host: its output and, once ended, its result."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "direct"

    def log(self, run_id: str) -> Path:
        return self.root / f"{run_id}.log"

    def status(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def open_log(self, run_id: str) -> IO[str]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return open(self.log(run_id), "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def started(self, run_id: str, ident: str, pid: int) -> None:
        self._write(run_id, {"id": ident, "follower": pid, "started": psutil.Process(pid).create_time()})

    def ended(self, run_id: str, result: Result) -> None:
        current = self.read(run_id) or {}
        self._write(run_id, {**current, "result": asdict(result)})

    def read(self, run_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status(run_id).read_text())
        except (OSError, ValueError):
            return None
        return data

    def result(self, run_id: str) -> Result | None:
        data = (self.read(run_id) or {}).get("result")
        return Result(**data) if data else None

    def follower(self, run_id: str) -> psutil.Process | None:
        """The follower still watching this run, if it is alive (a reused pid is not it)."""
        data = self.read(run_id) or {}
        if "result" in data or "follower" not in data:
            return None
        try:
            proc = psutil.Process(int(data["follower"]))
            if (
                abs(proc.create_time() - float(data["started"])) < 1.0
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                return proc
        except (psutil.Error, ValueError, KeyError):
            pass
        return None

    def _write(self, run_id: str, data: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.status(run_id).with_suffix(".tmp")
        temp.write_text(json.dumps(data))
        os.replace(temp, self.status(run_id))


def answer(line: str) -> None:
    """Answer the `infra run --detach` that started us, then let go of its pipe: it has its
    answer, and a follower must not die of a broken pipe when it exits."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def encode_request(target: Target, request: Request, run_id: str) -> bytes:
    body = {
        "target": target.ref,
        "run_id": run_id,
        "command": list(request.command),
        "env": dict(request.env),
        "image": request.image,
        "job_vars": dict(request.job_vars),
    }
    return json.dumps(body).encode()


def decode_request(raw: bytes) -> tuple[Target, Request, str]:
    body = json.loads(raw)
    request = Request(body["command"], body["env"], body["image"], body["job_vars"])
    return Target.block(body["target"]), request, str(body["run_id"])


def start_follower(argv: Sequence[str], request: bytes, env: Mapping[str, str]) -> str:
    """Start the follower (`argv`), hand it the request; the infrastructure id it answers."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or hang-up of this terminal does not reach it
        env=dict(env),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(request)
        proc.stdin.close()
        line = proc.stdout.readline()  # its answer, or EOF when it died first
    except BaseException:  # Ctrl-C while it launches: it stops what it started, as a run does
        proc.terminate()
        raise
    answer, _, rest = line.decode(errors="replace").strip().partition(" ")
    if answer == "id" and rest:
        return rest
    if answer == "error":
        raise DirectError(rest)
    proc.kill()
    raise DirectError(
        "the detached run's follower gave no infrastructure id; run without --detach to see why"
    )
