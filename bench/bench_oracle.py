"""
The existence-oracle benchmark (issue 8): does the answer's timing tell
which projects exist?

A real ``twistd -n brigade-cr`` process against the fake Kubernetes API
process (TLS, bearer token), both on 127.0.0.1. ``--tries`` deliveries (100
by default) go to an unknown project and as many to a known project with a
wrong secret, interleaved, each on a fresh connection; first tries (a
project ID never asked for) and repeated tries (the same ID again) are
measured apart. The medians are printed with their relative difference;
the issue asks for under 10%. The number of API calls the deliveries made
is printed too (it should be 0: projects are watched, not fetched).

Run: ``python bench/bench_oracle.py [--tries N]``. Numbers are printed,
never asserted: timing is measured here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.backend_contract import project_secret  # noqa: E402
from tests.gatewayprocess import GatewayProcess  # noqa: E402
from tests.kubetarget import FakeKubeProcess  # noqa: E402

BODY = (REPO / "tests" / "payloads" / "acr_push.json").read_bytes()
SECRET = "bench-oracle-secret-0123456789"  # noqa: S105 (a throwaway project secret on loopback)
NAMESPACE = "brigade"


def timed(gateway: GatewayProcess, path: str, token: str) -> float:
    start = time.perf_counter()
    answer = gateway.post(path, BODY, {"Authorization": f"Bearer {token}"})
    elapsed = time.perf_counter() - start
    assert answer.status == 403, answer.status
    return elapsed


def spread(a: list[float], b: list[float]) -> str:
    ma, mb = statistics.median(a), statistics.median(b)
    return (
        f"unknown {ma * 1000:7.3f} ms, wrong secret {mb * 1000:7.3f} ms, difference {abs(ma - mb) / min(ma, mb):6.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        seed = workdir / "seed.json"
        seed.write_text(json.dumps([project_secret("known", crGatewaySecret=SECRET.encode())]))
        kube = FakeKubeProcess.start(str(workdir / "api"), namespaces=(NAMESPACE,), seeds=[str(seed)])
        try:
            gateway = GatewayProcess.start(
                [
                    "--kubeconfig",
                    kube.kubeconfig,
                    "--namespace",
                    NAMESPACE,
                    "--auth-failure-burst",
                    "1000000",
                    "--auth-failure-rate",
                    "1000000",
                ],
                workdir / "gateway",
            )
            try:
                for _ in range(100):  # at most 10 s for the first sync
                    if gateway.request("GET", "/readyz").status == 200:
                        break
                    time.sleep(0.1)
                kube.reset_calls()
                first_unknown, first_wrong, again_unknown, again_wrong = [], [], [], []
                for n in range(args.tries):
                    first_unknown.append(timed(gateway, f"/events/webhook/unknown-{n}", SECRET))
                    first_wrong.append(timed(gateway, "/events/webhook/known", f"wrong-{n}"))
                for _ in range(args.tries):
                    again_unknown.append(timed(gateway, "/events/webhook/unknown-0", SECRET))
                    again_wrong.append(timed(gateway, "/events/webhook/known", "wrong-0"))
                calls = [c for c in kube.calls() if c["verb"] != "watch"]
            finally:
                gateway.stop()
        finally:
            kube.stop()
    print(f"first tries:    {spread(first_unknown, first_wrong)} ({args.tries} each)")
    print(f"repeated tries: {spread(again_unknown, again_wrong)} ({args.tries} each)")
    print(f"API calls other than the watch during the tries: {len(calls)}")


if __name__ == "__main__":
    main()
