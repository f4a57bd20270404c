"""`retry_scope`: the caller of a block of calls narrows the one retry policy for that block."""

from __future__ import annotations

import time

import anyio
import pytest

import agent.retry
from agent.api.errors import TransientError
from agent.retry import Interrupted, RetryPolicy, retry_scope


class Down:
    """An operation that fails transiently `failures` times (forever by default), then answers."""

    def __init__(self, failures: int = 10**9) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientError("503 Service Unavailable")
        return "ok"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry sleeps asked for, without sleeping them."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(agent.retry.anyio, "sleep", sleep)
    return asked


def test_a_stop_ends_a_persistent_retry_sleep_at_once() -> None:
    policy = RetryPolicy(initial=30, maximum=30)  # the next attempt would be 30 s away
    down = Down()

    async def main() -> float:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _set_later(stop, 0.2))
            started = time.monotonic()
            with pytest.raises(Interrupted) as caught, retry_scope(stop=stop):
                await policy.call(down, persistent=True)
        assert isinstance(caught.value.last, TransientError)
        return time.monotonic() - started

    elapsed = anyio.run(main)
    assert down.calls == 1  # no attempt after the stop
    assert elapsed < 10  # a 30 s sleep was cut short (generous for a loaded machine)


async def _set_later(event: anyio.Event, delay: float) -> None:
    await anyio.sleep(delay)
    event.set()


def test_outside_any_scope_the_policy_is_unchanged(sleeps: list[float]) -> None:
    policy = RetryPolicy(initial=1, maximum=4, jitter=0)
    down = Down(failures=4)
    assert anyio.run(lambda: policy.call(down, persistent=True)) == "ok"
    assert sleeps == [1, 2, 4, 4]


def test_maximum_caps_every_sleep_and_persistent_waits_for_an_answer(sleeps: list[float]) -> None:
    policy = RetryPolicy(initial=0.5, maximum=30, jitter=0, budget=1)
    down = Down(failures=8)

    async def main() -> str:
        with retry_scope(persistent=True, maximum=2):
            return await policy.call(down)  # a bounded call, made persistent by the scope

    assert anyio.run(main) == "ok"
    assert sleeps == [0.5, 1, 2, 2, 2, 2, 2, 2]


def test_a_scope_budget_gives_up_before_it_would_be_exceeded(sleeps: list[float]) -> None:
    policy = RetryPolicy(initial=1, maximum=30, jitter=0, budget=60)
    down = Down()

    async def main() -> None:
        with retry_scope(budget=3.5):
            await policy.call(down)

    with pytest.raises(TransientError):
        anyio.run(main)
    # (no time passes here) it gives up instead of a sleep that would end past the budget
    assert sleeps == [1, 2]
    assert down.calls == 3


def test_an_inner_empty_scope_lifts_the_outer_stop() -> None:
    policy = RetryPolicy(initial=0.05, maximum=0.05, jitter=0)
    down = Down(failures=3)

    async def main() -> str:
        stop = anyio.Event()
        stop.set()
        with retry_scope(stop=stop), retry_scope():
            return await policy.call(down, persistent=True)

    assert anyio.run(main) == "ok"
    assert down.calls == 4


def test_the_scope_ends_with_its_block() -> None:
    policy = RetryPolicy(initial=0.05, maximum=0.05, jitter=0)
    down = Down(failures=2)

    async def main() -> str:
        stop = anyio.Event()
        stop.set()
        with retry_scope(stop=stop):
            pass
        return await policy.call(down, persistent=True)

    assert anyio.run(main) == "ok"
