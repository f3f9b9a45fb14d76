"""
A fast Kubernetes API stand-in for the benchmark: plain HTTP/1.1 on loopback.

It answers only what the gateway asks of core/v1 Secrets, as cheaply as
asyncio allows, so that it is never the benchmark's bottleneck:

- ``GET /api/v1/namespaces/NS/secrets/NAME``: the Secret (a project or a
  build created earlier), else 404 with a Status body;
- ``POST /api/v1/namespaces/NS/secrets``: 201 echoing the posted Secret, or
  409 ``AlreadyExists`` when the name is taken;
- ``GET /api/v1/namespaces/NS/secrets?fieldSelector=type=...&labelSelector=...``:
  a SecretList with ``metadata.resourceVersion``;
- the same with ``watch=1`` / ``watch=true``: a chunked response held open,
  sending a BOOKMARK every ``--bookmark-interval`` seconds when
  ``allowWatchBookmarks=true``, and ADDED events for matching Secrets created
  later; closed after ``timeoutSeconds``;
- ``GET /version``.

Every API request needs ``Authorization: Bearer TOKEN`` (else 401). Every one
is counted by verb (``get``, ``create``, ``list``, ``watch``, ``other``) and
by answer code, and so is every connection accepted; ``GET /_bench/stats`` (not counted) returns the counts and how
many build Secrets exist, ``POST /_bench/missing`` with a JSON list of names
returns the names that do not exist.

This is not the verified fake of ``tests/kubeapi.py`` (that one is complete,
and slow): it does no validation and keeps only what the benchmark needs.

Run: ``python bench/kube_standin.py --token T --namespace NS --project NAME=SECRET``;
it prints one JSON line (``port``) once it listens and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import sys
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PROJECT_TYPE = "brigade.sh/project"
BUILD_TYPE = "brigade.sh/build"
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}


def project_id(name: str) -> str:
    """Brigade v1's project ID for a project name."""
    return "brigade-" + hashlib.sha256(name.encode()).hexdigest()[:54]


def project_secret(name: str, secret: str, namespace: str) -> dict[str, Any]:
    """A ``brigade.sh/project`` Secret carrying ``crGatewaySecret``."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": PROJECT_TYPE,
        "metadata": {
            "name": project_id(name),
            "namespace": namespace,
            "resourceVersion": "1",
            "labels": {"app": "brigade", "component": "project", "heritage": "brigade"},
            "annotations": {"projectName": name},
        },
        "data": {
            "repository": b64(f"github.com/bench/{name}"),
            "cloneURL": b64(f"https://github.com/bench/{name}.git"),
            "crGatewaySecret": b64(secret),
        },
    }


def status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes Status object."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()


class Store:
    """Secrets by (namespace, name), as raw JSON bytes plus the fields selectors need."""

    def __init__(self) -> None:
        # (namespace, name) -> (type, labels, body bytes)
        self.secrets: dict[tuple[str, str], tuple[str, dict[str, str], bytes]] = {}
        self.resource_version = 1
        self.builds = 0
        self.connections = 0
        self.calls: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.watchers: list[Watcher] = []

    def add(self, namespace: str, secret: dict[str, Any]) -> None:
        metadata = secret["metadata"]
        self.secrets[(namespace, metadata["name"])] = (
            secret.get("type", ""),
            metadata.get("labels") or {},
            json.dumps(secret).encode(),
        )


def _selectors(query: dict[str, list[str]]) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    fields: dict[str, str] = {}
    for term in ",".join(query.get("fieldSelector", [])).split(","):
        if "=" in term:
            key, _, value = term.partition("=")
            fields[key.rstrip("=")] = value.lstrip("=")
    labels: list[tuple[str, str | None]] = []
    for term in ",".join(query.get("labelSelector", [])).split(","):
        if not term:
            continue
        if "=" in term:
            key, _, value = term.partition("=")
            labels.append((key.rstrip("=").rstrip("!"), value.lstrip("=")))
        else:
            labels.append((term, None))
    return fields, labels


def _matches(
    name: str, kind: str, labels: dict[str, str], fields: dict[str, str], wanted: list[tuple[str, str | None]]
) -> bool:
    if "type" in fields and fields["type"] != kind:
        return False
    if "metadata.name" in fields and fields["metadata.name"] != name:
        return False
    return all(key in labels if value is None else labels.get(key) == value for key, value in wanted)


class Watcher:
    """One open watch: a chunked response that outlives the request."""

    def __init__(self, connection: Connection, namespace: str, fields: dict[str, str], labels: Any) -> None:
        self.connection = connection
        self.namespace = namespace
        self.fields = fields
        self.labels = labels

    def send(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.connection.write_chunk(data)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive, Content-Length or chunked request bodies."""

    def __init__(self, server: StandIn) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.watching = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.store.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.store.watchers = [w for w in self.server.store.watchers if w.connection is not self]
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.watching and self.transport is not None:
            parsed = self._parse()
            if parsed is None:
                return
            method, target, headers, body = parsed
            self.server.handle(self, method, target, headers, body)

    def _parse(self) -> tuple[str, str, dict[str, str], bytes] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            position = start
            while True:
                line_end = self.buffer.find(b"\r\n", position)
                if line_end < 0:
                    return None
                size = int(bytes(self.buffer[position:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = self.buffer.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0 and self.buffer[line_end : line_end + 4] != b"\r\n\r\n":
                        return None
                    del self.buffer[: (trailer_end if trailer_end >= 0 else line_end) + 4]
                    return method, target, headers, bytes(body)
                if len(self.buffer) < line_end + 2 + size + 2:
                    return None
                body += self.buffer[line_end + 2 : line_end + 2 + size]
                position = line_end + 2 + size + 2
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < start + length:
            return None
        body_bytes = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        return method, target, headers, body_bytes

    def respond(self, code: int, body: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        self.server.store.codes[str(code)] += 1
        head = (
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if close:
            self.transport.close()

    def start_chunked(self) -> None:
        assert self.transport is not None
        self.server.store.codes["200"] += 1
        self.watching = True
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")

    def write_chunk(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
            self.transport.close()


class StandIn:
    """The request handler and the store behind every connection."""

    def __init__(self, token: str, bookmark_interval: float) -> None:
        self.store = Store()
        self.authorization = f"Bearer {token}"
        self.bookmark_interval = bookmark_interval

    def handle(self, connection: Connection, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        close = headers.get("connection", "").lower() == "close"
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/_bench/"):
            self.control(connection, method, path, body, close)
            return
        store = self.store
        if headers.get("authorization") != self.authorization:
            store.calls["unauthorized"] += 1
            connection.respond(401, status_body(401, "Unauthorized", "Unauthorized"), close)
            return
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if path == "/version":
            store.calls["other"] += 1
            connection.respond(200, b'{"major": "1", "minor": "30", "gitVersion": "v1.30.0-bench"}', close)
            return
        if len(segments) < 5 or segments[:3] != ["api", "v1", "namespaces"] or segments[4] != "secrets":
            store.calls["other"] += 1
            connection.respond(404, status_body(404, "NotFound", "the server could not find the requested resource"))
            return
        namespace = segments[3]
        query = parse_qs(parts.query)
        if len(segments) == 6 and method == "GET":
            store.calls["get"] += 1
            found = store.secrets.get((namespace, segments[5]))
            if found is None:
                connection.respond(404, status_body(404, "NotFound", f'secrets "{segments[5]}" not found'), close)
            else:
                connection.respond(200, found[2], close)
        elif len(segments) == 5 and method == "POST":
            store.calls["create"] += 1
            self.create(connection, namespace, body, close)
        elif len(segments) == 5 and method == "GET":
            if query.get("watch", [""])[0] in ("1", "true"):
                store.calls["watch"] += 1
                self.watch(connection, namespace, query)
            else:
                store.calls["list"] += 1
                self.list(connection, namespace, query, close)
        else:
            store.calls["other"] += 1
            connection.respond(405, status_body(405, "MethodNotAllowed", "not supported by the stand-in"), close)

    def create(self, connection: Connection, namespace: str, body: bytes, close: bool) -> None:
        store = self.store
        try:
            secret = json.loads(body)
            name = secret["metadata"]["name"]
        except (ValueError, KeyError, TypeError):
            connection.respond(400, status_body(400, "BadRequest", "not a Secret"), close)
            return
        key = (namespace, name)
        if key in store.secrets:
            connection.respond(409, status_body(409, "AlreadyExists", f'secrets "{name}" already exists'), close)
            return
        store.resource_version += 1
        kind = secret.get("type", "")
        labels = secret["metadata"].get("labels") or {}
        store.secrets[key] = (kind, labels, body)
        if kind == BUILD_TYPE:
            store.builds += 1
        connection.respond(201, body, close)
        if store.watchers:
            secret["metadata"]["resourceVersion"] = str(store.resource_version)
        for watcher in store.watchers:
            if watcher.namespace == namespace and _matches(name, kind, labels, watcher.fields, watcher.labels):
                watcher.send({"type": "ADDED", "object": secret})

    def list(self, connection: Connection, namespace: str, query: dict[str, list[str]], close: bool) -> None:
        fields, labels = _selectors(query)
        items = [
            body
            for (ns, name), (kind, secret_labels, body) in self.store.secrets.items()
            if ns == namespace and _matches(name, kind, secret_labels, fields, labels)
        ]
        version = str(self.store.resource_version)
        head = json.dumps({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": version}}).encode()
        connection.respond(200, head[:-1] + b', "items": [' + b", ".join(items) + b"]}", close)

    def watch(self, connection: Connection, namespace: str, query: dict[str, list[str]]) -> None:
        fields, labels = _selectors(query)
        watcher = Watcher(connection, namespace, fields, labels)
        self.store.watchers.append(watcher)
        connection.start_chunked()
        loop = asyncio.get_running_loop()
        timeout = float(query.get("timeoutSeconds", ["1800"])[0])
        bookmarks = query.get("allowWatchBookmarks", [""])[0] == "true"

        def bookmark() -> None:
            if connection.transport is None:
                return
            watcher.send(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": "Secret",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(self.store.resource_version)},
                    },
                }
            )
            loop.call_later(self.bookmark_interval, bookmark)

        if bookmarks:
            loop.call_later(self.bookmark_interval, bookmark)
        loop.call_later(timeout, connection.end_chunked)

    def control(self, connection: Connection, method: str, path: str, body: bytes, close: bool) -> None:
        store = self.store
        if path == "/_bench/stats":
            stats = {
                "calls": dict(store.calls),
                "codes": dict(store.codes),
                "builds": store.builds,
                "watchers": len(store.watchers),
                "connections": store.connections,
            }
            connection.respond(200, json.dumps(stats).encode(), close)
        elif path == "/_bench/missing" and method == "POST":
            names = json.loads(body)
            namespace = names.pop(0)
            missing = [name for name in names if (namespace, name) not in store.secrets]
            connection.respond(200, json.dumps(missing).encode(), close)
        else:
            connection.respond(404, b"{}", close)


async def serve(args: argparse.Namespace) -> None:
    standin = StandIn(args.token, args.bookmark_interval)
    for spec in args.project:
        name, _, secret = spec.partition("=")
        standin.store.add(args.namespace, project_secret(name, secret, args.namespace))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(standin), "127.0.0.1", args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--project", action="append", default=[], metavar="NAME=SECRET")
    parser.add_argument("--bookmark-interval", type=float, default=10.0)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
