"""
The least a gateway on the design card's stack does per delivery: the
baseline's bare ``twisted.web`` resource, which before it answers makes one
POST of a build-sized Secret to the Kubernetes API stand-in and decodes the
JSON it answers.

No routing, validation, parsing, spool, logging or metrics: what it costs
per request, against the baseline's, is the floor of the gateway's CPU per
delivery ratio on this stack before any of brigade-cr's own work (and
before the durable record, which ``bench_parts.py`` measures on its own).
``--client treq`` (the default; the design card's client) uses treq the
cheapest way it offers: one ``HTTPClient`` over an ``Agent`` with a
persistent connection pool, the body already encoded. ``--client minimal``
uses ``MinimalPost``, the least a keep-alive HTTP/1.1 client on Twisted can
do, one connection per request in flight: what leaving treq would buy.

Run: ``python bench/floor_server.py --api-port P --token T --namespace N
[--client treq|minimal]``; prints one JSON line (``port``, ``reactor``) once
it listens and runs until SIGTERM. A POST answers 200 once the stand-in
answered 201, else 502 naming what it answered (so a benchmark counts only
completed creations).
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets
import sys
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# Connections kept to the stand-in: one per wrk connection, so no request waits for one.
POOL_SIZE = 32
_DATA_KEYS = ("event_type", "event_provider", "project_id", "payload", "commit_ref", "build_id", "log_level", "script")


def secret_document(namespace: str, name: str, build: str) -> dict[str, Any]:
    """A build Secret named ``name``, the size of the gateway's (about 2 KB of JSON)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "brigade.sh/build",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"heritage": "brigade", "component": "build", "app": "brigade", "build": build},
        },
        "data": {key: "eHh4" * 40 for key in _DATA_KEYS},
    }


def minimal_head(port: int, token: str, namespace: str) -> bytes:
    """The head of a Secret's POST to the stand-in, up to the Content-Length's value."""
    return (
        f"POST /api/v1/namespaces/{namespace}/secrets?fieldManager=brigade-cr HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: "
    ).encode()


class MinimalPost(Protocol):
    """One request at a time: send it, read the head and Content-Length bytes, check 201."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.buffer = b""
        self.answer: Deferred[dict[str, Any]] | None = None

    def post(self, body: bytes) -> Deferred[dict[str, Any]]:
        """Send ``body``; fires with the decoded answer of a 201, fails naming any other status line."""
        self.buffer, self.answer = b"", Deferred()
        self.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)  # type: ignore[union-attr]
        return self.answer

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        header, separator, rest = self.buffer.partition(b"\r\n\r\n")
        if not separator:
            return
        lines = header.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        if len(rest) < length or self.answer is None:
            return
        answer, self.answer = self.answer, None
        if not lines[0].startswith(b"HTTP/1.1 201"):
            answer.errback(RuntimeError(f"the stand-in answered {lines[0]!r}"))
        else:
            answer.callback(json.loads(rest[:length]))


class MinimalCreator:
    """Creates Secrets over ``MinimalPost`` connections: an idle one if there is one, else a new one."""

    def __init__(self, reactor: Any, port: int, token: str, namespace: str) -> None:
        self._endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self._head = minimal_head(port, token, namespace)
        self._idle: list[MinimalPost] = []

    def create(self, body: bytes) -> Deferred[int]:
        """Fires with 201 once the stand-in created it; fails with what it answered otherwise."""
        lane = succeed(self._idle.pop()) if self._idle else connectProtocol(self._endpoint, MinimalPost(self._head))

        def send(protocol: MinimalPost) -> Deferred[int]:
            def idle(_: object) -> int:
                self._idle.append(protocol)
                return 201

            return protocol.post(body).addCallback(idle)

        return lane.addCallback(send)


class TreqCreator:
    """Creates Secrets with treq's ``HTTPClient`` over a persistent pool of ``POOL_SIZE`` connections."""

    def __init__(self, reactor: Any, port: int, token: str, namespace: str) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = POOL_SIZE
        self._client = HTTPClient(Agent(reactor, pool=pool))
        self._url = f"http://127.0.0.1:{port}/api/v1/namespaces/{namespace}/secrets?fieldManager=brigade-cr"
        self._headers = {b"Authorization": [b"Bearer " + token.encode()], b"Content-Type": [b"application/json"]}

    def create(self, body: bytes) -> Deferred[int]:
        """Fires with the stand-in's status once its JSON answer is read and decoded."""

        def answered(response: Any) -> Any:
            return response.json().addCallback(lambda _: response.code)

        return self._client.post(self._url, data=body, headers=self._headers).addCallback(answered)  # type: ignore[no-any-return]


CREATORS = {"treq": TreqCreator, "minimal": MinimalCreator}


class Floor(Resource):
    """Every path: POST reads the body, creates one Secret through ``creator``, then answers."""

    isLeaf = True

    def __init__(self, creator: Any, namespace: str) -> None:
        super().__init__()
        self._creator = creator
        self._namespace = namespace
        self._numbers = itertools.count()
        # Distinct names across processes: a stand-in outlives a floor server, and a name taken answers 409.
        self._run = secrets.token_hex(4)

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        body = request.content.read()
        build = f"{self._run}{next(self._numbers):018d}"
        document = secret_document(self._namespace, f"brigade-worker-floor-{build}", build)
        created = self._creator.create(json.dumps(document).encode())
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def finish(code: Any) -> None:
            if gone:  # wrk closed the connection at its end: nobody to answer
                return
            request.setHeader(b"content-type", b"application/json")
            if code != 201:
                request.setResponseCode(502)
                request.write(b'{"status": "Failure", "api": "%s"}\n' % str(code).encode())
            else:
                request.write(b'{"status": "Success", "bytes": %d}\n' % len(body))
            request.finish()

        created.addErrback(lambda failure: failure.getErrorMessage())
        created.addCallback(finish)
        return NOT_DONE_YET


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor  # installed here: bench_parts.py imports this module's classes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-port", type=int, required=True, help="the stand-in's port on 127.0.0.1")
    parser.add_argument("--token", required=True, help="the stand-in's bearer token")
    parser.add_argument("--namespace", required=True, help="where the Secrets are created")
    parser.add_argument("--client", choices=sorted(CREATORS), default="treq", help="how the Secret is created")
    args = parser.parse_args(argv)
    creator = CREATORS[args.client](reactor, args.api_port, args.token, args.namespace)
    site = Site(Floor(creator, args.namespace))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(json.dumps({"port": port.getHost().port, "reactor": type(reactor).__name__}), flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
