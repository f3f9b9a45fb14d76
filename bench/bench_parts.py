"""
The CPU of the parts a delivery is made of, each measured alone: what the
gateway's CPU per delivery cannot go below on this stack.

``bench_burst.py`` measures the whole gateway; this measures, on the same
machine and in one run, each part in its own process, so that the whole can
be read against the sum of its parts (docs/performance.md, "What a delivery
cannot cost less than"):

- ``baseline``: the bare ``twisted.web`` resource under wrk (as in
  ``bench_burst.py``): CPU per request, the yardstick of the ratios;
- ``api-client``: ``KubeClient.create_secret`` (treq over Twisted's Agent,
  as the gateway makes it) against the Kubernetes API stand-in, 4 at a time;
- ``minimal-client``: the same POSTs by a minimal keep-alive HTTP/1.1
  protocol on the same reactor: the floor of any client on Twisted;
- ``record-write-1``, ``record-write-8``: ``disk.write_records`` as the
  spool calls it, in batches of 1 (a record file: written, fsynced,
  renamed, the directory fsynced) and of 8 records (one batch file, made
  durable the same way once for all 8), in ``--dir``'s file system;
- ``record-files-8``: batches of 8 written as the spool wrote them before
  batch files (``disk.write_record_files``: each record's file fsynced and
  renamed, one directory fsync per batch), for comparison;
- ``thread-hop``: a no-op through ``deferToThreadPool`` and back, one at a time;
- ``floor-treq``: ``floor_server.py``, the baseline's bare resource making
  one treq POST of a build Secret to the stand-in before each answer, under
  wrk as the baseline is: the least a gateway on the design card's stack
  (twisted.web and treq) costs per delivery, before any of its own work and
  before the durable record;
- ``floor-minimal``: the same server creating the Secret with
  ``floor_server.MinimalPost`` instead: that floor without treq.

Each figure is the child's user + system CPU (``getrusage``, every thread)
per operation after a warm-up (for the floors, the server's, from
``/proc``, per request answered), and its ratio to the baseline's CPU per
request. It reports; it asserts nothing.

Run: ``python bench/bench_parts.py [--count N] [--dir DIR] [--json]`` (needs
``wrk`` for the baseline; about a minute). With ``--child PART`` it is the
measured process itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import bench_burst  # noqa: E402 - after the path: the stand-in, the baseline and wrk
from floor_server import MinimalPost, minimal_head, secret_document  # noqa: E402

PARTS = ("api-client", "minimal-client", "record-write-1", "record-write-8", "record-files-8", "thread-hop")
# Servers under wrk, measured from this process: the floor of a delivery with each client (floor_server.py).
FLOORS = {"floor-treq": "treq", "floor-minimal": "minimal"}
# Operations before the measured ones: connections made, code paths warm.
WARM_UP = 40
# Requests in flight at once for the client parts (the spool's default in-flight limit).
IN_FLIGHT = 4


def secret(part: str, n: int) -> dict[str, Any]:
    """A distinct build Secret for the stand-in, the size of the gateway's."""
    build = f"{n:026d}"
    return secret_document(bench_burst.NAMESPACE, f"brigade-worker-{part}-{build}".lower(), build)


def cpu_now() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def per_operation(before: tuple[float, float], started: float, count: int) -> dict[str, float]:
    user, system = cpu_now()
    return {
        "user_ms": (user - before[0]) * 1000 / count,
        "sys_ms": (system - before[1]) * 1000 / count,
        "cpu_ms": (user - before[0] + system - before[1]) * 1000 / count,
        "per_s": count / (time.monotonic() - started),
    }


# --- the measured children ---------------------------------------------------


def _on_reactor(work: Callable[[Any], Any]) -> Any:
    """Run the coroutine function ``work(reactor)`` on a fresh reactor; its result, or raise what it raised."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome: dict[str, Any] = {}

    def begin() -> None:
        done = Deferred.fromCoroutine(work(reactor))
        done.addCallbacks(lambda value: outcome.setdefault("value", value), lambda f: outcome.setdefault("failure", f))
        done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(begin)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if "failure" in outcome:
        outcome["failure"].raiseException()
    return outcome["value"]


async def _in_flight(count: int, one: Callable[[int], Any]) -> None:
    """``one(n)`` for n in range(count), ``IN_FLIGHT`` at a time."""
    from twisted.internet.defer import Deferred, gatherResults

    numbers = iter(range(count))

    async def lane() -> None:
        for n in numbers:
            await one(n)

    await gatherResults([Deferred.fromCoroutine(lane()) for _ in range(IN_FLIGHT)])


def api_client(port: int, token: str, count: int) -> dict[str, float]:
    """``KubeClient.create_secret`` as the gateway makes it, against the stand-in."""
    from brigade_cr.stores.kube.client import KubeClient
    from brigade_cr.stores.kube.config import BearerToken, KubeConfig

    async def work(reactor: Any) -> dict[str, float]:
        config = KubeConfig(server=f"http://127.0.0.1:{port}", credentials=BearerToken(token))
        client = KubeClient.from_config(reactor, config)
        await _in_flight(WARM_UP, lambda n: client.create_secret(bench_burst.NAMESPACE, secret("warm-api", n)))
        before, started = cpu_now(), time.monotonic()
        await _in_flight(count, lambda n: client.create_secret(bench_burst.NAMESPACE, secret("api", n)))
        result = per_operation(before, started, count)
        await client.close()
        return result

    return _on_reactor(work)  # type: ignore[no-any-return]


def minimal_client(port: int, token: str, count: int) -> dict[str, float]:
    """The same POSTs by the least an HTTP/1.1 client on Twisted can do (``floor_server.MinimalPost``)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    head = minimal_head(port, token, bench_burst.NAMESPACE)

    async def work(reactor: Any) -> dict[str, float]:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        lanes = [await connectProtocol(endpoint, MinimalPost(head)) for _ in range(IN_FLIGHT)]
        free = list(lanes)

        async def one(n: int, part: str) -> None:
            lane = free.pop()
            try:
                await lane.post(json.dumps(secret(part, n)).encode())
            finally:
                free.append(lane)

        await _in_flight(WARM_UP, lambda n: one(n, "warm-minimal"))
        before, started = cpu_now(), time.monotonic()
        await _in_flight(count, lambda n: one(n, "minimal"))
        result = per_operation(before, started, count)
        for lane in lanes:
            lane.transport.loseConnection()  # type: ignore[union-attr]
        return result

    return _on_reactor(work)  # type: ignore[no-any-return]


def timed_writes(directory: Path, count: int, batch: int, write: Callable[[int, int], None]) -> dict[str, float]:
    """
    ``write(first, total)`` writes records ``first`` to ``first + total`` in
    batches of ``batch``: the warm-up, then about ``count`` timed (whole
    batches); every file is removed afterwards. The figures are per record.
    """
    write(0, WARM_UP // batch * batch)
    before, started = cpu_now(), time.monotonic()
    measured = count // batch * batch
    write(WARM_UP, measured)
    result = per_operation(before, started, measured)
    for path in directory.iterdir():
        path.unlink()
    return result


def record_write(directory: Path, count: int, batch: int, files: bool = False) -> dict[str, float]:
    """
    ``disk.write_records`` in batches of ``batch`` (with ``files``,
    ``disk.write_record_files``: a file per record); every file removed
    again afterwards.
    """
    from brigade_cr.stores.spool.disk import no_step, write_record_files, write_records
    from brigade_cr.stores.spool.record import record_filename

    record = b"x" * 1500  # the size of a Docker Hub push's record
    writer = write_record_files if files else write_records

    def write(start: int, total: int) -> None:
        for first in range(start, start + total, batch):
            names = [(record_filename(n, f"brigade-worker-{n:026d}"), record) for n in range(first, first + batch)]
            failures = [outcome for outcome in writer(directory, names, no_step) if isinstance(outcome, BaseException)]
            if failures:
                raise failures[0]

    return timed_writes(directory, count, batch, write)


def thread_hop(count: int) -> dict[str, float]:
    """A no-op through the reactor's thread pool and back, one at a time."""
    from twisted.internet.threads import deferToThreadPool

    async def work(reactor: Any) -> dict[str, float]:
        pool = reactor.getThreadPool()
        for _ in range(WARM_UP):
            await deferToThreadPool(reactor, pool, lambda: None)
        before, started = cpu_now(), time.monotonic()
        for _ in range(count):
            await deferToThreadPool(reactor, pool, lambda: None)
        return per_operation(before, started, count)

    return _on_reactor(work)  # type: ignore[no-any-return]


def floor_server(seconds: float, api_port: int, client: str) -> dict[str, float]:
    """
    ``floor_server.py --client client`` under wrk (32 connections, as the
    baseline), after a one-second warm-up: its CPU per request answered.
    Every answer must be a 200 (the stand-in created the Secret) and the
    stand-in must hold a build for each, else it stops: no request is timed
    undone.
    """
    command = [sys.executable, str(BENCH / "floor_server.py"), "--api-port", str(api_port)]
    command += ["--token", bench_burst.TOKEN, "--namespace", bench_burst.NAMESPACE, "--client", client]
    process, port = bench_burst.start_json_process(command)
    try:
        bench_burst.run_wrk(port, "/", 1, "warm-floor")
        builds = bench_burst.stats(api_port)["builds"]
        before = bench_burst.cpu_times(process.pid)
        summary = bench_burst.run_wrk(port, bench_burst.webhook_path(), seconds, "floor")
        user, system = bench_burst.cpu_times(process.pid)
        created = bench_burst.stats(api_port)["builds"] - builds
    finally:
        bench_burst.stop(process)
    answered = summary["acks"]
    if summary["status_errors"] or not answered or created < answered:
        raise SystemExit(
            f"bench: the floor server ({client}) answered {summary['requests']} requests,"
            f" {summary['status_errors']} not 2xx, and the stand-in created {created} builds"
        )
    return {
        "user_ms": (user - before[0]) * 1000 / answered,
        "sys_ms": (system - before[1]) * 1000 / answered,
        "cpu_ms": (user - before[0] + system - before[1]) * 1000 / answered,
        "per_s": answered / summary["seconds"],
    }


def child(part: str, count: int, port: int, token: str, directory: Path) -> dict[str, float]:
    """Measure ``part`` (one of ``PARTS``) in this process."""
    if part == "api-client":
        return api_client(port, token, count)
    if part == "minimal-client":
        return minimal_client(port, token, count)
    if part.startswith("record-write-"):
        return record_write(directory, count, int(part.rsplit("-", 1)[1]))
    if part.startswith("record-files-"):
        return record_write(directory, count, int(part.rsplit("-", 1)[1]), files=True)
    if part == "thread-hop":
        return thread_hop(count)
    raise SystemExit(f"bench: no part {part!r} (one of {', '.join(PARTS)})")


# --- the run -----------------------------------------------------------------


def measure_part(part: str, count: int, port: int, directory: Path) -> dict[str, float]:
    """Run ``part`` in a child process; its figures."""
    command = [sys.executable, __file__, "--child", part, "--count", str(count), "--port", str(port)]
    command += ["--token", bench_burst.TOKEN, "--dir", str(directory)]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    if answer.returncode != 0:
        raise SystemExit(f"bench: the part {part} failed:\n{answer.stderr[-2000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def file_system(directory: Path) -> str:
    """The type of the file system ``directory`` is on (the longest mount point above it)."""
    best, kind = "", "unknown"
    resolved = str(directory.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def report(results: dict[str, dict[str, float]], baseline: dict[str, Any], fs: str) -> str:
    base = baseline["cpu_ms_per_request"]
    lines = [
        f"baseline (bare twisted.web under wrk): {baseline['requests_per_s']:.0f} requests/s,"
        f" {base:.3f} ms CPU/request",
        f"{'part':<16} {'CPU ms/op':>10} {'user':>7} {'sys':>7} {'ops/s':>8} {'x baseline':>10}",
    ]
    for part, figures in results.items():
        lines.append(
            f"{part:<16} {figures['cpu_ms']:>10.3f} {figures['user_ms']:>7.3f} {figures['sys_ms']:>7.3f}"
            f" {figures['per_s']:>8.0f} {figures['cpu_ms'] / base:>9.2f}x"
        )
    lines.append(f"(record writes on {fs}; {IN_FLIGHT} requests in flight for the clients)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="measured operations per part")
    parser.add_argument("--dir", type=Path, help="where records are written (default: a temporary directory)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the baseline's wrk run")
    parser.add_argument("--json", action="store_true", help="the JSON report on stdout instead of the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count < 1:
        raise SystemExit("bench: --count must be at least 1")
    if args.child is not None:
        print(json.dumps(child(args.child, args.count, args.port or 0, args.token or "", args.dir)))
        return 0
    if not shutil.which(bench_burst.WRK):
        raise SystemExit("bench: wrk is not on PATH (Debian: apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-parts-", dir=args.dir))
    standin, port = bench_burst.start_json_process(
        [
            sys.executable,
            str(BENCH / "kube_standin.py"),
            "--token",
            bench_burst.TOKEN,
            "--namespace",
            bench_burst.NAMESPACE,
            "--project",
            f"{bench_burst.PROJECT}={bench_burst.PROJECT_SECRET}",
        ]
    )
    try:
        baseline = bench_burst.baseline(args.seconds)
        results = {}
        for part in PARTS:
            bench_burst.say(f"== {part}")
            results[part] = measure_part(part, args.count, port, work)
        for name, client in FLOORS.items():
            bench_burst.say(f"== {name}")
            results[name] = floor_server(args.seconds, port, client)
    finally:
        bench_burst.stop(standin)
        shutil.rmtree(work, ignore_errors=True)
    fs = file_system(work.parent)
    if args.json:
        print(json.dumps({"baseline": baseline, "parts": results, "file_system": fs, "machine": bench_burst.machine()}))
    else:
        print(report(results, baseline, fs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
