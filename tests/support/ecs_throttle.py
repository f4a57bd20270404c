"""ECS throttling on the moto double, and a count of what the backend asked.

`throttled(rate, seed)` makes a seeded fraction of RegisterTaskDefinition, RunTask and
DescribeTasks calls answer as ECS does when an account's rate is exceeded (HTTP 400,
`ThrottlingException`, "Rate exceeded") before they do anything, so a throttled call
changed nothing and may be sent again. It also records what every call asked for: the
tasks per DescribeTasks, the RunTask client tokens, the registrations. It wraps moto's
response methods as installed (after `moto_ecs()`, whose RunTask is already the
documented, idempotent one) and puts them back on exit.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["THROTTLED_OPERATIONS", "EcsCalls", "throttled"]

THROTTLED_OPERATIONS = ("register_task_definition", "run_task", "describe_tasks")


@dataclass
class EcsCalls:
    """What the backend sent to the double while `throttled` was active."""

    rate: float
    seed: int
    first: bool = False  # every operation's first call is throttled (a test that cannot miss it)
    calls: Counter[str] = field(default_factory=Counter)  # answered calls, by operation
    throttled: Counter[str] = field(default_factory=Counter)  # refused calls, by operation
    describe_sizes: list[int] = field(default_factory=list)  # tasks asked per answered DescribeTasks
    registered_families: Counter[str] = field(default_factory=Counter)  # registrations that took effect
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rngs: dict[str, random.Random] = field(default_factory=dict, repr=False)

    def refuse(self, operation: str) -> bool:
        """One generator per operation: its nth call is refused or not whatever the
        interleaving of the backend's concurrent calls."""
        with self._lock:
            rng = self._rngs.setdefault(operation, random.Random(f"{self.seed}:{operation}"))
            first = self.first and not (self.calls[operation] or self.throttled[operation])
            refused = rng.random() < self.rate or first
            (self.throttled if refused else self.calls)[operation] += 1
            return refused


@contextlib.contextmanager
def throttled(rate: float = 0.2, seed: int = 18, *, first: bool = False) -> Iterator[EcsCalls]:
    """While active, `rate` of the three operations' calls are throttled (seeded); with
    `first`, each operation's first call too."""
    from moto.ecs.exceptions import ECSException
    from moto.ecs.responses import EC2ContainerServiceResponse as Responses

    record = EcsCalls(rate, seed, first)
    originals = {name: getattr(Responses, name) for name in THROTTLED_OPERATIONS}

    def wrap(name: str) -> Any:
        original = originals[name]

        def operation(self: Any) -> Any:
            if record.refuse(name):
                raise ECSException("ThrottlingException", "Rate exceeded")
            body = json.loads(self.body or "{}")
            if name == "describe_tasks":
                with record._lock:
                    record.describe_sizes.append(len(body.get("tasks") or []))
            result = original(self)
            if name == "register_task_definition":
                with record._lock:
                    record.registered_families[str(body.get("family"))] += 1
            return result

        return operation

    for name in THROTTLED_OPERATIONS:
        setattr(Responses, name, wrap(name))
    try:
        yield record
    finally:
        for name, original in originals.items():
            setattr(Responses, name, original)
