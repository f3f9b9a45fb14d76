"""
The existence-oracle benchmark: does the time of a refusal tell whether a
project exists?

It starts the fake Kubernetes API (``tests/kubetarget.py``'s
``FakeKubeProcess``, over TLS on loopback, seeded as ``tests/e2e.py`` seeds
it, plus ``--count`` known projects) and real ``twistd -n brigade-cr``
gateways against it, then times, from this process over one keep-alive
connection per gateway, deliveries that are all refused with the same 403:

- ``first``: on a fresh gateway, each try names a project it has never been
  asked about: an unknown project under a fresh name each time, and a known
  project (a different one each time) with a wrong secret;
- ``repeated``: on that same gateway afterwards, the same unknown name and the
  same known project, again and again.

The two kinds are interleaved, so that drift in the machine's load falls on
both. It prints, per phase, the median and 90th percentile of each kind, the
ratio of the medians (unknown / known) and whether every answer was
byte-identical. The claim (README, Authentication) is a ratio within 10% of
1 in both phases; nothing is asserted: timing is measured here, never in the
tests.

Run from the repository root (the test helpers it uses are not installed)::

    PYTHONPATH=$PWD python bench/bench_oracle.py [--count 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.backend_contract import project_secret  # noqa: E402
from tests.e2e import NAMESPACE, SECRET, SSH_KEY  # noqa: E402
from tests.gatewayprocess import GatewayProcess  # noqa: E402
from tests.kubetarget import FakeKubeProcess  # noqa: E402

BODY = (REPO / "tests" / "payloads" / "acr_push.json").read_bytes()
WRONG = {"Authorization": "Bearer not-the-secret-of-any-project"}
REQUEST_TIMEOUT = 15.0


def seeds(count: int) -> list[dict[str, object]]:
    """tests/e2e.py's projects, and ``count`` known projects ``known-N`` with a secret."""
    return [
        project_secret("acme/webapp", repository=b"github.com/acme/webapp", crGatewaySecret=SECRET.encode()),
        project_secret("solo", crGatewaySecret=SECRET.encode(), sshKey=SSH_KEY.encode()),
        project_secret(
            "impostor",
            secret_type="brigade.sh/build",  # noqa: S106 (a Secret type, not a credential)
            crGatewaySecret=SECRET.encode(),
        ),
        project_secret("keyless", sshKey=SSH_KEY.encode()),
        *(project_secret(f"known-{n}", crGatewaySecret=SECRET.encode()) for n in range(count)),
    ]


def timed(connection: http.client.HTTPConnection, project: str) -> tuple[float, int, bytes]:
    """One delivery to ``project`` with a wrong secret: seconds taken, status, body."""
    started = time.perf_counter()
    connection.request(
        "POST", f"/events/webhook/{project}", body=BODY, headers={"Content-Type": "application/json", **WRONG}
    )
    answer = connection.getresponse()
    body = answer.read()
    return time.perf_counter() - started, answer.status, body


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.5) - 1))]


def phase(
    connection: http.client.HTTPConnection, unknown: Sequence[str], known: Sequence[str]
) -> tuple[list[float], list[float], set[tuple[int, bytes]]]:
    """Interleaved tries: the times of each kind, and every distinct answer."""
    unknown_times, known_times, answers = [], [], set()
    for missing, present in zip(unknown, known, strict=True):
        for name, times in ((missing, unknown_times), (present, known_times)):
            seconds, status, body = timed(connection, name)
            times.append(seconds)
            answers.add((status, body))
    return unknown_times, known_times, answers


def report(title: str, unknown: list[float], known: list[float], answers: set[tuple[int, bytes]]) -> None:
    """Print one phase's figures."""
    ms = 1000.0
    ratio = statistics.median(unknown) / statistics.median(known)
    print(f"{title} ({len(unknown)} tries of each)")
    print(
        f"  unknown project:             median {statistics.median(unknown) * ms:8.2f} ms, "
        f"p90 {percentile(unknown, 0.9) * ms:8.2f} ms"
    )
    print(
        f"  known project, wrong secret: median {statistics.median(known) * ms:8.2f} ms, "
        f"p90 {percentile(known, 0.9) * ms:8.2f} ms"
    )
    print(f"  ratio of medians (unknown / known): {ratio:.2f}")
    shown = ", ".join(f"{status} {body.decode(errors='replace').strip()}" for status, body in sorted(answers))
    print(f"  distinct answers: {len(answers)} ({shown})")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100, help="tries of each kind in each phase (default 100)")
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="an extra argument for the gateway (repeatable), e.g. --gateway-arg=--project-resync=60",
    )
    options = parser.parse_args(argv)
    count = options.count
    with tempfile.TemporaryDirectory(prefix="bench-oracle-") as scratch:
        root = Path(scratch)
        seed_file = root / "seed.json"
        seed_file.write_text(json.dumps(seeds(count)))
        kube = FakeKubeProcess.start(str(root / "api"), namespaces=(NAMESPACE,), seeds=[str(seed_file)])
        try:
            gateway = GatewayProcess.start(
                [
                    "--kubeconfig",
                    kube.kubeconfig,
                    "--namespace",
                    NAMESPACE,
                    # Every try is a failed authentication from 127.0.0.1: keep
                    # the limiter from answering 429 instead of timing the work.
                    "--auth-failure-burst",
                    str(100 * count + 100),
                    *options.gateway_arg,
                ],
                root / "gateway",
            )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=REQUEST_TIMEOUT)
                try:
                    fresh = [f"nobody-{uuid.uuid4().hex[:12]}" for _ in range(count)]
                    first = phase(connection, fresh, [f"known-{n}" for n in range(count)])
                    missing = f"nobody-{uuid.uuid4().hex[:12]}"
                    repeated = phase(connection, [missing] * count, ["known-0"] * count)
                finally:
                    connection.close()
            finally:
                gateway.stop()
        finally:
            kube.stop()
    print(f"brigade-cr existence-oracle benchmark: fake Kubernetes API over TLS, gateway on loopback, {count} tries")
    report("first tries (fresh gateway, a project never asked about each time)", *first)
    report("repeated tries (the same project each time)", *repeated)


if __name__ == "__main__":
    main()
