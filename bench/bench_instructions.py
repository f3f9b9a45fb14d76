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
in deliveries: start-up and imports cancel out.

Run: ``python bench/bench_instructions.py [--no-spool] [--small N] [--large N]``
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WARM_UP = 50


def child(count: int, spool: bool) -> None:
    """Send WARM_UP + ``count`` deliveries through the stack in memory."""
    # The disk's time is not counted here, and an fsync is a system call
    # that callgrind does not see into anyway.
    os.fsync = lambda fd: None

    from tests import wire

    with tempfile.TemporaryDirectory() as directory:
        stack = wire.Wire(spool=Path(directory) / "spool" if spool else None, max_body=65536)
        try:
            path = f"/events/webhook/acme/webapp?token={wire.SECRET}".encode()
            channel, transport = stack.connect()
            for n in range(WARM_UP + count):
                body = json.dumps(
                    {
                        "callback_url": "https://registry.hub.docker.com/u/acme/webapp/hook/0f1e2d3c/",
                        "push_data": {"pushed_at": 1767225600 + n, "pusher": "bench", "tag": f"t{n}", "images": []},
                        "repository": {"repo_name": "acme/webapp", "name": "webapp", "namespace": "acme"},
                    }
                ).encode()
                channel.dataReceived(wire.request("POST", path, body, headers=[(b"Content-Type", b"application/json")]))
                stack.reactor.advance(0)
            answered = transport.value().count(b"HTTP/1.1 20")
            if answered != WARM_UP + count:
                raise SystemExit(f"bench: {answered} of {WARM_UP + count} deliveries answered 2xx")
        finally:
            stack.close()


def instructions(count: int, spool: bool) -> int:
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
        ] + ([] if spool else ["--no-spool"])
        answer = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)  # noqa: S603
    match = re.search(r"Collected : (\d+)", answer.stderr)
    if answer.returncode != 0 or not match:
        raise SystemExit(f"bench: the callgrind run failed:\n{answer.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-spool", action="store_true", help="the memory store alone, without the spool")
    parser.add_argument("--small", type=int, default=200, help="deliveries in the first run")
    parser.add_argument("--large", type=int, default=600, help="deliveries in the second run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, not args.no_spool)
        return 0
    if not shutil.which("valgrind"):
        raise SystemExit("bench: valgrind is not on PATH (Debian: apt-get install -y valgrind)")
    if args.large <= args.small:
        raise SystemExit("bench: --large must be more than --small")
    small = instructions(args.small, not args.no_spool)
    large = instructions(args.large, not args.no_spool)
    per_delivery = (large - small) / (args.large - args.small)
    label = "memory store" if args.no_spool else "spool in front of the memory store"
    print(f"{per_delivery / 1e6:.3f} million instructions per delivery ({label}; {small} and {large} in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
