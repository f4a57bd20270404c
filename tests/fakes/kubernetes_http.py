"""The HTTP side of tests/fakes/kubernetes_fake.py: routes, selectors, Status bodies."""

from __future__ import annotations

import json
import re
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handler", "match_fields", "match_labels", "parse_selector", "status_body"]


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


# a label key: an optional DNS subdomain prefix and "/", then a name; a value: a name or ""
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_KEY = re.compile(rf"(?:(?P<prefix>{_PREFIX})/)?(?P<name>{_NAME})")
_VALUE = re.compile(rf"(?:{_NAME})?")
_SET = re.compile(r"(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_EQUALITY = re.compile(r"(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)")
_EXISTS = re.compile(r"(?P<op>!?)\s*(?P<key>[^\s!=(),]+)")

Requirement = tuple[str, str, frozenset[str]]  # (key, operator, values)


def _key(text: str) -> str:
    match = _KEY.fullmatch(text)
    if match is None or len(match["name"]) > 63 or len(match["prefix"] or "") > 253:
        raise ValueError(f"invalid label key {text!r}")
    return text


def _value(text: str) -> str:
    if _VALUE.fullmatch(text) is None or len(text) > 63:
        raise ValueError(f"invalid label value {text!r}")
    return text


def _terms(selector: str) -> list[str]:
    """Split on the commas between requirements, not those inside `in (a, b)`."""
    terms, depth, start = [], 0, 0
    for index, char in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return [term.strip() for term in terms]


def parse_selector(selector: str) -> list[Requirement]:
    """A label selector as the API server reads it: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    `k notin (a,b)`, `k`, `!k`, comma-separated (all must hold); ValueError when it is
    not one (the API answers 400 BadRequest)."""
    if not selector.strip():
        return []  # an empty selector selects everything
    requirements: list[Requirement] = []
    for term in _terms(selector):
        if match := _SET.fullmatch(term):
            values = [_value(v.strip()) for v in match["values"].split(",")]
            requirements.append((_key(match["key"]), match["op"], frozenset(values)))
        elif match := _EQUALITY.fullmatch(term):
            op = "=" if match["op"] == "==" else match["op"]
            requirements.append((_key(match["key"]), op, frozenset({_value(match["value"])})))
        elif match := _EXISTS.fullmatch(term):
            requirements.append((_key(match["key"]), "!" if match["op"] else "exists", frozenset()))
        else:
            raise ValueError(f"{term!r} is not a requirement")
    return requirements


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """Whether labels satisfy every requirement; `!=` and `notin` match a missing key too."""
    for key, op, values in parse_selector(selector):
        present = key in labels
        held = {
            "exists": present,
            "!": not present,
            "=": present and labels[key] in values,
            "in": present and labels[key] in values,
            "!=": labels.get(key) not in values,
            "notin": labels.get(key) not in values,
        }[op]
        if not held:
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
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] == ["pods"] and parts[6:] == ["log"]:
            return self._log(parts[3], parts[5], query)
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
        try:
            parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            return self._send(400, status_body(400, "BadRequest", f"unable to parse requirement: {exc}"))
        if query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, query)
        items = [
            _item(o) for o in self.fake._items(resource, namespace)
            if match_labels(o["metadata"].get("labels") or {}, query.get("labelSelector", ""))
            and match_fields(o, query.get("fieldSelector", ""))
        ]  # fmt: skip
        kind, version = _LISTS[resource]
        body = {"kind": kind, "apiVersion": version, "metadata": {"resourceVersion": str(self.fake._rv)}}
        return self._send(200, {**body, "items": items})

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

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        """A pod's log: plain text, streamed in chunks while `follow` keeps it open."""
        error = self.fake.logs.check(namespace, name, query)
        if error is not None:
            return self._send(*error)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for line in self.fake.logs.stream(namespace, name, query):
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
        if resource == "pods" and not name and self.fake.forbid_pod_delete:
            message = f'pods is forbidden: cannot delete resource "pods" in namespace "{namespace}"'
            return self._send(403, status_body(403, "Forbidden", message))
        if resource == "pods" and not name:  # deletecollection: a PodList of what it deleted
            grace = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
            items = self.fake.delete_pods(namespace, query.get("labelSelector", ""), grace)
            meta = {"resourceVersion": str(self.fake._rv)}
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})
        if resource != "jobs" or not name:
            return self._send(405, status_body(405, "MethodNotAllowed", "not supported by the fake"))
        policy = query.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
        grace = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        code, answer = self.fake.delete_job(namespace, name, policy, grace)
        return self._send(code, answer)


_LISTS = {"jobs": ("JobList", "batch/v1"), "pods": ("PodList", "v1"), "events": ("EventList", "v1")}


def _item(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as a list's item: the API server leaves out its kind and apiVersion (the
    list's say them)."""
    return {key: value for key, value in obj.items() if key not in ("kind", "apiVersion")}


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
