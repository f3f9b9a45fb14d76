"""
A real ``twistd -n brigade-cr`` process on loopback, for end-to-end tests.

The process is the installed package's plugin run by this interpreter, so a
test run from tox exercises exactly what ``pip install .`` installed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
_LISTENING = re.compile(rb"BrigadeSite(?: \(PROXY\))? starting on (\d+)")
_METRICS_LISTENING = re.compile(rb"\] ScrapeSite starting on (\d+)")


def _invocation(
    args: Sequence[str], workdir: Path, environ: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    """
    The command line and environment of ``twistd -n --pidfile= brigade-cr
    --port tcp:0:interface=127.0.0.1 ARGS`` in ``workdir``: a clean
    environment (HOME=workdir, no KUBECONFIG, not in a cluster) plus ``environ``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "BRIGADE_NAMESPACE")
    }
    env["HOME"] = str(workdir)
    env.update(environ or {})
    command = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "brigade-cr",
        "--port",
        "tcp:0:interface=127.0.0.1",
        *args,
    ]
    return command, env


@attrs.define
class Response:
    """An HTTP answer: status, lower-cased headers, body and the body as JSON if it is."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        assert self.body.endswith(b"\n"), self.body
        return json.loads(self.body)


@attrs.define
class GatewayProcess:
    """A running gateway; its whole log goes to ``log_path``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        workdir: Path,
        environ: Mapping[str, str] | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> GatewayProcess:
        """
        Run ``twistd -n --pidfile= brigade-cr --port tcp:0:interface=127.0.0.1
        ARGS`` in ``workdir`` with a clean environment (HOME=workdir, no
        KUBECONFIG, not in a cluster) plus ``environ``, and wait at most
        ``timeout`` seconds until it listens.
        """
        spawned = spawn(args, workdir, environ)
        process, log_path = spawned.process, spawned.log_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(log_path.read_bytes())
            if match:
                return cls(process, int(match.group(1)), log_path)
            if process.poll() is not None:
                break
            time.sleep(0.05)
        process.kill()
        process.wait(10)
        raise RuntimeError(f"gateway did not start:\n{log_path.read_text(errors='replace')}")

    @property
    def log(self) -> str:
        """Everything the gateway has logged so far."""
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Response:
        """One HTTP request on a fresh connection, bounded by REQUEST_TIMEOUT."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            answer = connection.getresponse()
            return Response(
                answer.status,
                {name.lower(): value for name, value in answer.getheaders()},
                answer.read(),
            )
        finally:
            connection.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("POST", path, body, headers)

    @property
    def metrics_port(self) -> int:
        """The port of the --metrics listener (a plain twisted.web Site)."""
        match = _METRICS_LISTENING.search(self.log_path.read_bytes())
        assert match, "no metrics listener in the log"
        return int(match.group(1))

    def kill(self) -> int:
        """SIGKILL: no chance to flush or clean up."""
        self.process.kill()
        return self.process.wait(15)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


@attrs.frozen
class Finished:
    """A gateway process that ran to its end: its exit status and everything it printed."""

    returncode: int
    output: str


def run_to_completion(
    args: Sequence[str],
    workdir: Path,
    environ: Mapping[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Finished:
    """
    Run ``twistd -n --pidfile= brigade-cr --port tcp:0:interface=127.0.0.1
    ARGS`` as ``GatewayProcess.start`` does (a later ``--port`` in ``ARGS``
    wins) and wait at most ``timeout`` seconds for it to exit by itself;
    one that does not is killed and fails the test.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    command, env = _invocation(args, workdir, environ)
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"gateway did not exit within {timeout}s:\n{e.output!r}") from None
    return Finished(done.returncode, done.stdout.decode(errors="replace"))


@attrs.define
class Spawned:
    """A gateway process started with ``spawn``, that need not listen (``--drain-only``); its log in ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait at most ``timeout`` seconds for ``text`` in the log; fail (killing it) if it does not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        self.process.wait(10)
        raise AssertionError(f"{text!r} never logged:\n{self.log}")

    def terminate(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """SIGTERM, then wait at most ``timeout`` seconds for the exit (SIGKILL and fail after); the exit code."""
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"gateway did not exit within {timeout}s of SIGTERM:\n{self.log}") from None


def spawn(args: Sequence[str], workdir: Path, environ: Mapping[str, str] | None = None) -> Spawned:
    """Start the process ``run_to_completion`` would run, without waiting for anything."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "gateway.log"
    command, env = _invocation(args, workdir, environ)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return Spawned(process, log_path)
