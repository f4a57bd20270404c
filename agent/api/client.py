"""The Prefect REST client: httpx, typed answers, one retry policy, errors classified once.

Each method is one endpoint. Protocol knowledge that spans a single call (what a
duplicate-transition REJECT means, for instance) lives here too; anything that spans
several calls belongs to the runner or the poller.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from agent import __version__
from agent.api.errors import NotFound, classify_exception, classify_response
from agent.api.models import (
    Deployment,
    FlowRun,
    OrchestrationResult,
    ScheduledRun,
    SetStateStatus,
    State,
    StateType,
    Worker,
    WorkPool,
)
from agent.retry import RetryPolicy, retry_scope

if TYPE_CHECKING:
    from agent.settings import Settings

__all__ = ["ClaimResult", "PrefectClient", "auth_headers"]


def auth_headers(api_key: str | None, auth_string: str | None) -> dict[str, str]:
    """Prefect's own rule: the basic auth string wins over the API key."""
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


class ClaimResult:
    __slots__ = ("claimed", "reason", "lease_id", "state")

    def __init__(
        self, claimed: bool, reason: str = "", lease_id: str | None = None, state: State | None = None
    ) -> None:
        self.claimed = claimed
        self.reason = reason
        self.lease_id = lease_id
        self.state = state  # a lost claim: the run's state as the server answered (the winner's)


class PrefectClient:
    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        auth_string: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_error: Callable[[int | str], None] | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._on_error = on_error or (lambda status: None)
        self.retry = retry or RetryPolicy()
        self.requests_sent = 0
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"User-Agent": f"flow-agent/{__version__}", **auth_headers(api_key, auth_string)},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, api_url: str | None = None, **kwargs: Any) -> PrefectClient:
        """A client for the server and credentials in `settings` (or another `api_url`)."""
        url = api_url or settings.api_url
        if url is None:
            raise ValueError("no Prefect server: set PREFECT_API_URL")
        return cls(
            url,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            auth_string=settings.api_auth_string.get_secret_value() if settings.api_auth_string else None,
            retry=settings.retry_policy,
            timeout=settings.request_timeout,
            **kwargs,
        )

    async def __aenter__(self) -> PrefectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -----------------------------------------------------------------------

    async def _send_once(self, method: str, path: str, json: Any, params: Any) -> httpx.Response:
        self.requests_sent += 1
        try:
            response = await self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            self._on_error("network")
            mapped = classify_exception(exc, self.api_url)
            if mapped is None:
                raise
            raise mapped from exc
        error = classify_response(response)
        if error is not None:
            self._on_error(response.status_code)
            raise error
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        persistent: bool = False,
    ) -> Any:
        """Send one request with the retry policy; the decoded JSON body (or None)."""

        async def once() -> httpx.Response:
            return await self._send_once(method, path, json, params)

        response = await self.retry.call(once, persistent=persistent)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- server ----------------------------------------------------------------------------

    async def health(self) -> bool:
        await self._send_once("GET", "/health", None, None)
        return True

    async def server_version(self) -> str:
        """`GET /admin/version`: the server's Prefect version ("" if it answers no string)."""
        version = await self.request("GET", "/admin/version")
        return version if isinstance(version, str) else ""

    # -- work pools --------------------------------------------------------------------------

    async def read_work_pool(self, name: str) -> WorkPool | None:
        try:
            return WorkPool.model_validate(await self.request("GET", f"/work_pools/{name}"))
        except NotFound:
            return None

    async def create_work_pool(self, name: str, type: str, base_job_template: dict[str, Any]) -> WorkPool:
        body = {"name": name, "type": type, "base_job_template": base_job_template}
        return WorkPool.model_validate(await self.request("POST", "/work_pools/", json=body))

    async def update_work_pool(self, name: str, **fields: Any) -> None:
        await self.request("PATCH", f"/work_pools/{name}", json=fields)

    async def heartbeat(self, pool: str, worker_name: str, interval_seconds: float) -> None:
        body = {"name": worker_name, "heartbeat_interval_seconds": int(interval_seconds)}
        await self.request("POST", f"/work_pools/{pool}/workers/heartbeat", json=body)

    async def read_workers(self, pool: str) -> list[Worker]:
        """Every worker row of the pool (the server has no name filter: callers pick)."""
        data = await self.request("POST", f"/work_pools/{pool}/workers/filter", json={})
        return [Worker.model_validate(item) for item in data or []]

    async def get_scheduled_flow_runs(
        self,
        pool: str,
        *,
        queues: Sequence[str] = (),
        scheduled_before: datetime,
        limit: int | None = None,
    ) -> list[ScheduledRun]:
        body: dict[str, Any] = {
            "work_queue_names": list(queues),
            "scheduled_before": scheduled_before.isoformat(),
        }
        if limit is not None:
            body["limit"] = limit
        data = await self.request("POST", f"/work_pools/{pool}/get_scheduled_flow_runs", json=body)
        return [ScheduledRun.model_validate(item) for item in data or []]

    # -- flow runs -----------------------------------------------------------------------------

    async def read_flow_run(self, run_id: str) -> FlowRun:
        return FlowRun.model_validate(await self.request("GET", f"/flow_runs/{run_id}"))

    async def read_flow_runs(self, body: dict[str, Any]) -> list[FlowRun]:
        data = await self.request("POST", "/flow_runs/filter", json=body)
        return [FlowRun.model_validate(item) for item in data or []]

    async def read_flow_run_states(self, run_id: str) -> list[State]:
        data = await self.request("GET", "/flow_run_states/", params={"flow_run_id": run_id})
        return [State.model_validate(item) for item in data or []]

    async def update_flow_run(self, run_id: str, **fields: Any) -> None:
        await self.request("PATCH", f"/flow_runs/{run_id}", json=fields, persistent=True)

    async def set_flow_run_labels(self, run_id: str, labels: dict[str, str]) -> None:
        """Merge labels into the run's. Values must be scalar strings: on 3.8.8 a null, list
        or object value makes every later read of the run answer 500."""
        body = {key: str(value) for key, value in labels.items()}
        await self.request("PATCH", f"/flow_runs/{run_id}/labels", json=body)

    async def set_state(
        self,
        run_id: str,
        type: StateType,
        *,
        name: str | None = None,
        message: str | None = None,
        force: bool = False,
        transition_id: str | None = None,
    ) -> OrchestrationResult:
        """Propose a state; retried until answered, always with the same transition_id.

        The identical body on retry is what makes a retried proposal safe: if the first
        attempt committed, the server answers REJECT "already made this transition".
        """
        body = {
            "state": {
                "type": type.value,
                "name": name or type.value.title(),
                "message": message,
                "state_details": {
                    "flow_run_id": run_id,
                    "transition_id": transition_id or str(uuid.uuid4()),
                },
            },
            "force": force,
        }
        while True:
            data = await self.request("POST", f"/flow_runs/{run_id}/set_state", json=body, persistent=True)
            result = OrchestrationResult.model_validate(data)
            if result.status is not SetStateStatus.WAIT:
                return result
            await anyio.sleep(min(max(result.delay_seconds, 0.1), 30.0))

    async def claim_flow_run(self, run_id: str, *, message: str | None = None) -> ClaimResult:
        """Propose PENDING; exactly one proposer in the world gets `claimed=True`. `message`
        lands in the PENDING state atomically with the claim (who claimed it)."""
        transition_id = str(uuid.uuid4())
        result = await self.set_state(run_id, StateType.PENDING, message=message, transition_id=transition_id)
        state = result.state
        ours = result.status is SetStateStatus.ACCEPT or (
            # our first attempt committed but its answer was lost; the retry saw our own
            # transition: the same claim
            result.status is SetStateStatus.REJECT
            and state is not None
            and state.type is StateType.PENDING
            and state.state_details.get("transition_id") == transition_id
        )
        if not ours:
            where = f" into {state.type.value}/{state.name}" if state else ""
            return ClaimResult(False, reason=f"{result.status.value}{where}: {result.reason}", state=state)
        assert state is not None
        if not state.state_details.get("scheduled_time"):
            # The server also accepts PENDING from CRASHED/FAILED/COMPLETED (that is how a
            # manual re-run works). Only a claim out of SCHEDULED carries the copied
            # scheduled time; anything else means our poll was stale and the run already
            # ran elsewhere. Put its state back and never launch it, even when stopping:
            # left PENDING, a run that already ran would be rescheduled.
            with retry_scope():
                await self._restore_previous_state(run_id, state.id)
            return ClaimResult(False, reason="stale poll: the run had already ended")
        return ClaimResult(True, lease_id=state.state_details.get("deployment_concurrency_lease_id"))

    async def _restore_previous_state(self, run_id: str, our_state_id: str | None) -> None:
        states = await self.request("GET", "/flow_run_states/", params={"flow_run_id": run_id})
        history = sorted(
            (s for s in states or [] if s.get("id") != our_state_id), key=lambda s: s["timestamp"]
        )
        if not history:
            return
        previous = history[-1]
        body = {
            "state": {
                "type": previous["type"],
                "name": previous.get("name"),
                "message": previous.get("message"),
                "data": previous.get("data"),
                "state_details": {"flow_run_id": run_id, "transition_id": str(uuid.uuid4())},
            },
            "force": True,
        }
        await self.request("POST", f"/flow_runs/{run_id}/set_state", json=body, persistent=True)

    async def bulk_set_state(
        self, flow_runs: dict[str, Any], type: StateType, *, message: str, limit: int = 50
    ) -> list[str]:
        """Propose one state to every run matching the filter (at most 50); ids accepted."""
        body = {
            "flow_runs": flow_runs,
            "state": {"type": type.value, "name": type.value.title(), "message": message},
            "force": False,
            "limit": limit,
        }
        data = await self.request("POST", "/flow_runs/bulk_set_state", json=body, persistent=True)
        results = (data or {}).get("results", [])
        return [r["flow_run_id"] for r in results if r.get("status") == SetStateStatus.ACCEPT.value]

    # -- deployments, logs -----------------------------------------------------------------------

    async def read_deployment(self, deployment_id: str) -> Deployment:
        return Deployment.model_validate(await self.request("GET", f"/deployments/{deployment_id}"))

    async def create_logs(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            await self.request("POST", "/logs/", json=entries)
