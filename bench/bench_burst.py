"""
The burst benchmark: acknowledgements, bursts and cost per delivery.

In one run, on 127.0.0.1 only, it measures a bare ``twisted.web`` resource
(the baseline, ``bench/baseline_server.py``) and the gateway (a real ``twistd
-n brigade-cr`` process running this repository's code) "no spool" and
"spool", one of them being the gateway's defaults, against a fast Kubernetes
API stand-in (``bench/kube_standin.py``), and prints, per configuration:

- acknowledged (2xx) deliveries/s with ``wrk``, 32 keep-alive connections,
  every request a distinct Docker Hub push (``bench/delivery.lua``), and the
  ratio to the baseline's requests/s (the baseline is measured again just
  before each configuration, and each ratio is to that run: a shared virtual
  machine's speed drifts by as much as 2x within minutes);
- p50/p99 acknowledgement latency at that load (wrk) and at half the
  measured rate (a paced, open-loop Python client);
- gateway CPU ms per delivery (utime+stime from /proc) and the ratio to the
  baseline's CPU per request;
- Kubernetes API calls per delivery at steady state (after a warm-up);
- RSS at start and after 100k deliveries (fewer with ``--quick``, or when the
  time budget runs out first: the count reached is reported);
- a burst of 500 distinct deliveries over 100 connections on a fresh
  gateway: time to the last acknowledgement, how many took over 5 s, how many
  were not 2xx, none lost or duplicated, and the time until every build exists.

Each figure is printed beside its target (docs/performance.md) (for the defaults
configuration) with pass/fail; all figures go to a JSON file
(``bench/results/<UTC time>.json``) or to stdout with ``--json``. Speed is
measured here, never asserted by a test.

Run: ``make bench`` or ``python bench/bench_burst.py [--quick]``. Needs
``wrk`` on PATH (Debian: ``apt-get install -y wrk``). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from kube_standin import project_id  # noqa: E402

NAMESPACE = "bench"
PROJECT = "bench/app"
PROJECT_SECRET = secrets.token_hex(16)  # a throwaway project secret on loopback
TOKEN = secrets.token_hex(16)  # the stand-in's bearer token
CLK_TCK = os.sysconf("SC_CLK_TCK")
TWISTD = "from twisted.scripts.twistd import run; run()"
_LISTENING = re.compile(rb"BrigadeSite starting on (\d+)")
WRK = shutil.which("wrk") or "wrk"

# Issue 10's targets, at the gateway's defaults.
TARGETS = {
    "acks_ratio": (">=", 0.25),
    "p99_half_ms": ("<=", 50.0),
    "cpu_ratio": ("<=", 5.0),
    "api_calls_per_delivery": ("==", 1.00),
    "rss_after_mb": ("<=", 80.0),
    "rss_deliveries": (">=", 100_000),
    "burst_last_ack_s": ("<=", 5.0),
    "burst_over_5s": ("==", 0),
    "burst_not_2xx": ("==", 0),
    "burst_lost": ("==", 0),
    "burst_duplicated": ("==", 0),
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """utime and stime of every thread of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    return sum(cpu_times(pid))


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_json_process(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """Start a helper that prints one JSON line with its ``port``; wait at most 20 s."""
    process = subprocess.Popen(  # noqa: S603 (our own helper scripts)
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    line = process.stdout.readline()
    if not line or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"{command} did not start")
    return process, int(json.loads(line)["port"])


def stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class LogWatch:
    """
    Whether a log file has had ``text`` written to it since the watch began,
    read as it grows. twistd rotates its log file at 1 MB (the old one
    becomes ``<name>.1``): the rest of the old file is read, then the new one.
    """

    def __init__(self, path: Path, text: bytes) -> None:
        self.path = path
        self.text = text
        status = path.stat() if path.exists() else None
        self.inode = status.st_ino if status else None
        self.offset = status.st_size if status else 0
        self.tail = b""
        self.found = False

    def _read(self, path: Path, offset: int) -> bytes:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read()

    def seen(self) -> bool:
        if self.found or not self.path.exists():
            return self.found
        data = b""
        inode = self.path.stat().st_ino
        if inode != self.inode:
            rotated = self.path.with_name(self.path.name + ".1")
            if self.inode is not None and rotated.exists() and rotated.stat().st_ino == self.inode:
                data = self._read(rotated, self.offset)
            self.inode, self.offset = inode, 0
        new = self._read(self.path, self.offset)
        self.offset += len(new)
        window = self.tail + data + new
        self.found = self.text in window
        self.tail = window[-len(self.text) :]
        return self.found


# The gateway's line when its spool starts refusing deliveries (stores/spool/spooled.py).
SPOOL_FULL = b"The spool is full"


def gateway_env(workdir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "BRIGADE_NAMESPACE")
    }
    env["HOME"] = str(workdir)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def gateway_help() -> str:
    """``twistd brigade-cr --help`` of this repository's gateway."""
    with tempfile.TemporaryDirectory() as directory:
        answer = subprocess.run(  # noqa: S603 (this interpreter, fixed arguments)
            [sys.executable, "-c", TWISTD, "brigade-cr", "--help"],
            env=gateway_env(Path(directory)),
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
    return answer.stdout


def configurations(help_text: str) -> list[dict[str, Any]]:
    """
    "no spool" and "spool", whichever the installed gateway supports, each
    marked ``defaults`` when it is what the gateway does with no flag.
    """
    spool_is_default = "--no-spool" in help_text
    if not spool_is_default and "--spool" not in help_text:
        raise SystemExit("bench: the gateway's --help names neither --spool nor --no-spool")
    no_spool = {"label": "no spool", "args": ["--no-spool"] if spool_is_default else [], "spool": False}
    spool = {"label": "spool", "args": ["--spool", "{spool}"], "spool": True}
    no_spool["defaults"] = not spool_is_default
    spool["defaults"] = spool_is_default
    return [no_spool, spool]


class Gateway:
    """A ``twistd -n brigade-cr`` process logging to a file in ``workdir``."""

    def __init__(self, args: list[str], workdir: Path, standin_port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "bench", "cluster": {"server": f"http://127.0.0.1:{standin_port}"}}],
                    "users": [{"name": "bench", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
                    "current-context": "bench",
                }
            )
        )
        self.log_path = workdir / "gateway.log"
        args = [arg.replace("{spool}", str(workdir / "spool")) for arg in args]
        self.command = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "brigade-cr",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            NAMESPACE,
            *args,
        ]
        self.process = subprocess.Popen(  # noqa: S603 (this interpreter running twistd)
            self.command, cwd=workdir, env=gateway_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes() if self.log_path.exists() else b""
            match = _LISTENING.search(text)
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        stop(self.process)
        raise RuntimeError(f"gateway did not start: {text.decode(errors='replace')[-2000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def watch(self, text: bytes) -> LogWatch:
        """A watch for ``text`` in the lines the gateway logs from now on."""
        return LogWatch(self.log_path, text)

    def stop(self) -> None:
        stop(self.process)


# --- the stand-in's counters -------------------------------------------------


def standin_get(port: int, path: str, body: bytes | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def stats(port: int) -> dict[str, Any]:
    return standin_get(port, "/_bench/stats")  # type: ignore[no-any-return]


def api_calls(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """API requests by verb between two snapshots (unauthorized ones included)."""
    verbs = set(before["calls"]) | set(after["calls"])
    return {
        verb: after["calls"].get(verb, 0) - before["calls"].get(verb, 0)
        for verb in sorted(verbs)
        if after["calls"].get(verb, 0) != before["calls"].get(verb, 0)
    }


def wait_quiet(port: int, bound: float, settle: float = 2.0) -> tuple[dict[str, Any], bool]:
    """Poll until the build count has not moved for ``settle`` s (at most ``bound`` s)."""
    deadline = time.monotonic() + bound
    last = stats(port)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = stats(port)
        if now["builds"] != last["builds"]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now, True
    return stats(port), False


# --- load generation ---------------------------------------------------------


def webhook_path() -> str:
    return f"/events/webhook/{PROJECT}?token={PROJECT_SECRET}"


def delivery_body(tag: str, n: int) -> bytes:
    """A distinct Docker Hub push (the same shape as bench/delivery.lua's)."""
    return json.dumps(
        {
            "callback_url": "https://registry.hub.docker.com/u/bench/app/hook/0f1e2d3c/",
            "push_data": {"pushed_at": 1767225600 + n, "pusher": "bench", "tag": tag, "images": []},
            "repository": {"repo_name": "bench/app", "name": "app", "namespace": "bench"},
        }
    ).encode()


def wrk_command(port: int, path: str, duration: float, connections: int, run_tag: str, timeout: float) -> list[str]:
    return [
        WRK,
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        f"{round(timeout)}s",
        "-s",
        str(BENCH / "delivery.lua"),
        f"http://127.0.0.1:{port}{path}",
        "--",
        path,
        run_tag,
    ]


def wrk_summary(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("BENCH-JSON "):
            summary: dict[str, Any] = json.loads(line[len("BENCH-JSON ") :])
            summary["acks"] = summary["requests"] - summary["status_errors"]
            summary["seconds"] = summary["duration_us"] / 1e6
            return summary
    raise RuntimeError(f"no summary from wrk:\n{output}")


def run_wrk(
    port: int, path: str, duration: float, run_tag: str, connections: int = 32, watch: LogWatch | None = None
) -> dict[str, Any]:
    """
    wrk for ``duration`` seconds; its summary (requests, acks, latency in µs).
    With ``watch``, wrk is stopped (SIGINT: it prints its summary, the
    seconds it ran) as soon as the watched line is logged: a run sized by
    time must not measure the spool's refusals once it is full, at a drain
    of 50/s, instead of the gateway's acknowledgements. ``stopped_early``
    says whether it was.
    """
    command = wrk_command(port, path, duration, connections, run_tag, timeout=60)
    if watch is None:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)  # noqa: S603
        return {**wrk_summary(answer.stdout), "stopped_early": False}
    output, stopped = _wrk_until(command, watch.seen, duration + 120, 0.05)
    return {**wrk_summary(output), "stopped_early": stopped}


def _wrk_until(command: list[str], done: Callable[[], bool], bound: float, poll: float) -> tuple[str, bool]:
    """
    Run wrk ``command`` until it ends, ``done()`` is true (checked every
    ``poll`` seconds) or ``bound`` seconds pass; stopped by SIGINT (wrk then
    prints its summary of the seconds it ran). Its output, and whether
    ``done()`` stopped it.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603 (wrk, found on PATH)
    started = time.monotonic()
    stopped = False
    while process.poll() is None and time.monotonic() - started < bound:
        if done():
            stopped = True
            break
        time.sleep(poll)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    return output, stopped


def run_wrk_until(
    port: int, path: str, standin: int, builds: int, budget: float, run_tag: str
) -> tuple[dict[str, Any], int, float]:
    """
    wrk until ``builds`` more builds exist at the stand-in or ``budget``
    seconds pass (then SIGINT: wrk stops and prints its summary). Returns the
    summary, the builds created and the seconds taken.
    """
    start_builds = stats(standin)["builds"]
    started = time.monotonic()
    output, _ = _wrk_until(
        wrk_command(port, path, budget + 60, 32, run_tag, timeout=60),
        lambda: stats(standin)["builds"] - start_builds >= builds,
        budget,
        0.5,
    )
    return wrk_summary(output), stats(standin)["builds"] - start_builds, time.monotonic() - started


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> tuple[int, bytes]:
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    code = int(head[0].split(" ", 2)[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        content = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            content += await reader.readexactly(size + 2)
            del content[-2:]
        return code, bytes(content)
    return code, await reader.readexactly(int(headers.get("content-length", "0")))


class Pool:
    """Keep-alive connections to one port, opened on demand up to ``size``."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[float, int, bytes]:
        """
        One POST; (seconds from the moment a connection was free to the
        answer, status, body). Status 0: the connection failed or timed out.
        """
        async with self.slots:
            sent = time.monotonic()
            connection = self.idle.pop() if self.idle else None
            try:
                if connection is None:
                    connection = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), timeout)
                code, content = await asyncio.wait_for(_exchange(*connection, path, body), timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                if connection is not None:
                    connection[1].close()
                return sent, 0, b""
            self.idle.append(connection)
            return sent, code, content

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _paced(port: int, path: str, rate: float, count: int, run_tag: str) -> list[tuple[float, int]]:
    """Open loop: request i is due at start + i/rate; latency counts from when it was due."""
    pool = Pool(port, 256)
    start = time.monotonic() + 0.1

    async def one(i: int) -> tuple[float, int]:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        _, code, _ = await pool.post(path, delivery_body(f"{run_tag}-{i}", i), 60)
        return time.monotonic() - due, code

    results = await asyncio.gather(*(one(i) for i in range(count)))
    pool.close()
    return list(results)


def paced(port: int, path: str, rate: float, seconds: float, run_tag: str) -> dict[str, Any]:
    """Half-rate latency: p50/p99 of acknowledged requests, from when each was due."""
    count = max(20, min(int(rate * seconds), 20_000))
    started = time.monotonic()
    results = asyncio.run(_paced(port, path, rate, count, run_tag))
    seconds = time.monotonic() - started - 0.1
    latencies = sorted(latency for latency, code in results if 200 <= code < 300)
    return {
        "rate": rate,
        "requests": count,
        "acks": len(latencies),
        # Below the asked rate: the gateway fell behind (the machine got busier?).
        "achieved_per_s": count / seconds,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
    }


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of sorted ``values``."""
    rank = max(1, min(len(values), -(-len(values) * p // 100)))
    return values[int(rank) - 1]


async def _burst(port: int, path: str, count: int, connections: int, run_tag: str) -> tuple[float, list[Any]]:
    pool = Pool(port, connections)
    start = time.monotonic()

    async def one(i: int) -> tuple[float, float, int, bytes]:
        sent, code, content = await pool.post(path, delivery_body(f"{run_tag}-{i}", i), 120)
        return sent - start, time.monotonic() - start, code, content

    results = await asyncio.gather(*(one(i) for i in range(count)))
    pool.close()
    return start, list(results)


def burst(gateway: Gateway, standin: int, count: int, run_tag: str, bound: float) -> dict[str, Any]:
    """``count`` distinct deliveries over 100 connections, then wait (at most ``bound`` s) for their builds."""
    before = stats(standin)
    cpu_before = cpu_seconds(gateway.pid)
    started_wall = time.monotonic()
    start, results = asyncio.run(_burst(gateway.port, webhook_path(), count, 100, run_tag))
    acked = [r for r in results if 200 <= r[2] < 300]
    names: list[str] = []
    duplicates = 0
    for _, _, _, content in acked:
        try:
            answer = json.loads(content)
        except ValueError:
            continue
        names.append(answer.get("build_id", ""))
        duplicates += answer.get("duplicate") is True
    duplicates += len(names) - len(set(names))
    deadline = started_wall + bound
    all_built_s = None
    while time.monotonic() < deadline:
        if stats(standin)["builds"] - before["builds"] >= count:
            all_built_s = time.monotonic() - start
            break
        time.sleep(0.1)
    after, _ = wait_quiet(standin, 5, settle=1.0)
    missing = standin_get(standin, "/_bench/missing", json.dumps([NAMESPACE, *set(names)]).encode())
    built = after["builds"] - before["builds"]
    calls = api_calls(before, after)
    return {
        "deliveries": count,
        "connections": 100,
        "last_ack_s": max(r[1] for r in results),
        "over_5s": sum(1 for r in results if r[1] - r[0] > 5),
        "not_2xx": count - len(acked),
        "statuses": {str(code): sum(1 for r in results if r[2] == code) for code in sorted({r[2] for r in results})},
        "all_built_s": all_built_s,
        "built": built,
        "lost": len(missing) + max(0, len(acked) - len(names)),
        "duplicated": duplicates + (after["codes"].get("409", 0) - before["codes"].get("409", 0)),
        "api_calls": calls,
        "api_calls_per_delivery": sum(calls.values()) / built if built else None,
        "api_connections": after["connections"] - before["connections"],
        "cpu_ms_per_delivery": (cpu_seconds(gateway.pid) - cpu_before) * 1000 / built if built else None,
    }


# --- measurements ------------------------------------------------------------


def standin_capacity(port: int, seconds: float) -> float:
    """Requests/s the stand-in answers (GET of the project, 32 connections)."""
    answer = subprocess.run(  # noqa: S603 (wrk, found on PATH)
        [
            WRK,
            "-t",
            "2",
            "-c",
            "32",
            "-d",
            f"{max(1, round(seconds))}s",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            f"http://127.0.0.1:{port}/api/v1/namespaces/{NAMESPACE}/secrets/{project_id(PROJECT)}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", answer.stdout)
    if not match:
        raise RuntimeError(f"wrk against the stand-in:\n{answer.stdout}{answer.stderr}")
    return float(match.group(1))


def baseline(seconds: float) -> dict[str, Any]:
    process, port = start_json_process([sys.executable, str(BENCH / "baseline_server.py")])
    try:
        run_wrk(port, "/", 1, "warm-baseline")
        cpu = cpu_seconds(process.pid)
        summary = run_wrk(port, webhook_path(), seconds, "baseline")
        cpu = cpu_seconds(process.pid) - cpu
    finally:
        stop(process)
    return {
        "requests_per_s": summary["acks"] / summary["seconds"],
        "p50_ms": summary["latency_us"]["p50"] / 1000,
        "p99_ms": summary["latency_us"]["p99"] / 1000,
        "cpu_ms_per_request": cpu * 1000 / summary["acks"],
        "wrk": summary,
    }


def measure(
    config: dict[str, Any], standin: int, args: argparse.Namespace, workroot: Path, nonce: str
) -> dict[str, Any]:
    label = config["label"]
    tag = nonce + "-" + label.replace(" ", "")
    say(f"== gateway, {label}{' (defaults)' if config['defaults'] else ''}: {' '.join(config['args']) or '(no flags)'}")
    result: dict[str, Any] = {"label": label, "defaults": config["defaults"], "args": config["args"]}
    gateway = Gateway(config["args"], workroot / tag, standin)
    result["command"] = gateway.command
    try:
        time.sleep(0.5)
        result["rss_start_mb"] = rss_mb(gateway.pid)
        # Warm up: the project read once, connections made; then steady state.
        codes = [asyncio.run(_paced(gateway.port, webhook_path(), 20, 1, f"{tag}-warm{i}"))[0][1] for i in range(10)]
        result["warmup_statuses"] = codes
        wait_quiet(standin, args.settle_bound)
        before, cpu = stats(standin), cpu_seconds(gateway.pid)
        profile = None
        if args.profile:
            profile = start_profile(gateway.pid, args.duration, workroot / f"{tag}.raw")
        say(f"   wrk, 32 connections, {args.duration:g} s")
        summary = run_wrk(gateway.port, webhook_path(), args.duration, tag, watch=gateway.watch(SPOOL_FULL))
        after, drained = wait_quiet(standin, args.settle_bound)
        cpu = cpu_seconds(gateway.pid) - cpu
        if profile is not None:
            result["profile"] = finish_profile(profile, workroot / f"{tag}.raw", args.results / f"profile-{tag}")
        built = after["builds"] - before["builds"]
        calls = api_calls(before, after)
        result.update(
            acks_per_s=summary["acks"] / summary["seconds"],
            p50_ms=summary["latency_us"]["p50"] / 1000,
            p99_ms=summary["latency_us"]["p99"] / 1000,
            wrk=summary,
            built=built,
            drained=drained,
            api_calls=calls,
            api_calls_per_delivery=sum(calls.values()) / built if built else None,
            # New TCP connections to the API: each one is a handshake (TLS, in a cluster).
            api_connections=after["connections"] - before["connections"],
            cpu_ms_per_delivery=cpu * 1000 / built if built else None,
            cpu_ms_per_ack=cpu * 1000 / summary["acks"] if summary["acks"] else None,
        )
        rate = max(1.0, result["acks_per_s"] / 2)
        # No longer than the full rate took to fill the spool (if it did): at
        # half the rate that fits in it, so every answer is an acknowledgement.
        half_seconds = min(args.duration, summary["seconds"]) if summary["stopped_early"] else args.duration
        say(f"   paced at half rate ({rate:.1f}/s) for {half_seconds:.1f} s")
        result["half_rate"] = paced(gateway.port, webhook_path(), rate, half_seconds, f"{tag}-half")
        wait_quiet(standin, args.settle_bound)
        say(f"   up to {args.rss_deliveries} deliveries for RSS (budget {args.rss_budget:g} s)")
        summary, built, seconds = run_wrk_until(
            gateway.port, webhook_path(), standin, args.rss_deliveries, args.rss_budget, f"{tag}-rss"
        )
        wait_quiet(standin, args.settle_bound)
        result["rss_after_mb"] = rss_mb(gateway.pid)
        result["rss_deliveries"] = built
        result["rss_seconds"] = seconds
        result["total_deliveries"] = stats(standin)["builds"]
    finally:
        gateway.stop()
    say(f"   burst of {args.burst} over 100 connections, fresh gateway")
    gateway = Gateway(config["args"], workroot / f"{tag}-burst", standin)
    try:
        time.sleep(0.5)
        asyncio.run(_paced(gateway.port, webhook_path(), 20, 1, f"{tag}-burstwarm"))
        wait_quiet(standin, args.settle_bound)
        result["burst"] = burst(gateway, standin, args.burst, f"{tag}-burst", args.burst_bound)
    finally:
        gateway.stop()
    return result


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        say("   (no py-spy: no profile)")
        return None
    return subprocess.Popen(  # noqa: S603 (py-spy of this virtualenv)
        [
            spy,
            "record",
            "--function",
            "--pid",
            str(pid),
            "--duration",
            str(round(seconds)),
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def finish_profile(process: subprocess.Popen[bytes] | None, raw: Path, prefix: Path) -> dict[str, Any] | None:
    """
    The top functions of a py-spy raw (collapsed stacks) profile of the
    reactor thread, by own and total samples (thread-pool threads waiting
    for work are left out).
    """
    if process is None:
        return None
    process.wait(60)
    if not raw.exists():
        return None
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [re.sub(r" \(.*?/(site-packages|brigade_cr|lib/python[\d.]+)/", r" (\1/", f) for f in stack.split(";")]
        if not any(frame.startswith("ReactorBase.mainLoop ") for frame in frames):
            other += count
            continue
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    prefix.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, prefix.with_suffix(".txt"))

    def top(table: dict[str, int]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / samples, 1)) for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:25]]

    return {
        "samples": samples,
        "other_thread_samples": other,
        "own_pct": top(own),
        "total_pct": top(total),
        "raw": str(prefix.with_suffix(".txt")),
    }


# --- report ------------------------------------------------------------------


def check(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, target = TARGETS[key]
    ok = {">=": value >= target, "<=": value <= target, "==": round(value, 2) == target}[op]
    return "pass" if ok else "FAIL"


def figures(result: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue names, for one configuration."""
    b = result["burst"]
    cpu = result["cpu_ms_per_delivery"]
    return {
        "baseline_per_s": base["requests_per_s"],
        "baseline_cpu_ms": base["cpu_ms_per_request"],
        "steady_seconds": result["wrk"]["seconds"],
        "acks_per_s": result["acks_per_s"],
        "acks_ratio": result["acks_per_s"] / base["requests_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "p99_half_ms": result["half_rate"]["p99_ms"],
        "cpu_ms_per_delivery": cpu,
        "cpu_ratio": cpu / base["cpu_ms_per_request"] if cpu is not None else None,
        "api_calls_per_delivery": result["api_calls_per_delivery"],
        "api_connections_per_delivery": (
            result["api_connections"] / result["built"] if result["built"] and "api_connections" in result else None
        ),
        "rss_start_mb": result["rss_start_mb"],
        "rss_after_mb": result["rss_after_mb"],
        "rss_deliveries": result["rss_deliveries"],
        "burst_last_ack_s": b["last_ack_s"],
        "burst_over_5s": b["over_5s"],
        "burst_not_2xx": b["not_2xx"],
        "burst_lost": b["lost"],
        "burst_duplicated": b["duplicated"],
        "burst_all_built_s": b["all_built_s"],
    }


ROWS = [
    ("baseline_per_s", "baseline requests/s (run just before)", "{:.0f}", None),
    ("baseline_cpu_ms", "baseline CPU per request (ms)", "{:.3f}", None),
    ("steady_seconds", "full-load run (s; shorter: spool filled)", "{:.1f}", None),
    ("acks_per_s", "acknowledged deliveries/s (32 conns)", "{:.1f}", None),
    ("acks_ratio", "  ratio to baseline requests/s", "{:.3f}x", ">= 0.25x"),
    ("p50_ms", "p50 ack latency, full load (ms)", "{:.1f}", None),
    ("p99_ms", "p99 ack latency, full load (ms)", "{:.1f}", None),
    ("p99_half_ms", "p99 ack latency, half rate (ms)", "{:.1f}", "<= 50 ms"),
    ("cpu_ms_per_delivery", "gateway CPU per delivery (ms)", "{:.3f}", None),
    ("cpu_ratio", "  ratio to baseline CPU/request", "{:.1f}x", "<= 5x"),
    ("api_calls_per_delivery", "Kubernetes API calls per delivery", "{:.2f}", "1.00"),
    ("api_connections_per_delivery", "  new API connections per delivery", "{:.3f}", None),
    ("rss_start_mb", "RSS at start (MiB)", "{:.1f}", None),
    ("rss_deliveries", "deliveries in the RSS phase", "{}", "100000"),
    ("rss_after_mb", "RSS after the RSS phase (MiB)", "{:.1f}", "<= 80 MB after 100k"),
    ("burst_last_ack_s", "burst: last ack (s)", "{:.2f}", "<= 5 s"),
    ("burst_over_5s", "burst: acks over 5 s", "{}", "0"),
    ("burst_not_2xx", "burst: not 2xx", "{}", "0"),
    ("burst_lost", "burst: lost", "{}", "0"),
    ("burst_duplicated", "burst: duplicated", "{}", "0"),
    ("burst_all_built_s", "burst: every build exists (s)", "{:.1f}", None),
]


def table(report: dict[str, Any]) -> str:
    base = report["baseline"]
    configs = report["gateway"]
    columns = [f"{c['label']}{' (defaults)' if c['defaults'] else ''}" for c in configs]
    width = max(18, *(len(c) + 2 for c in columns))
    lines = [
        f"baseline (bare twisted.web), first run: {base['requests_per_s']:.0f} requests/s, p50 {base['p50_ms']:.1f} "
        f"ms, p99 {base['p99_ms']:.1f} ms, {base['cpu_ms_per_request']:.3f} ms CPU/request (each column's ratios are "
        "to the run just before it)",
        f"Kubernetes API stand-in: {report['standin_capacity_per_s']:.0f} requests/s (GET, 32 connections)",
        f"wrk runs {report['options']['duration']:g} s; burst of {report['options']['burst']} deliveries "
        f"over 100 connections; load average at start {report['machine']['load_average_at_start']}",
        "",
        f"{'':40}" + "".join(f"{c:>{width}}" for c in columns) + f"  {'target (defaults)':<22} defaults",
    ]
    for key, name, fmt, target in ROWS:
        cells = []
        verdict = ""
        for config in configs:
            value = config["figures"][key]
            cells.append("n/a" if value is None else fmt.format(value))
            if config["defaults"] and key in TARGETS:
                verdict = check(key, value)
        lines.append(f"{name:40}" + "".join(f"{c:>{width}}" for c in cells) + f"  {target or '':<22} {verdict}")
    for config in configs:
        b = config["burst"]
        lines.append(
            f"[{config['label']}] steady: {config['wrk']['requests']} answers "
            f"({config['wrk']['status_errors']} not 2xx; stopped when the spool filled: "
            f"{config['wrk']['stopped_early']}), {config['built']} builds, "
            f"API calls {config['api_calls']}, drained {config['drained']}; "
            f"half rate {config['half_rate']['rate']:.1f}/s asked, {config['half_rate']['achieved_per_s']:.1f}/s "
            f"achieved ({config['half_rate']['acks']}/{config['half_rate']['requests']} acked); RSS phase "
            f"{config['rss_deliveries']} deliveries in {config['rss_seconds']:.0f} s; burst statuses {b['statuses']}, "
            f"{b['built']} built, API calls {b['api_calls']}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    ram = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    import treq

    import twisted

    wrk = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split("\n")[0]  # noqa: S603
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(int(ram) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "treq": treq.__version__,  # type: ignore[attr-defined]
        "wrk": wrk.strip(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, 20k deliveries for RSS (for development)")
    parser.add_argument("--duration", type=float, help="seconds of each wrk run (default 10, --quick 3)")
    parser.add_argument("--rss-deliveries", type=int, help="deliveries before RSS is read again (100k; --quick 20k)")
    parser.add_argument("--rss-budget", type=float, help="seconds the RSS phase may take at most (300; --quick 30)")
    parser.add_argument("--burst", type=int, default=500, help="deliveries in the burst (500)")
    parser.add_argument("--burst-bound", type=float, default=180, help="seconds to wait for the burst's builds (180)")
    parser.add_argument("--settle-bound", type=float, default=240, help="seconds to wait for a backlog to drain (240)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="LABEL=ARGS",
        help="an extra gateway configuration, e.g. 'no limit=--kube-qps 100000 --kube-burst 100000'",
    )
    parser.add_argument("--only", action="append", default=[], metavar="LABEL", help="run only these configurations")
    parser.add_argument("--profile", action="store_true", help="py-spy record each gateway's steady run")
    parser.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a file")
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="directory of the JSON report")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rss_deliveries = args.rss_deliveries or (20_000 if args.quick else 100_000)
    args.rss_budget = args.rss_budget or (30.0 if args.quick else 300.0)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    nonce = started.strftime("%H%M%S") + secrets.token_hex(2)
    configs = configurations(gateway_help())
    for extra in args.config:
        label, _, extra_args = extra.partition("=")
        configs.append({"label": label, "args": extra_args.split(), "spool": False, "defaults": False})
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }
    if args.only:
        configs = [config for config in configs if config["label"] in args.only]
    say(f"bench: {len(configs)} gateway configurations; the targets apply to the defaults")
    standin_process, standin = start_json_process(
        [
            sys.executable,
            str(BENCH / "kube_standin.py"),
            "--token",
            TOKEN,
            "--namespace",
            NAMESPACE,
            "--project",
            f"{PROJECT}={PROJECT_SECRET}",
        ]
    )
    try:
        say("== Kubernetes API stand-in capacity")
        report["standin_capacity_per_s"] = standin_capacity(standin, min(args.duration, 3))
        with tempfile.TemporaryDirectory(prefix="bench-") as workroot:
            report["gateway"] = []
            for config in configs:
                say(f"== baseline: bare twisted.web, just before {config['label']}")
                adjacent = baseline(args.duration)
                report.setdefault("baseline", adjacent)
                result = measure(config, standin, args, Path(workroot), nonce)
                result["baseline"] = adjacent
                result["figures"] = figures(result, adjacent)
                report["gateway"].append(result)
    finally:
        stop(standin_process)
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(table(report), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / (started.strftime("%Y-%m-%dT%H%M%SZ") + ".json")
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nall figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
