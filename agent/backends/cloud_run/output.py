"""An execution's output: its Cloud Logging entries, emitted once, in order, masked.

Cloud Run sends what a job's containers write to stdout and stderr to Cloud Logging, as
entries of the `cloud_run_job` resource (labels `job_name`, `location`) in the logs
`run.googleapis.com/stdout` and `run.googleapis.com/stderr`, each labelled with its
`run.googleapis.com/execution_name` (docs/cloud-behaviour.md, "Cloud Run"). The Admin API
has no log call, so this reads `entries:list` (Cloud Logging REST v2) with the run's own
credentials: that execution's entries, oldest first, one page (`PAGE` entries) in memory at
a time.

**Once and in order.** The cursor is the newest emitted entry's time; each read asks from a
little before it (`LATE`: Cloud Logging may show an entry a moment after a newer one) and
skips the entries whose `insertId` it has emitted (the ids within that window are kept,
at most `SEEN_MAX`). Entries of one instant keep the order Cloud Logging gives them.

**Reads** run in the watch engine's round, after the execution's status, and a *drain*
runs after the end before the waiter wakes: Cloud Logging shows an entry seconds after it
was written, so it reads until a read brings nothing new after a short settle (at most
`DRAIN_MAX` seconds). A failed read never touches the run: it is said once in the agent
log (a refusal with the fix, and no more reads; a transient one is tried next round).
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import anyio
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from agent.backends.base import BackendError, BackendUnavailable, LaunchError, OutputSink, sent
from agent.backends.cloud_run.client import Clients, words
from agent.backends.sdk import SdkCalls
from agent.observe.logging import REDACTOR, get_logger
from agent.retry import Retryable, RetryPolicy

__all__ = [
    "DRAIN_MAX",
    "LATE",
    "PAGE",
    "SEEN_MAX",
    "Output",
    "entry_filter",
    "line_of",
    "list_entries",
    "logs_calls",
    "parts_of",
]

PAGE: Final = 1000  # entries per page (the API's maximum): what one read holds in memory
LATE: Final = 5.0  # seconds each read looks back for entries shown after newer ones
SEEN_MAX: Final = 20_000  # insertIds kept to skip what was emitted (within LATE of the cursor)
DRAIN_MAX: Final = 30.0  # seconds the drain after the end may take at most
_STAMP: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\d*(Z|[+-]\d\d:\d\d)$")
_PATH: Final = re.compile(
    r"^projects/(?P<p>[^/]+)/locations/(?P<r>[^/]+)/jobs/(?P<j>[^/]+)/executions/(?P<e>[^/]+)$"
)
_TIMEOUT: Final = 10.0  # seconds a round's read may take (it shares the round with status reads)
_FINAL_TIMEOUT: Final = 30.0
_FIX: Final = (
    "give the run's credentials the Logs Viewer role (roles/logging.viewer: logging.logEntries.list) "
    "in the project"
)
log = get_logger("agent.backends.cloud_run")


def logs_calls(retry: RetryPolicy) -> SdkCalls:
    """The calls to Cloud Logging: the agent's one retry policy, its own classification."""
    return SdkCalls(retry, _classify)


def _classify(exc: Exception, what: str) -> BackendError:
    """Cloud Logging's errors in its own words (the fix names the logging role, not Cloud Run's)."""
    if isinstance(exc, gexc.Unauthorized | gexc.Forbidden):  # by HTTP status: 401, 403
        return LaunchError(f"Cloud Logging {what}: {words(exc)}; {_FIX}")
    if isinstance(exc, gexc.TooManyRequests | gexc.ServerError | gexc.DeadlineExceeded):
        return BackendUnavailable(f"Cloud Logging {what}: {words(exc)} (will retry)")
    if isinstance(exc, gexc.GoogleAPICallError):
        return LaunchError(f"Cloud Logging {what}: {words(exc)}")
    if isinstance(exc, auth_exc.TransportError | auth_exc.RefreshError | OSError | ValueError):
        return BackendUnavailable(f"Cloud Logging {what}: {type(exc).__name__} (will retry)")
    return BackendError(f"Cloud Logging {what}: unexpected {type(exc).__name__}")


def parts_of(execution: str) -> tuple[str, list[str]]:
    """The project of an execution and the filter terms that select its entries."""
    match = _PATH.match(execution)
    if match is None:
        raise LaunchError(f"not a Cloud Run execution name: {execution[:200]!r}")
    return match["p"], [
        'resource.type="cloud_run_job"',
        f'resource.labels.job_name="{match["j"]}"',
        f'resource.labels.location="{match["r"]}"',
        f'labels."run.googleapis.com/execution_name"="{match["e"]}"',
    ]


def entry_filter(execution: str, since: str | None) -> str:
    """The filter of one execution's stdout and stderr entries (from `since`, RFC 3339)."""
    project, parts = parts_of(execution)
    names = " OR ".join(
        f'logName="projects/{project}/logs/run.googleapis.com%2F{s}"' for s in ("stdout", "stderr")
    )
    parts.append(f"({names})")
    if since:
        parts.append(f'timestamp>="{since}"')
    return " AND ".join(parts)


def line_of(entry: Mapping[str, Any]) -> str:
    """The text a container wrote: `textPayload`, or the `message` of a structured (JSON)
    line Cloud Run parsed into `jsonPayload` (the whole JSON when it has none)."""
    if isinstance(entry.get("textPayload"), str):
        return str(entry["textPayload"])
    payload = entry.get("jsonPayload")
    if isinstance(payload, Mapping):
        message = payload.get("message")
        return str(message) if isinstance(message, str) else json.dumps(payload, sort_keys=True)
    return ""


@dataclass
class Output:
    """The output of one watched execution: where it goes and how far it got."""

    emit: OutputSink
    cursor: int | None = None  # the newest emitted entry's time (ns)
    seen: OrderedDict[str, int] = field(default_factory=OrderedDict, repr=False)  # insertId -> ns
    warned: bool = False
    stopped: bool = False  # refused (or the sink failed): no more reads
    refused: bool = False  # Cloud Logging refused a read (said once, with the fix)

    async def follow(
        self, calls: SdkCalls, clients: Clients, execution: str, run_id: str, *, final: bool
    ) -> int:
        """Emit the entries shown since the last read; how many were new."""
        if self.stopped:
            return 0
        since = None if self.cursor is None else _rfc3339(self.cursor - int(LATE * 1e9))
        new, token = 0, ""
        try:
            body = {
                "resourceNames": [f"projects/{execution.split('/')[1]}"],
                "filter": entry_filter(execution, since),
                "orderBy": "timestamp asc",
                "pageSize": PAGE,
            }
            while True:  # one page at a time: memory holds PAGE entries at most
                page = await self._page(
                    calls, clients, {**body, **({"pageToken": token} if token else {})}, final
                )
                new += self._take(page.get("entries") or [], run_id)
                token = str(page.get("nextPageToken") or "")
                if not token or self.stopped:
                    return new
        except BackendError as exc:
            self._unavailable(exc, run_id, refused=not isinstance(exc, Retryable))
            return new

    async def drain(
        self, calls: SdkCalls, clients: Clients, execution: str, run_id: str, *, settle: float
    ) -> None:
        """After the end: read until a read brings nothing new `settle` seconds after the end."""
        ended = time.monotonic()
        with anyio.move_on_after(DRAIN_MAX):
            while not self.stopped:
                new = await self.follow(calls, clients, execution, run_id, final=True)
                if not new and time.monotonic() - ended >= settle:
                    return
                await anyio.sleep(min(settle, 1.0) or 0.05)

    @staticmethod
    async def _page(calls: SdkCalls, clients: Clients, body: dict[str, Any], final: bool) -> dict[str, Any]:
        return await list_entries(calls, clients, body, final=final)

    def _take(self, entries: list[Any], run_id: str) -> int:
        new = 0
        for entry, stamp in _stamped(entries):
            key = str(entry.get("insertId") or f"{stamp}:{line_of(entry)}")
            if key in self.seen:
                continue
            self._remember(key, stamp)
            new += 1
            line = REDACTOR.mask_text(line_of(entry)).rstrip()  # masked before any cut
            if line and not self._send(line, run_id):
                break
        return new

    def _remember(self, key: str, stamp: int) -> None:
        self.cursor = stamp if self.cursor is None else max(self.cursor, stamp)
        self.seen[key] = stamp
        horizon = self.cursor - int(LATE * 1e9) * 2  # ids older than any read asks for again
        while self.seen and (len(self.seen) > SEEN_MAX or next(iter(self.seen.values())) < horizon):
            self.seen.popitem(last=False)

    def _send(self, line: str, run_id: str) -> bool:
        if sent(self.emit, line, "cloud_run", run_id):
            return True
        self.stopped = True
        return False

    def _unavailable(self, exc: BackendError, run_id: str, *, refused: bool) -> None:
        self.stopped = self.stopped or refused
        self.refused = self.refused or refused
        if not self.warned:
            self.warned = True
            then = "" if refused else "; trying again on the next round"
            log.warning(f"the execution's output is unavailable: {exc}{then}", flow_run_id=run_id)


async def list_entries(
    calls: SdkCalls, clients: Clients, body: dict[str, Any], *, final: bool
) -> dict[str, Any]:
    """One `entries:list` page with the run's credentials; `final`: retried with the agent's
    policy (after the end), else tried once (a round's read: the next round tries again)."""

    def post() -> dict[str, Any]:
        url = f"{clients.logging_url}/v2/entries:list"
        response = clients.logs.post(url, json=body, timeout=_FINAL_TIMEOUT if final else _TIMEOUT)
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        answer = response.json()
        return answer if isinstance(answer, dict) else {}

    what = "entries.list"
    return await (calls(post, what) if final else calls.once(post, what))


def _stamped(entries: list[Any]) -> Iterator[tuple[Mapping[str, Any], int]]:
    for entry in entries:
        if isinstance(entry, Mapping):
            yield entry, _ns(str(entry.get("timestamp") or ""))


def _ns(text: str) -> int:
    match = _STAMP.match(text)
    if match is None:
        return 0
    try:
        seconds = datetime.fromisoformat(match[1] + match[3].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0
    return int(seconds) * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(max(ns, 0), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"
