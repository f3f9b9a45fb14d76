"""
Instructions per delivery through the whole stack in memory: a yardstick
that the machine's speed does not move.

On this shared machine two runs of the same code differ in CPU time by as
much as a change is worth (docs/performance.md), and there are no hardware
counters. ``valgrind --tool=callgrind`` counts the instructions executed,
which for the same code and inputs is the same from run to run. This runs the
real ``BrigadeSite`` and ``WebhookSite`` with a ``SpooledBuilds`` (blocking
calls inline, ``os.fsync`` a no-op: the disk is not what is counted) in
front of the memory store (``tests/wire.py``), sending distinct Docker Hub
pushes on one keep-alive connection, under callgrind twice (``--small`` and
``--large`` deliveries) and prints the difference divided by the difference
in deliveries: start-up and imports cancel out. With ``--baseline`` it
counts the same requests answered by ``baseline_server.py``'s bare resource,
so the two figures make a ratio that does not drift either.

Run: ``python bench/bench_instructions.py [--no-spool | --baseline] [--small N] [--large N]``
(needs ``valgrind``: ``apt-get install -y valgrind``; about a minute a run).
With ``--child N`` it is the measured process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WARM_UP = 50


def delivery(n: int) -> bytes:
    """The request bytes of the ``n``th distinct Docker Hub push to ``tests/wire.py``'s project."""
    from tests import wire

    body = json.dumps(
        {
            "callback_url": "https://registry.hub.docker.com/u/acme/webapp/hook/0f1e2d3c/",
            "push_data": {"pushed_at": 1767225600 + n, "pusher": "bench", "tag": f"t{n}", "images": []},
            "repository": {"repo_name": "acme/webapp", "name": "webapp", "namespace": "acme"},
        }
    ).encode()
    path = f"/events/webhook/acme/webapp?token={wire.SECRET}".encode()
    return wire.request("POST", path, body, headers=[(b"Content-Type", b"application/json")])


def answered_all(transport: Any, count: int) -> None:
    """Stop, saying how many, unless ``transport`` holds ``count`` 2xx answers."""
    answered = transport.value().count(b"HTTP/1.1 20")
    if answered != count:
        raise SystemExit(f"bench: {answered} of {count} deliveries answered 2xx")


def child(count: int, spool: bool) -> None:
    """Send WARM_UP + ``count`` deliveries through the stack in memory."""
    # The disk's time is not counted here, and an fsync is a system call
    # that callgrind does not see into anyway.
    os.fsync = lambda fd: None

    from tests import wire

    with tempfile.TemporaryDirectory() as directory:
        stack = wire.Wire(spool=Path(directory) / "spool" if spool else None, max_body=65536)
        try:
            channel, transport = stack.connect()
            for n in range(WARM_UP + count):
                channel.dataReceived(delivery(n))
                stack.reactor.advance(0)
            answered_all(transport, WARM_UP + count)
        finally:
            stack.close()


def baseline_child(count: int) -> None:
    """The same requests to ``baseline_server.py``'s bare resource: the yardstick's yardstick."""
    from baseline_server import Bare
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.server import Site

    channel = Site(Bare()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    for n in range(WARM_UP + count):
        channel.dataReceived(delivery(n))
    answered_all(transport, WARM_UP + count)


def instructions(count: int, mode: str) -> int:
    """Instructions callgrind counted for a child sending ``count`` deliveries."""
    with tempfile.TemporaryDirectory() as directory:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={directory}/callgrind.out",
            sys.executable,
            __file__,
            "--child",
            str(count),
        ] + {"spool": [], "memory": ["--no-spool"], "baseline": ["--baseline"]}[mode]
        answer = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)  # noqa: S603
    match = re.search(r"Collected : (\d+)", answer.stderr)
    if answer.returncode != 0 or not match:
        raise SystemExit(f"bench: the callgrind run failed:\n{answer.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--no-spool", action="store_true", help="the memory store alone, without the spool")
    what.add_argument(
        "--baseline", action="store_true", help="the same requests to the benchmark's bare twisted.web resource"
    )
    parser.add_argument("--small", type=int, default=200, help="deliveries in the first run")
    parser.add_argument("--large", type=int, default=600, help="deliveries in the second run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        if args.baseline:
            baseline_child(args.child)
        else:
            child(args.child, not args.no_spool)
        return 0
    if not shutil.which("valgrind"):
        raise SystemExit("bench: valgrind is not on PATH (Debian: apt-get install -y valgrind)")
    if args.large <= args.small:
        raise SystemExit("bench: --large must be more than --small")
    mode = "baseline" if args.baseline else "memory" if args.no_spool else "spool"
    small = instructions(args.small, mode)
    large = instructions(args.large, mode)
    per_delivery = (large - small) / (args.large - args.small)
    label = {
        "baseline": "the bare twisted.web resource",
        "memory": "memory store",
        "spool": "spool in front of the memory store",
    }[mode]
    print(f"{per_delivery / 1e6:.3f} million instructions per delivery ({label}; {small} and {large} in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
