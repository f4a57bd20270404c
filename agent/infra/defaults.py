"""Default base job templates, one JSON file per pool type in `agent/infra/templates/`.

The files are copied verbatim from Prefect's workers (`get_default_base_job_template()`),
so a pool that flow-agent creates looks exactly like one `prefect worker start` would
create. Adding a backend is adding `templates/<type>.json`: nothing here changes.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from agent.infra.templating import InfraError

__all__ = ["default_base_job_template", "known_pool_types"]

_SUFFIX = ".json"


def _templates() -> Traversable:
    return resources.files("agent.infra").joinpath("templates")


@functools.cache
def known_pool_types() -> tuple[str, ...]:
    """Pool types that have a bundled default template, sorted."""
    names = (entry.name for entry in _templates().iterdir() if entry.is_file())
    return tuple(sorted(n.removesuffix(_SUFFIX) for n in names if n.endswith(_SUFFIX)))


@functools.cache
def _load(pool_type: str) -> dict[str, Any]:
    text = _templates().joinpath(pool_type + _SUFFIX).read_text(encoding="utf-8")
    template: dict[str, Any] = json.loads(text)
    return template


def default_base_job_template(pool_type: str) -> dict[str, Any]:
    """A fresh deep copy of the default base job template for `pool_type`.

    Raises `InfraError` for a type without a bundled template. The name is checked against
    the known list before any file is opened, so it can never address another path.
    """
    known = known_pool_types()
    if pool_type not in known:
        raise InfraError(
            f"work pool type {pool_type!r} has no default base job template; use one of: {', '.join(known)}",
            field="type",
            source=f"work pool type {pool_type!r}",
        )
    # The parsed file is cached; callers get their own copy to edit freely.
    return copy.deepcopy(_load(pool_type))
