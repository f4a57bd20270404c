"""A small stateful Azure Resource Manager fake for container groups, served over HTTPS.

The real `ContainerInstanceManagementClient` talks to it: its production
`ARMChallengeAuthenticationPolicy` refuses plain http, so the fake serves TLS with a
`trustme` CA (clients trust it through `connection_verify=<ca file>` or
`REQUESTS_CA_BUNDLE`). It also answers the Microsoft Entra token endpoints, so a real
`ClientSecretCredential` / `DefaultAzureCredential` can get its token here
(`authority=<fake url>`, `disable_instance_discovery=True`). ARM calls without a token the
fake issued (or `STATIC_TOKEN`) get 401.

Routes: container group PUT (201 + Azure-AsyncOperation), GET (instance view), DELETE (202 +
Azure-AsyncOperation), POST stop, list by resource group, async operation status, resource
group GET (for the location), container logs GET (`tail`, `timestamps`; the answer's shape
is tests/fixtures/aci/logs.json, after Azure's "Containers - List Logs" reference). Test
hooks: `terminate`, `fail_after_running`, `fail_provisioning`, `stick_waiting` (the last two
also at creation, from the container env `SCENARIO_ENV`), `write_output` (lines the
container prints), `fail_logs` (the logs route answers an error), `list_groups` for cleanup
checks.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme

__all__ = ["SCENARIO_ENV", "STATIC_TOKEN", "AciFake"]

STATIC_TOKEN = "static-test-token"
SCENARIO_ENV = "ACI_FAKE_SCENARIO"
_GROUP = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ContainerInstance/"
    r"containerGroups(?:/([^/]+))?(/stop)?$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"/subscriptions/([^/]+)/providers/Microsoft\.ContainerInstance/locations/[^/]+/operations/([^/]+)$"
)
_LOGS = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ContainerInstance/"
    r"containerGroups/([^/]+)/containers/([^/]+)/logs$",
    re.IGNORECASE,
)
_RESOURCE_GROUP = re.compile(r"/subscriptions/([^/]+)/resourcegroups/([^/]+)$", re.IGNORECASE)
_OIDC = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration$")
_TOKEN = re.compile(r"/([^/]+)/oauth2/v2\.0/token$")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _stamp() -> str:
    """A log line's time as ACI's `timestamps=true` writes it: RFC 3339, 7 fraction digits, Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


@dataclass
class _Op:
    status: str = "InProgress"
    polls_left: int = 2
    error: dict[str, str] | None = None
    group: tuple[str, str, str] | None = None
    delete: bool = False
    stuck: bool = False


@dataclass
class _Group:
    body: dict[str, Any]
    provisioning: str = "Pending"
    state: dict[str, Any] = field(default_factory=lambda: {"state": "Waiting", "detailStatus": "Pending"})
    events: list[dict[str, Any]] = field(default_factory=list)
    operation: str = ""
    output: list[tuple[str, str]] = field(default_factory=list)  # (RFC 3339 time, line) printed


class AciFake:
    """`with AciFake() as fake:` serves at `fake.url`; `fake.ca_file` is the CA to trust."""

    def __init__(self, *, polls_before_done: int = 1, resource_groups: dict[str, str] | None = None) -> None:
        self.polls_before_done = polls_before_done
        self.resource_groups = dict(resource_groups or {"rg-agents": "westeurope"})
        self.groups: dict[tuple[str, str, str], _Group] = {}
        self.operations: dict[str, _Op] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every ARM call
        self.tokens: set[str] = {STATIC_TOKEN}
        self.client_secrets: dict[str, str] = {}  # client id -> secret accepted at the token endpoint
        self.token_clients: list[str] = []  # client ids that got a token, in order
        self.log_reads: list[dict[str, str]] = []  # the group and query of every logs call
        self.logs_fault: tuple[int, str, str] | None = None  # (status, code, message) of the logs route
        self.lock = threading.RLock()
        self._ca = trustme.CA()
        self._dir = Path(tempfile.mkdtemp(prefix="aci-fake-"))
        self.ca_file = str(self._dir / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> AciFake:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> AciFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks ----------------------------------------------------------------------------

    def list_groups(self) -> list[str]:
        with self.lock:
            return sorted(name for (_, _, name) in self.groups)

    def body(self, name: str) -> dict[str, Any]:
        """The container group body as it was sent."""
        with self.lock:
            return copy.deepcopy(self._find(name).body)

    def terminate(self, name: str, exit_code: int, detail: str | None = None) -> None:
        with self.lock:
            group = self._find(name)
            self._finish_op(group.operation, "Succeeded")
            group.provisioning = "Succeeded"
            group.state = {
                "state": "Terminated",
                "exitCode": exit_code,
                "detailStatus": detail or ("Completed" if exit_code == 0 else "Error"),
                "startTime": group.state.get("startTime") or _now(),
                "finishTime": _now(),
            }

    def fail_provisioning(self, name: str, message: str) -> None:
        with self.lock:
            group = self._find(name)
            group.provisioning = "Failed"
            # as Azure's ContainerGroupsGet_Failed example: Waiting, with the state's startTime
            group.state = {"state": "Waiting", "startTime": _now(), "detailStatus": "Failed"}
            group.events.append({"count": 1, "type": "Warning", "name": "Failed", "message": message})
            error = {"code": "ContainerGroupProvisioningFailed", "message": message}
            self._finish_op(group.operation, "Failed", error)

    def fail_after_running(self, name: str, exit_code: int, message: str, detail: str | None = None) -> None:
        """The create operation ends Failed although the container ran and is Terminated
        (provisioningState Failed with a Terminated container, as ContainerGroupsGet_Failed
        shows a Failed group with its container's states)."""
        with self.lock:
            self.terminate(name, exit_code, detail)
            group = self._find(name)
            group.provisioning = "Failed"
            error = {"code": "ContainerGroupProvisioningFailed", "message": message}
            op = self.operations.get(group.operation)
            if op is not None:
                op.status, op.error, op.stuck, op.polls_left = "Failed", error, False, 0

    def stick_waiting(self, name: str, reason: str) -> None:
        with self.lock:
            group = self._find(name)
            group.provisioning = "Pending"
            # `startTime` is when the *state* began (ContainerState in the SDK): Waiting has one
            group.state = {"state": "Waiting", "startTime": _now(), "detailStatus": reason}
            group.events.append({"count": 3, "type": "Warning", "name": "Failed", "message": reason})
            op = self.operations.get(group.operation)
            if op is not None:
                op.stuck, op.status = True, "InProgress"

    def write_output(self, name: str, *lines: str, at: str | None = None) -> None:
        """The container prints `lines` (each stamped now, or all at the instant `at`)."""
        with self.lock:
            group = self._find(name)
            for line in lines:
                group.output.append((at or _stamp(), line))

    def fail_logs(self, status: int, code: str, message: str) -> None:
        """Every logs call answers this error from now on (status 0: answers again)."""
        with self.lock:
            self.logs_fault = (status, code, message) if status else None

    # -- internals (called with the lock held) -------------------------------------------------

    def _find(self, name: str) -> _Group:
        for (_, _, group_name), group in self.groups.items():
            if group_name == name:
                return group
        raise KeyError(f"no container group {name!r}; have {self.list_groups()}")

    def _finish_op(self, op_id: str, status: str, error: dict[str, str] | None = None) -> None:
        op = self.operations.get(op_id)
        if op is not None:
            op.status, op.error, op.stuck, op.polls_left = status, error, False, 0

    def _new_op(self, key: tuple[str, str, str], *, delete: bool) -> str:
        op_id = uuid.uuid4().hex
        self.operations[op_id] = _Op(polls_left=self.polls_before_done, group=key, delete=delete)
        return op_id

    def _poll(self, op_id: str) -> _Op | None:
        op = self.operations.get(op_id)
        if op is None or op.status != "InProgress" or op.stuck:
            return op
        op.polls_left -= 1
        if op.polls_left > 0:
            return op
        op.status = "Succeeded"
        group = self.groups.get(op.group) if op.group else None
        if op.delete:
            self.groups.pop(op.group, None)  # type: ignore[arg-type]
        elif group is not None and group.provisioning == "Pending":
            group.provisioning = "Succeeded"
            group.state = {"state": "Running", "detailStatus": "", "startTime": _now()}
        return op

    def _view(self, key: tuple[str, str, str]) -> dict[str, Any]:
        sub, rg, name = key
        group = self.groups[key]
        body = copy.deepcopy(group.body)
        props = body.setdefault("properties", {})
        props["provisioningState"] = group.provisioning
        for container in props.get("containers", []):
            for env in container.get("properties", {}).get("environmentVariables", []):
                env.pop("secureValue", None)  # Azure never shows secure values back
            container.setdefault("properties", {})["instanceView"] = {
                "restartCount": 0,
                "currentState": dict(group.state),
                "events": list(group.events),
            }
        for credential in props.get("imageRegistryCredentials", []):
            credential.pop("password", None)
        terminated = group.state.get("state") == "Terminated"
        failed = terminated and group.state.get("exitCode") != 0
        props["instanceView"] = {"state": "Failed" if failed else group.state.get("state", "Pending")}
        body["id"] = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups/{name}"
        )
        body["name"], body["type"] = name, "Microsoft.ContainerInstance/containerGroups"
        return body


def _apply_scenario(fake: AciFake, name: str, container: dict[str, Any]) -> None:
    """`SCENARIO_ENV` in the container's env ("waiting:<reason>" or "fail:<message>") applies a
    hook at creation, before any poll: an agent in another process cannot race it."""
    for env in (container.get("properties") or {}).get("environmentVariables") or []:
        if env.get("name") == SCENARIO_ENV:
            action, _, text = str(env.get("value") or "").partition(":")
            if action == "waiting":
                fake.stick_waiting(name, text)
            elif action == "fail":
                fake.fail_provisioning(name, text)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    owner: AciFake
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token in self.owner.tokens:
            return True
        self._send(401, _error("AuthenticationFailed", "missing or unknown bearer token"))
        return False

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if self._identity(method, path, body):
            return
        if not self._authorized():
            return
        fake = self.owner
        with fake.lock:
            fake.requests.append((method, path))
            if match := _GROUP.match(path):
                sub, rg, name, stop = match.groups()
                self._group(method, sub, rg, name, bool(stop), body)
            elif (match := _LOGS.match(path)) and method == "GET":
                self._logs(match.groups(), parse_qs(urlsplit(self.path).query))
            elif (match := _OPERATION.match(path)) and method == "GET":
                op = fake._poll(match.group(2))
                if op is None:
                    self._send(404, _error("OperationNotFound", "no such operation"))
                else:
                    answer: dict[str, Any] = {"status": op.status}
                    if op.error:
                        answer["error"] = op.error
                    self._send(200, answer)
            elif (match := _RESOURCE_GROUP.match(path)) and method == "GET":
                location = fake.resource_groups.get(match.group(2))
                if location is None:
                    self._send(
                        404,
                        _error(
                            "ResourceGroupNotFound", f"Resource group '{match.group(2)}' could not be found."
                        ),
                    )
                else:
                    self._send(200, {"name": match.group(2), "location": location})
            else:
                self._send(404, _error("NotFound", f"no route for {method} {path}"))

    def _group(self, method: str, sub: str, rg: str, name: str | None, stop: bool, raw: bytes) -> None:
        fake = self.owner
        if rg not in fake.resource_groups:
            self._send(404, _error("ResourceGroupNotFound", f"Resource group '{rg}' could not be found."))
            return
        if name is None:
            items = [fake._view(key) for key in fake.groups if key[:2] == (sub, rg)]
            self._send(200, {"value": items})
            return
        key = (sub, rg, name)
        if method == "PUT":
            self._put(key, json.loads(raw or b"{}"))
        elif key not in fake.groups:
            if method == "DELETE":
                self._send(204)
            else:
                resource = f"Microsoft.ContainerInstance/containerGroups/{name}"
                message = f"The Resource '{resource}' under resource group '{rg}' was not found."
                self._send(404, _error("ResourceNotFound", message))
        elif method == "GET":
            self._send(200, fake._view(key))
        elif method == "POST" and stop:
            group = fake.groups[key]
            if group.state.get("state") != "Terminated":
                group.state = {
                    "state": "Terminated",
                    "exitCode": 143,
                    "detailStatus": "Stopped",
                    "finishTime": _now(),
                }
            self._send(204)
        elif method == "DELETE":
            # a group deleted while it is created ends its create operation (like Azure)
            create = fake.operations.get(fake.groups[key].operation)
            if create is not None and create.status == "InProgress":
                fake._finish_op(fake.groups[key].operation, "Canceled")
            op_id = fake._new_op(key, delete=True)
            self._send(202, None, self._async_headers(sub, op_id))
        else:
            self._send(405, _error("MethodNotAllowed", method))

    def _logs(self, parts: tuple[str, ...], query: dict[str, list[str]]) -> None:
        fake, key = self.owner, (parts[0], parts[1], parts[2])
        fake.log_reads.append({"group": parts[2], **{k: v[0] for k, v in query.items()}})
        group = fake.groups.get(key)
        containers = (group.body.get("properties") or {}).get("containers", []) if group else []
        names = [container.get("name") for container in containers]
        if fake.logs_fault is not None:
            status, code, message = fake.logs_fault
            # ARM throttling names its wait; a short one keeps the SDK's own retries quick (0 would
            # mean "none named" to azure-core, which then backs off for seconds)
            self._send(
                status, _error(code, message), {"Retry-After": "0.01"} if status in (429, 503) else None
            )
        elif group is None or parts[3] not in names:
            resource = f"Microsoft.ContainerInstance/containerGroups/{parts[2]}"
            message = f"The Resource '{resource}' under resource group '{parts[1]}' was not found."
            self._send(404, _error("ResourceNotFound", message))
        else:
            tail = int((query.get("tail") or ["0"])[0]) or None
            stamped = (query.get("timestamps") or ["false"])[0].lower() == "true"
            lines = group.output[-tail:] if tail else group.output
            text = "".join(f"{at} {line}\n" if stamped else f"{line}\n" for at, line in lines)
            self._send(200, {"content": text})

    def _put(self, key: tuple[str, str, str], body: dict[str, Any]) -> None:
        fake = self.owner
        if not body.get("location"):
            self._send(
                400, _error("LocationRequired", "The location property is required for this definition.")
            )
            return
        containers = (body.get("properties") or {}).get("containers") or []
        if not containers or not (containers[0].get("properties") or {}).get("image"):
            self._send(400, _error("InvalidContainerImage", "The container image is required."))
            return
        created = key not in fake.groups
        op_id = fake._new_op(key, delete=False)
        fake.groups[key] = _Group(body=body, operation=op_id)
        _apply_scenario(fake, key[2], containers[0])
        headers = self._async_headers(key[0], op_id)
        self._send(201 if created else 200, fake._view(key), headers)

    def _async_headers(self, sub: str, op_id: str) -> dict[str, str]:
        url = (
            f"{self.owner.url}/subscriptions/{sub}/providers/Microsoft.ContainerInstance/locations/"
            f"westeurope/operations/{op_id}?api-version=2023-05-01"
        )
        return {"Azure-AsyncOperation": url, "Retry-After": "0"}

    # -- Microsoft Entra token endpoints ---------------------------------------------------------

    def _identity(self, method: str, path: str, raw: bytes) -> bool:
        base = self.owner.url
        if (match := _OIDC.match(path)) and method == "GET":
            tenant = match.group(1)
            self._send(200, {
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "issuer": f"{base}/{tenant}/v2.0",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            })  # fmt: skip
            return True
        if _TOKEN.match(path) and method == "POST":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            expected = self.owner.client_secrets.get(form.get("client_id", ""))
            if expected is None or form.get("client_secret") != expected:
                self._send(
                    401,
                    {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."},
                )
                return True
            token = f"issued-{uuid.uuid4().hex}"
            with self.owner.lock:
                self.owner.tokens.add(token)
                self.owner.token_clients.append(form["client_id"])
            self._send(200, {"token_type": "Bearer", "expires_in": 3600, "access_token": token})
            return True
        return False
