"""Why the system killed a task: the execution's system log in Cloud Logging, read once.

Cloud Run's Admin API says only that a task's container "is terminated by the system"
(`term_signal` 9); the memory-limit kill is said in the execution's *system log*, which
Cloud Run writes for jobs to `run.googleapis.com/varlog/system` ("platform-generated logs
containing information about your workloads", https://cloud.google.com/run/docs/logging):
an entry of the `cloud_run_job` resource labelled with the execution (and the task index
and attempt), whose `textPayload` reads "Memory limit of 512 MiB exceeded with 530 MiB
used. Consider increasing the memory limit, see
https://cloud.google.com/run/docs/configuring/memory-limits" (tests/fixtures/cloud_run/
system_memory.json names its sources, docs/cloud-behaviour.md the rest).

So when a task ended by SIGKILL (`status.sigkilled`), this reads that log: one
`entries:list` page, filtered to the execution's memory and signal entries, with the run's
credentials. A transient failure is left to the caller to try again (the watch does, a few
rounds, so a Cloud Logging outage never holds a watch round in a retry loop); a refusal,
or the last try's failure, is said once in the agent log (a refusal with the fix,
`roles/logging.viewer`) and leaves the reader's older heuristic; a refusal the output
reader already said is not asked or said again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.backends.base import BackendError, BackendUnavailable
from agent.backends.cloud_run.client import Clients
from agent.backends.cloud_run.output import PAGE, Output, list_entries, parts_of
from agent.backends.cloud_run.status import SystemLog
from agent.backends.sdk import SdkCalls
from agent.observe.logging import REDACTOR, get_logger
from agent.retry import Retryable

__all__ = ["MEMORY", "read_system_log", "system_filter", "system_log_of"]

# the system log's name for jobs, and the spelling some entries carry (both seen in public
# alert filters; see docs/cloud-behaviour.md)
_LOGS: Final = ("run.googleapis.com%2Fvarlog%2Fsystem", "run.googleapis.com%2F%2Fvar%2Flog%2Fsystem")
# what a memory kill says ("Memory limit of ... exceeded with ... used", or the newer
# "Out-of-memory event detected in container"), and what the kill itself says
_OOM_EVENT: Final = "Out-of-memory event detected in container"
_PHRASES: Final = ("Memory limit of", _OOM_EVENT, "Container terminated on signal")
MEMORY: Final = re.compile(rf"Memory limit of .+ exceeded with .+ used|{_OOM_EVENT}")
_SIGNAL: Final = re.compile(r"Container terminated on signal \d+")
_NOTE: Final = "a SIGKILL is reported from the Admin API alone (a possible OOM)"
log = get_logger("agent.backends.cloud_run")


def system_filter(execution: str) -> str:
    """The filter of the execution's system-log entries that can explain a SIGKILL."""
    project, parts = parts_of(execution)
    names = " OR ".join(f'logName="projects/{project}/logs/{name}"' for name in _LOGS)
    texts = " OR ".join(f'textPayload:"{phrase}"' for phrase in _PHRASES)
    return " AND ".join([*parts, f"({names})", f"({texts})"])


def system_log_of(entries: Sequence[Any], task: Any) -> SystemLog:
    """The words of the entries about `task`'s last attempt (an entry without the task's
    labels counts for every task); the memory entry wins over the kill's own words."""
    memory = said = ""
    for entry in entries:
        if not isinstance(entry, Mapping) or not _about(entry, task):
            continue
        text = REDACTOR.mask_text(str(entry.get("textPayload") or "")).strip()
        if not memory and MEMORY.search(text):
            memory = text[:500]
        elif not said and _SIGNAL.search(text):
            said = text[:200]
    return SystemLog(memory=memory, said=said)


def _about(entry: Mapping[str, Any], task: Any) -> bool:
    labels = entry.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    index = labels.get("run.googleapis.com/task_index")
    attempt = labels.get("run.googleapis.com/task_attempt")
    return (index is None or str(index) == str(task.index)) and (
        attempt is None or str(attempt) == str(task.retried)
    )


async def read_system_log(
    calls: SdkCalls,
    clients: Clients,
    execution: str,
    task: Any,
    run_id: str,
    output: Output | None = None,
    *,
    last: bool = True,
) -> SystemLog | None:
    """The execution's system log about `task`'s SIGKILL; None when it could not be read.
    Not `last`: a transient failure raises BackendUnavailable, unsaid, to be tried again."""
    if output is not None and output.refused:
        return None  # Cloud Logging refused this run's reads: said once already, with the fix
    body = {
        "resourceNames": [f"projects/{parts_of(execution)[0]}"],
        "filter": system_filter(execution),
        "orderBy": "timestamp asc",
        "pageSize": PAGE,
    }
    try:
        page = await list_entries(calls, clients, body, final=False)
    except BackendError as exc:
        refused = not isinstance(exc, Retryable)
        if not refused and not last:
            raise BackendUnavailable(str(exc)) from None
        log.warning(f"the execution's system log is unavailable: {exc}; {_NOTE}", flow_run_id=run_id)
        if output is not None and refused:  # the output reader would only be refused again
            output.refused = output.stopped = output.warned = True
        return None
    return system_log_of(page.get("entries") or [], task)
