"""
The benchmark's baseline: a bare ``twisted.web`` resource on loopback.

``render_POST`` reads the body and returns a small JSON document; nothing
else (no routing, no logging, no parsing). It runs on the reactor the gateway
gets from ``twistd`` on this platform (the default reactor: epoll on Linux).

Run: ``python bench/baseline_server.py``; prints one JSON line (``port``,
``reactor``) once it listens and runs until SIGTERM.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Bare(Resource):
    """Every path: POST reads the body and answers a small JSON."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "Success", "bytes": %d}\n' % len(body)


def main() -> None:
    port = reactor.listenTCP(0, Site(Bare()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(
        json.dumps({"port": port.getHost().port, "reactor": type(reactor).__name__}),
        flush=True,
    )
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
