"""
pytest fixtures giving tests a Kubernetes API to talk to.

C{kube_target} is parametrised over two targets, so a contract test runs
against both and stays target-agnostic by using only the official
Kubernetes client (or kubectl) through L{KubeTarget}:

  - C{fake}: C{python -m tests.kubeapi} as a subprocess, on loopback TLS
    with a bearer token (one process per test session, started with a
    bounded wait and killed at the end; each test gets its own label and
    unique names, and its Secrets are deleted afterwards);
  - C{real}: the cluster named by the kubeconfig in
    C{$BRIGADE_CR_TEST_KUBECONFIG}, in namespace
    C{$BRIGADE_CR_TEST_NAMESPACE} (default C{default}); skipped when the
    variable is unset.  Every Secret a test creates through
    L{KubeTarget.seed_secret} or labels with L{KubeTarget.labels} carries
    C{brigade-cr-test=<random>} and is deleted at teardown.

C{served_fake_kube} is for pytest-twisted tests: a L{FakeKube} served on
loopback TLS in the test reactor, yielding C{(fake, served)}.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import pytest
import pytest_twisted
from attrs import Factory, define

from tests.slow import starts_process

__all__ = [
    "ENV_KUBECONFIG",
    "ENV_NAMESPACE",
    "TEST_LABEL",
    "ControlError",
    "FakeKubeProcess",
    "KubeTarget",
    "fake_kube_process",
    "kube_target",
    "served_fake_kube",
]

ENV_KUBECONFIG = "BRIGADE_CR_TEST_KUBECONFIG"
ENV_NAMESPACE = "BRIGADE_CR_TEST_NAMESPACE"
TEST_LABEL = "brigade-cr-test"
OTHER_NAMESPACE = "brigade-cr-other"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST_TIMEOUT = 10.0  # seconds, for every client call made here

# Loopback only: never through an HTTP proxy from the environment.
_CONTROL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ControlError(Exception):
    """
    The fake's control endpoint refused a call.

    @ivar code: the HTTP status.
    @ivar body: the decoded JSON answer (C{{"error": message}}).
    """

    def __init__(self, code: int, body: Any) -> None:
        super().__init__(f"control endpoint answered {code}: {body}")
        self.code = code
        self.body = body


@define
class FakeKubeProcess:
    """
    A running C{python -m tests.kubeapi} process (TLS on 127.0.0.1).

    Its faults and listening state are driven through its control endpoint
    (see C{tests.kubeapi.FakeKubeControl} for the JSON shapes) with
    L{add_fault}, L{faults}, L{remove_fault}, L{clear_faults},
    L{set_listening}, L{secrets}, L{calls} and L{reset_calls}: synchronous,
    C{urllib}, each bounded by C{REQUEST_TIMEOUT}.

    @ivar info: the JSON line it printed (C{url}, C{ca}, C{kubeconfig},
        C{client_cert}, C{client_key}, C{port}, C{control_url}, C{pid}).
    """

    process: subprocess.Popen[bytes]
    cert_dir: str
    token: str
    namespaces: tuple[str, ...]
    info: Mapping[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def ca_path(self) -> str:
        return str(self.info["ca"])

    @property
    def kubeconfig(self) -> str:
        return str(self.info["kubeconfig"])

    @property
    def namespace(self) -> str:
        return self.namespaces[0]

    @property
    def stderr_path(self) -> str:
        return os.path.join(self.cert_dir, "kubeapi.stderr")

    @property
    def port(self) -> int:
        """The API's TCP port (the same after L{set_listening})."""
        return int(self.info["port"])

    @property
    def control_url(self) -> str:
        """C{http://127.0.0.1:PORT} of the control endpoint."""
        return str(self.info["control_url"])

    # -- control endpoint --------------------------------------------------

    def control(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        """
        Call the control endpoint: send C{body} as JSON, return the decoded
        JSON answer.

        @raise ControlError: for an HTTP error answer.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.control_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with _CONTROL_OPENER.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                raw = e.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = raw.decode("utf-8", "replace")
            raise ControlError(e.code, answer) from None

    def add_fault(self, kind: str, first: bool = False, **params: Any) -> dict[str, Any]:
        """
        Add a fault (C{kind} is a C{tests.kubeapi.FAULT_KINDS} name,
        C{params} its constructor's: e.g.
        C{add_fault("error_storm", code=503, times=3, verbs=["create"])});
        return its description (C{id}, C{fired}, parameters).
        """
        answer: dict[str, Any] = self.control("POST", "/faults", {"kind": kind, "first": first, **params})
        return answer

    def faults(self) -> list[dict[str, Any]]:
        """The faults in order, each with its C{fired} count."""
        faults: list[dict[str, Any]] = self.control("GET", "/faults")["faults"]
        return faults

    def hanging(self) -> int:
        """How many requests a C{hang} or C{reset} fault holds open."""
        return int(self.control("GET", "/faults")["hanging"])

    def remove_fault(self, fault_id: int) -> None:
        """Remove the fault with this C{id}."""
        self.control("DELETE", f"/faults/{int(fault_id)}")

    def clear_faults(self) -> int:
        """Remove every fault; return how many there were."""
        return int(self.control("DELETE", "/faults")["removed"])

    def set_listening(self, listening: bool, cut_connections: bool = True) -> None:
        """
        Stop listening on the API port (connections are refused; open ones
        are aborted unless C{cut_connections} is false) or listen again on
        the same port.  Returns once done.
        """
        answer = self.control("POST", "/listening", {"listening": listening, "cut_connections": cut_connections})
        if answer["listening"] is not listening:
            raise ControlError(200, answer)

    def secrets(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored Secrets (of C{namespace}, or all), read without the API."""
        query = "?" + urllib.parse.urlencode({"namespace": namespace}) if namespace is not None else ""
        items: list[dict[str, Any]] = self.control("GET", "/secrets" + query)["items"]
        return items

    def calls(self) -> list[dict[str, Any]]:
        """
        Every request the API port received, oldest first: dicts with
        C{method}, C{path}, C{kind}, C{verb}, C{namespace}, C{name},
        C{authenticated}, C{query} (the decoded query parameters).
        """
        calls: list[dict[str, Any]] = self.control("GET", "/calls")["calls"]
        return calls

    def count(self, **criteria: Any) -> int:
        """
        How many recorded requests match every C{key=value} given (keys of
        a L{calls} dict, e.g. C{count(verb="create", namespace="ns")}).
        """
        return sum(1 for call in self.calls() if all(call.get(k) == v for k, v in criteria.items()))

    def calls_by_verb(self) -> dict[str, int]:
        """Recorded requests per Kubernetes verb (discovery and unknown paths left out)."""
        counts: dict[str, int] = self.control("GET", "/calls")["by_verb"]
        return counts

    def reset_calls(self) -> int:
        """Forget the recorded requests; return how many there were."""
        return int(self.control("DELETE", "/calls")["removed"])

    @classmethod
    def start(
        cls,
        cert_dir: str,
        token: str | None = None,
        namespaces: Sequence[str] = ("default",),
        seeds: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> FakeKubeProcess:
        """
        Start the fake and wait (at most C{timeout} seconds) for its JSON
        line.  The process exits by itself if our end of its stdin closes,
        so it cannot outlive the test run.

        @raise RuntimeError: if it exits or stays silent too long (it is
            killed first; its stderr is in the message).
        """
        os.makedirs(cert_dir, exist_ok=True)
        token = token or secrets.token_urlsafe(24)
        args = [
            sys.executable,
            "-m",
            "tests.kubeapi",
            "--port",
            "0",
            # One argument: a random token may start with "-".
            f"--token={token}",
            "--cert-dir",
            cert_dir,
            "--exit-on-stdin-eof",
        ]
        for namespace in namespaces:
            args += ["--namespace", namespace]
        for seed in seeds:
            args += ["--seed", seed]
        args += list(extra_args)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        stderr_path = os.path.join(cert_dir, "kubeapi.stderr")
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        try:
            line = _read_line(process, timeout)
            info = json.loads(line)
        except Exception as e:
            _stop(process, 5.0)
            with open(stderr_path, errors="replace") as f:
                err = f.read()
            raise RuntimeError(f"fake kube API did not start: {e}; stderr:\n{err}") from e
        return cls(process, cert_dir, token, tuple(namespaces), info)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout} seconds; return the exit code."""
        return _stop(self.process, timeout)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no output within {timeout} seconds")
            if not selector.select(left):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"exited with code {process.wait(5)}")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode("utf-8")


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
    return process.returncode


@define
class KubeTarget:
    """
    A Kubernetes API for one test, fake or real.

    @ivar name: C{"fake"} or C{"real"}.
    @ivar kubeconfig: path of a kubeconfig whose current context points at
        the target.
    @ivar namespace: the namespace tests should use.
    @ivar token: the accepted bearer token, when known (fake only).
    @ivar run_id: random; value of the C{brigade-cr-test} label on every
        Secret this test creates, so listings can be restricted to them.
    @ivar fake: the fake's process, or C{None} for a real cluster.
    """

    name: str
    kubeconfig: str
    namespace: str
    token: str | None = None
    fake: FakeKubeProcess | None = None
    run_id: str = Factory(lambda: secrets.token_hex(6))
    _created: list[tuple[str, str]] = Factory(list)
    _clients: list[Any] = Factory(list)
    _counter: int = 0

    @property
    def label_selector(self) -> str:
        """C{brigade-cr-test=<run_id>}: selects this test's Secrets."""
        return f"{TEST_LABEL}={self.run_id}"

    def labels(self, **extra: str) -> dict[str, str]:
        """The test label plus C{extra} labels."""
        return {TEST_LABEL: self.run_id, **extra}

    def unique_name(self, prefix: str = "t") -> str:
        """A fresh DNS-1123 name for this test."""
        self._counter += 1
        return f"{prefix}-{self.run_id}-{self._counter}"

    def api_client(self, **overrides: Any) -> Any:
        """
        A new official-client C{ApiClient} for the target (closed at
        teardown).  C{overrides} set attributes of its C{Configuration},
        e.g. C{api_key={"authorization": "Bearer wrong"}}.
        """
        from kubernetes import config

        client = config.new_client_from_config(config_file=self.kubeconfig)
        for key, value in overrides.items():
            setattr(client.configuration, key, value)
        if overrides:
            # The REST client copies TLS settings when it is built.
            from kubernetes.client import rest

            client.rest_client = rest.RESTClientObject(client.configuration)
        self._clients.append(client)
        return client

    def core(self, client: Any = None) -> Any:
        """A C{CoreV1Api} on C{client} (default: a new L{api_client})."""
        from kubernetes import client as k8s

        return k8s.CoreV1Api(client or self.api_client())

    def unauthenticated_client(self, token: str = "wrong-token") -> Any:
        """An C{ApiClient} presenting only a bogus bearer token."""
        return self.api_client(
            api_key={"authorization": f"Bearer {token}"},
            api_key_prefix={},
            refresh_api_key_hook=None,
            cert_file=None,
            key_file=None,
        )

    def track(self, name: str, namespace: str | None = None) -> None:
        """Delete Secret C{name} at teardown (if it still exists)."""
        self._created.append((namespace or self.namespace, name))

    def seed_secret(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """
        Create a Secret through the official client (in L{namespace}
        unless the object says otherwise), adding the test label; return
        the stored object as a camelCase dict.
        """
        body = copy.deepcopy(dict(obj))
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Secret")
        meta = body.setdefault("metadata", {})
        meta.setdefault("labels", {})[TEST_LABEL] = self.run_id
        namespace = meta.get("namespace") or self.namespace
        client = self.api_client()
        created = self.core(client).create_namespaced_secret(namespace, body, _request_timeout=REQUEST_TIMEOUT)
        result: dict[str, Any] = client.sanitize_for_serialization(created)
        self.track(result["metadata"]["name"], namespace)
        return result

    def cleanup(self) -> None:
        """Delete every Secret this test created or labelled; close clients."""
        from kubernetes.client.exceptions import ApiException

        try:
            client = self.api_client()
            core = self.core(client)
            namespaces = {self.namespace} | {ns for ns, _ in self._created}
            for namespace in sorted(namespaces):
                try:
                    core.delete_collection_namespaced_secret(
                        namespace,
                        label_selector=self.label_selector,
                        _request_timeout=REQUEST_TIMEOUT,
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
            for namespace, name in self._created:
                try:
                    core.delete_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
                except ApiException as e:
                    if e.status != 404:
                        raise
        finally:
            for client in self._clients:
                client.close()
            self._clients.clear()


@pytest.fixture(scope="session")
@starts_process
def fake_kube_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FakeKubeProcess]:
    """
    One C{python -m tests.kubeapi} process for the session, with
    namespaces C{default} and C{brigade-cr-other}; killed at the end.
    """
    directory = str(tmp_path_factory.mktemp("fake-kube"))
    process = FakeKubeProcess.start(directory, namespaces=("default", OTHER_NAMESPACE))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(
    params=[
        pytest.param("fake", marks=pytest.mark.slow),
        pytest.param("real", marks=pytest.mark.slow),
    ]
)
@starts_process
def kube_target(request: pytest.FixtureRequest) -> Iterator[KubeTarget]:
    """
    A L{KubeTarget}: the fake process, or a real cluster if configured.
    Tests using it are marked C{slow} (they talk to a process).
    """
    if request.param == "real":
        kubeconfig = os.environ.get(ENV_KUBECONFIG)
        if not kubeconfig:
            pytest.skip(
                f"no real cluster: set {ENV_KUBECONFIG} to a kubeconfig "
                f"(and optionally {ENV_NAMESPACE}) to run against one"
            )
        target = KubeTarget("real", kubeconfig, os.environ.get(ENV_NAMESPACE) or "default")
    else:
        process: FakeKubeProcess = request.getfixturevalue("fake_kube_process")
        target = KubeTarget(
            "fake",
            process.kubeconfig,
            process.namespace,
            token=process.token,
            fake=process,
        )
    try:
        yield target
    finally:
        target.cleanup()


@pytest_twisted.async_yield_fixture
@starts_process
async def served_fake_kube() -> AsyncIterator[tuple[Any, Any]]:
    """
    A L{tests.kubeapi.FakeKube} (token C{"test-token"}, namespace
    C{default}, clock = the reactor) served on 127.0.0.1 over TLS in the
    test reactor; yields C{(fake, served)} and stops serving afterwards.
    """
    from twisted.internet import reactor

    from tests.kubeapi import FakeKube, serve_tls

    fake = FakeKube(clock=reactor, tokens=frozenset({"test-token"}))
    with tempfile.TemporaryDirectory(prefix="fake-kube-") as cert_dir:
        served = await serve_tls(reactor, fake, cert_dir)
        try:
            yield fake, served
        finally:
            await served.stop()
