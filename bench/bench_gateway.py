"""
The benchmark: how many deliveries a second the gateway turns into builds.

Two measurements, both bounded in count:

- ``inprocess``: the real Klein app and twisted.web stack driven in memory
  (``treq.testing.StubTreq``) over the in-memory backend: the cost of
  routing, decoding, recognition and rendering, with no network.
- ``loopback``: a real ``twistd -n brigade-cr`` process with the directory
  backend, sent N requests over 127.0.0.1 from this process.

Run: ``python bench/bench_gateway.py [--count N]``. Numbers are printed, never
asserted: speed is measured here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from treq.testing import StubTreq  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from brigade_cr.core.contract import project_id  # noqa: E402
from brigade_cr.core.gateway import Gateway  # noqa: E402
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects  # noqa: E402
from brigade_cr.web.routes import make_site_resource  # noqa: E402

BODY = (REPO / "tests" / "payloads" / "acr_push.json").read_bytes()
SECRET = "bench-secret"  # noqa: S105 (a throwaway project secret on loopback)


def project_secret(name: str) -> dict[str, object]:
    """A project Secret for ``name`` with the bench's crGatewaySecret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "brigade.sh/project",
        "metadata": {"name": project_id(name), "annotations": {"projectName": name}},
        "stringData": {"crGatewaySecret": SECRET},
    }


def event(n: int) -> bytes:
    """A distinct ACR push (a re-delivery would be a duplicate, not a build)."""
    return BODY.replace(b"0f4c2b8e-6a1d", f"{n:08x}-6a1d".encode())


def inprocess(count: int) -> float:
    """Deliveries a second through the in-memory stack."""
    projects = MemoryProjects()
    projects.add(project_secret("bench"))
    builds = MemoryBuilds()
    clock = Clock()
    clock.advance(1_767_225_600)
    treq = StubTreq(make_site_resource(Gateway(projects, builds, clock), clock))
    start = time.perf_counter()
    for n in range(count):
        treq.post("http://bench/events/webhook/bench?token=" + SECRET, data=event(n))
        treq.flush()
    elapsed = time.perf_counter() - start
    assert len(builds.secrets) == count
    return count / elapsed


def loopback(count: int) -> float:
    """Deliveries a second to a real gateway process on 127.0.0.1."""
    from tests.gatewayprocess import GatewayProcess

    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        projects = workdir / "data" / "projects"
        projects.mkdir(parents=True)
        (projects / "bench.json").write_text(json.dumps(project_secret("bench")))
        process = GatewayProcess.start(["--backend", f"dir:{workdir / 'data'}"], workdir)
        try:
            start = time.perf_counter()
            for n in range(count):
                assert process.post("/events/webhook/bench?token=" + SECRET, event(n)).status == 200
            elapsed = time.perf_counter() - start
        finally:
            process.stop()
        return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    print(f"inprocess: {inprocess(args.count):8.0f} deliveries/s ({args.count} deliveries)")
    print(f"loopback:  {loopback(min(args.count, 500)):8.0f} deliveries/s ({min(args.count, 500)} deliveries)")


if __name__ == "__main__":
    main()
