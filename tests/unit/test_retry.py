"""The one retry policy: backoff grows, jitter spreads it, Retry-After is a floor."""

from __future__ import annotations

import anyio
import httpx
import pytest

from agent.api.errors import AuthError, TransientError, classify_exception, classify_response
from agent.retry import RetryPolicy, backoff_delay


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_delay(n, initial=0.5, maximum=8, jitter=0, rng=lambda: 0.5) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_composes_with_backoff() -> None:
    # Prefect's service loop replaced the backoff by the jitter; here both apply.
    low = [backoff_delay(n, initial=1, maximum=60, jitter=0.2, rng=lambda: 0.0) for n in (1, 4)]
    high = [backoff_delay(n, initial=1, maximum=60, jitter=0.2, rng=lambda: 1.0) for n in (1, 4)]
    assert low == pytest.approx([0.8, 6.4])
    assert high == pytest.approx([1.2, 9.6])


def test_retry_after_is_a_floor_and_jitter_only_lengthens_it() -> None:
    def delay(rng: float) -> float:
        return backoff_delay(1, initial=0.5, maximum=30, jitter=0.2, retry_after=7, rng=lambda: rng)

    assert delay(0.0) == 7
    assert delay(1.0) == pytest.approx(8.4)


def _response(status: int, headers: dict[str, str] | None = None, body: object = None) -> httpx.Response:
    request = httpx.Request("POST", "http://server/api/flow_runs/1/set_state")
    return httpx.Response(status, headers=headers, json=body if body is not None else {}, request=request)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    assert isinstance(classify_response(_response(status)), TransientError)


def test_retry_after_header_is_read() -> None:
    error = classify_response(_response(429, {"Retry-After": "3"}))
    assert isinstance(error, TransientError) and error.retry_after == 3


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_name_the_settings_to_fix(status: int) -> None:
    error = classify_response(_response(status, body={"exception_message": "Unauthorized"}))
    assert isinstance(error, AuthError)
    assert "PREFECT_API_KEY" in str(error) and "PREFECT_API_AUTH_STRING" in str(error)


def test_success_is_not_an_error() -> None:
    assert classify_response(_response(201)) is None


def test_connection_errors_are_transient() -> None:
    assert isinstance(classify_exception(httpx.ConnectError("refused")), TransientError)
    assert isinstance(classify_exception(httpx.ReadTimeout("slow")), TransientError)
    assert classify_exception(ValueError("not ours")) is None


def test_policy_retries_transient_errors_until_success() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503")
        return "ok"

    policy = RetryPolicy(initial=0.001, maximum=0.002, budget=5)
    assert anyio.run(lambda: policy.call(flaky)) == "ok"
    assert len(calls) == 3


def test_policy_does_not_retry_other_errors() -> None:
    calls = []

    async def denied() -> None:
        calls.append(1)
        raise AuthError("401")

    with pytest.raises(AuthError):
        anyio.run(lambda: RetryPolicy(initial=0.001).call(denied, persistent=True))
    assert len(calls) == 1


def test_bounded_policy_gives_up_after_its_budget() -> None:
    async def down() -> None:
        raise TransientError("503")

    with pytest.raises(TransientError):
        anyio.run(lambda: RetryPolicy(initial=0.01, maximum=0.01, budget=0.05).call(down))
