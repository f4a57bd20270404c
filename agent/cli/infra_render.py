"""`flow-agent infra render`: the exact payload a direct run would launch, launching nothing.

The document has `render`'s shape (kind, source, payload, masked as values and as JSON
text); a process payload shows what the run adds and counts what it inherits unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.cli.render import _split_env, masked_document
from agent.direct import DirectSession, Request, Target
from agent.observe.logging import REDACTOR

__all__ = ["render_document", "summary"]


async def render_document(
    session: DirectSession, target: Target, request: Request, *, environ: Mapping[str, str]
) -> dict[str, Any]:
    job = await session.job(target, request)
    payload: dict[str, Any] = dict(job.payload)
    document: dict[str, Any] = {"direct_run": job.flow_run_name, "kind": job.kind, "source": job.source}
    if isinstance(payload.get("env"), Mapping):
        payload["env"], inherited = _split_env(payload["env"], environ, set(request.env))
        document["inherited_env"] = {"count": len(inherited)}
    document["payload"] = payload
    return masked_document(document, REDACTOR)


def summary(document: Mapping[str, Any]) -> str:
    lines = [
        f"kind:        {document['kind']}",
        f"source:      {document['source']}",
        f"direct run:  {document['direct_run']} (no flow run; the name changes every run)",
        "payload (secrets masked):",
        json.dumps(document["payload"], indent=2, sort_keys=True),
    ]
    if "inherited_env" in document:
        lines.append(f"+ {document['inherited_env']['count']} variables from this environment")
    return "\n".join(lines)
