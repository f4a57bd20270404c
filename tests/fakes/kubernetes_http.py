"""The HTTP side of tests/fakes/kubernetes_fake.py: routes, selectors, Status bodies."""

from __future__ import annotations

import json
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handler", "match_fields", "match_labels", "status_body"]


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (all must hold)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def match_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        path, _, value = term.partition("=")
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != value:
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    fake: Any  # the KubernetesFake this server serves
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[list[str], dict[str, str]]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.fake.requests.append((self.command, url.path, query))
        return [p for p in url.path.split("/") if p], query

    def do_GET(self) -> None:
        parts, query = self._route()
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
            uid = (
                self.fake.cluster_uid
                if parts[3] == "kube-system"
                else str(uuid.uuid5(uuid.NAMESPACE_DNS, parts[3]))
            )
            return self._send(200, {"kind": "Namespace", "metadata": {"name": parts[3], "uid": uid}})
        resource, namespace, name = _resource(parts)
        if resource is None:
            return self._send(
                404, status_body(404, "NotFound", "the server could not find the requested resource")
            )
        if name:
            obj = self.fake.objects.get((resource, namespace, name))
            if obj is None:
                return self._send(404, status_body(404, "NotFound", f'{resource} "{name}" not found'))
            return self._send(200, obj)
        if query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, query)
        items = [
            o for o in self.fake._items(resource, namespace)
            if match_labels(o["metadata"].get("labels") or {}, query.get("labelSelector", ""))
            and match_fields(o, query.get("fieldSelector", ""))
        ]  # fmt: skip
        return self._send(
            200, {"kind": "List", "metadata": {"resourceVersion": str(self.fake._rv)}, "items": items}
        )

    def _watch(self, resource: str, namespace: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")  # as the API server: one chunk per event
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in self.fake.watch_events(resource, namespace, query):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def do_POST(self) -> None:
        parts, _ = self._route()
        body = self._body()
        resource, namespace, name = _resource(parts)
        if resource != "jobs" or name:
            return self._send(405, status_body(405, "MethodNotAllowed", "not supported by the fake"))
        code, answer = self.fake.create_job(namespace, body)
        return self._send(code, answer)

    def do_DELETE(self) -> None:
        parts, query = self._route()
        body = self._body() or {}
        resource, namespace, name = _resource(parts)
        if resource != "jobs" or not name:
            return self._send(405, status_body(405, "MethodNotAllowed", "not supported by the fake"))
        policy = query.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
        grace = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        code, answer = self.fake.delete_job(namespace, name, policy, grace)
        return self._send(code, answer)


def _resource(parts: list[str]) -> tuple[str | None, str, str]:
    """(resource, namespace, name) of a namespaced path, or (None, "", "")."""
    if parts[:3] == ["apis", "batch", "v1"]:
        rest = parts[3:]
    elif parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    else:
        return None, "", ""
    if len(rest) in (3, 4) and rest[0] == "namespaces" and rest[2] in ("jobs", "pods", "events"):
        return rest[2], rest[1], rest[3] if len(rest) == 4 else ""
    return None, "", ""
