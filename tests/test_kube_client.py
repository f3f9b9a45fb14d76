"""
Tests for ``brigade_cr.stores.kube.client``, ``credentials`` and ``tls``.

Three kinds:

- in memory, with no reactor: ``KubeClient`` over ``StubTreq`` (the fake
  Kubernetes API, or a canned resource) and a ``Clock``;
- token sources, with a ``Clock`` (file) or real child processes (exec,
  bounded by the plugin timeout);
- the contract suite, driven through ``kube_target`` (the fake served as a
  subprocess over TLS with a bearer token, and a real cluster when
  ``BRIGADE_CR_TEST_KUBECONFIG`` is set), with the real client stack built
  by ``KubeClient.from_config``.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import pytest
import pytest_twisted
from idna.core import InvalidCodepoint
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, _HTTP11ClientFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from brigade_cr import __version__
from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.stores.kube.client import (
    DEFAULT_MAX_PERSISTENT,
    IPV6_URL_HOST,
    KubeClient,
    KubeStatusError,
    KubeTransportError,
    QuietPool,
    ServerEndpoints,
    parse_retry_after,
    transport_reason,
)
from brigade_cr.stores.kube.config import (
    BearerToken,
    BearerTokenFile,
    ExecPlugin,
    KubeConfig,
    KubeConfigError,
    NoCredentials,
    load_kubeconfig,
)
from brigade_cr.stores.kube.credentials import (
    ExecToken,
    FileToken,
    ITokenSource,
    KubeCredentialError,
    NoToken,
    StaticToken,
    token_source_for,
)
from brigade_cr.stores.kube.tls import tls_policy
from tests.certs import write_test_pki
from tests.helpers import failure_of, result_of
from tests.kubeapi import FakeKube, Latency
from tests.kubeapi import Hang as HangFault

TOKEN = "good-token-0123456789"
SECRET_STDERR = "stderr-secret-never-reported"
# Every loopback test finishes well inside this (seconds); the client's own
# timeouts are shorter still.
BOUND = 20.0


def bounded(d: Deferred[Any], reactor: Any, seconds: float = BOUND) -> Deferred[Any]:
    """``d``, failing with ``TimeoutError`` if it has not fired within ``seconds``."""
    return d.addTimeout(seconds, reactor)


def secret(
    name: str, labels: dict[str, str] | None = None, secret_type: str = "Opaque", **data: bytes
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": secret_type,
        "metadata": {"name": name, "labels": labels or {}},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


# -- in memory: the fake API over StubTreq ----------------------------------------


@attrs.define
class InMemory:
    fake: FakeKube
    clock: Clock
    client: KubeClient


def in_memory(tokens: Any = None, token: str | None = TOKEN, **client_args: Any) -> InMemory:
    clock = Clock()
    fake = FakeKube(clock=clock, tokens=frozenset({TOKEN}), initial_namespaces=["brigade"])
    source = tokens if tokens is not None else (StaticToken(token) if token else NoToken())
    client = KubeClient(StubTreq(fake.resource()), "https://kube.example:6443", source, clock, **client_args)
    return InMemory(fake, clock, client)


def test_get_create_list() -> None:
    """Secrets are created, read back and listed with label and field selectors."""
    kube = in_memory()
    created = result_of(
        kube.client.create_secret("brigade", secret("a", {"component": "build"}, "brigade.sh/build", x=b"1"))
    )
    assert created["metadata"]["name"] == "a"
    result_of(kube.client.create_secret("brigade", secret("b", {"component": "project"}, y=b"2")))
    got = result_of(kube.client.get_secret("brigade", "a"))
    assert got["data"] == {"x": base64.b64encode(b"1").decode()}
    by_label = result_of(kube.client.list_secrets("brigade", label_selector="component=project"))
    assert [s["metadata"]["name"] for s in by_label["items"]] == ["b"]
    by_type = result_of(kube.client.list_secrets("brigade", field_selector="type=brigade.sh/build"))
    assert [s["metadata"]["name"] for s in by_type["items"]] == ["a"]
    assert result_of(kube.client.version())["gitVersion"] == "v1.30.0-fake"


def test_not_found_carries_status() -> None:
    """A 404 fails with KubeStatusError carrying the server's Status."""
    kube = in_memory()
    error = failure_of(kube.client.get_secret("brigade", "missing"))
    assert isinstance(error, KubeStatusError)
    assert (error.code, error.reason, error.message) == (404, "NotFound", 'secrets "missing" not found')
    assert error.status["details"] == {"name": "missing", "kind": "secrets"}
    assert error.retry_after is None


def test_conflict_and_invalid_carry_status() -> None:
    """409 AlreadyExists and 422 Invalid come back with their reasons."""
    kube = in_memory()
    result_of(kube.client.create_secret("brigade", secret("a")))
    conflict = failure_of(kube.client.create_secret("brigade", secret("a")))
    assert isinstance(conflict, KubeStatusError)
    assert (conflict.code, conflict.reason) == (409, "AlreadyExists")
    invalid = failure_of(kube.client.create_secret("brigade", secret("Not_A_Name")))
    assert isinstance(invalid, KubeStatusError)
    assert (invalid.code, invalid.reason) == (422, "Invalid")
    assert invalid.status["details"]["causes"][0]["field"] == "metadata.name"


def test_retry_after_from_fault() -> None:
    """A 503 with Retry-After gives retry_after in seconds."""
    kube = in_memory()
    kube.fake.fail_with(503, retry_after=7)
    error = failure_of(kube.client.get_secret("brigade", "a"))
    assert isinstance(error, KubeStatusError)
    assert (error.code, error.reason, error.retry_after) == (503, "ServiceUnavailable", 7)


def test_unauthorized_retried_once_then_fails() -> None:
    """A 401 with a token that stays wrong is retried exactly once, then fails with 401."""
    kube = in_memory(token="wrong-token")
    error = failure_of(kube.client.get_secret("brigade", "a"))
    assert isinstance(error, KubeStatusError)
    assert error.code == 401
    assert kube.fake.count(verb="get") == 2


def test_unauthorized_without_token_not_retried() -> None:
    """Without a token there is nothing to refresh: a 401 is not retried."""
    kube = in_memory(token=None)
    error = failure_of(kube.client.get_secret("brigade", "a"))
    assert isinstance(error, KubeStatusError) and error.code == 401
    assert kube.fake.count(verb="get") == 1


def test_unauthorized_rereads_token_file(tmp_path: Path) -> None:
    """
    After a 401 the token file is re-read at once (not after its period) and
    the request retried with the new token, which succeeds.
    """
    path = tmp_path / "token"
    path.write_text("old-token\n")
    clock = Clock()
    tokens = FileToken(str(path), clock, period=60.0)
    kube = in_memory(tokens=tokens)
    kube.fake.tokens = frozenset({"old-token"})
    result_of(kube.client.version())
    path.write_text("new-token\n")
    kube.fake.tokens = frozenset({"new-token"})
    assert result_of(kube.client.version())["major"] == "1"
    assert [c.authenticated for c in kube.fake.calls] == [True, False, True]


def test_credential_failure_is_transport_error(tmp_path: Path) -> None:
    """A token source that cannot give a token fails the call with KubeTransportError, sending nothing."""
    kube = in_memory(tokens=FileToken(str(tmp_path / "absent"), Clock()))
    error = failure_of(kube.client.version())
    assert isinstance(error, KubeTransportError)
    assert error.reason == f"no credentials: token file {tmp_path / 'absent'} is unreadable or empty"
    assert kube.fake.calls == []


# -- in memory: canned answers ------------------------------------------------------


class Canned(Resource):
    """Answers every request with one canned response, recording what it got."""

    isLeaf = True

    def __init__(self, code: int = 200, body: bytes = b"{}", headers: dict[bytes, bytes] | None = None):
        super().__init__()
        self.code = code
        self.body = body
        self.headers = headers or {}
        self.requests: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(
            (
                request.method,
                request.uri,
                {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                request.content.read(),
            )
        )
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.body


def canned_client(resource: Resource, token: str | None = TOKEN, clock: Clock | None = None, **args: Any) -> KubeClient:
    return KubeClient(
        StubTreq(resource),
        "https://kube.example:6443/prefix/",
        StaticToken(token) if token else NoToken(),
        clock or Clock(),
        **args,
    )


def test_request_headers_and_body() -> None:
    """Requests send JSON with Accept, User-Agent and the bearer token, below the URL's path prefix."""
    resource = Canned(201, b'{"kind":"Secret"}')
    client = canned_client(resource)
    assert result_of(client.create_secret("ns 1", {"metadata": {"name": "n"}})) == {"kind": "Secret"}
    [(method, uri, headers, body)] = resource.requests
    assert method == b"POST"
    assert uri == b"/prefix/api/v1/namespaces/ns%201/secrets?fieldManager=brigade-cr"
    assert headers[b"accept"] == [b"application/json"]
    assert headers[b"content-type"] == [b"application/json"]
    assert headers[b"user-agent"] == [f"brigade-cr/{__version__}".encode()]
    assert headers[b"authorization"] == [f"Bearer {TOKEN}".encode()]
    assert json.loads(body) == {"metadata": {"name": "n"}}


def test_no_token_no_authorization() -> None:
    """Without a token no Authorization header is sent."""
    resource = Canned()
    result_of(canned_client(resource, token=None).version())
    assert b"authorization" not in resource.requests[0][2]


def test_selectors_encoded() -> None:
    """Selectors and paging parameters travel URL-encoded."""
    resource = Canned(200, b'{"kind":"SecretList","items":[]}')
    result_of(
        canned_client(resource).list_secrets(
            "brigade", label_selector="a=b,c!=d", field_selector="type=brigade.sh/build", limit=5, continue_token="x y"
        )
    )
    assert resource.requests[0][1] == (
        b"/prefix/api/v1/namespaces/brigade/secrets?labelSelector=a%3Db%2Cc%21%3Dd"
        b"&fieldSelector=type%3Dbrigade.sh%2Fbuild&limit=5&continue=x+y"
    )


def test_non_status_error_body() -> None:
    """A non-Status error answer (a proxy's page) gets a Status made from the code; the body is not echoed."""
    resource = Canned(502, b"<html>secret-ish proxy page</html>", {b"retry-after": b"3"})
    error = failure_of(canned_client(resource).version())
    assert isinstance(error, KubeStatusError)
    assert (error.code, error.reason, error.retry_after) == (502, "Unknown", 3)
    assert "proxy page" not in str(error)
    assert error.message == "HTTP 502 with a non-Status body of 34 bytes"


def test_retry_after_details_fallback() -> None:
    """Without a Retry-After header, the Status's details.retryAfterSeconds is used."""
    body = json.dumps({"kind": "Status", "code": 429, "reason": "TooManyRequests", "details": {"retryAfterSeconds": 4}})
    error = failure_of(canned_client(Canned(429, body.encode())).version())
    assert isinstance(error, KubeStatusError)
    assert error.retry_after == 4


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_success_that_is_not_an_object(body: bytes) -> None:
    """A 2xx answer that is not a JSON object is a transport error."""
    error = failure_of(canned_client(Canned(200, body)).version())
    assert isinstance(error, KubeTransportError)
    assert "not" in error.reason and "JSON" in error.reason


def test_body_bound() -> None:
    """A body larger than max_body is refused."""
    error = failure_of(canned_client(Canned(200, b'{"x":"' + b"a" * 200 + b'"}'), max_body=100).version())
    assert isinstance(error, KubeTransportError)
    assert error.reason == "response larger than 100 bytes (HTTP 200)"


class Hang(Resource):
    """Never answers (or, with ``partial``, sends headers and part of the body)."""

    isLeaf = True

    def __init__(self, partial: bool = False) -> None:
        super().__init__()
        self.partial = partial
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        if self.partial:
            request.setHeader(b"content-length", b"100")
            request.write(b"{")
        return NOT_DONE_YET


@pytest.mark.parametrize("partial", [False, True])
def test_timeout(partial: bool) -> None:
    """A server that does not finish answering fails the call after the timeout, not before."""
    clock = Clock()
    resource = Hang(partial)
    d = canned_client(resource, clock=clock, timeout=3.0).version()
    clock.advance(2.9)
    assert not d.called
    clock.advance(0.1)
    error = failure_of(d)
    assert isinstance(error, KubeTransportError)
    assert error.reason == "timed out after 3s"
    assert clock.getDelayedCalls() == []


def test_cancel() -> None:
    """Cancelling a call fails it with CancelledError and clears its timer."""
    from twisted.internet.defer import CancelledError

    clock = Clock()
    d = canned_client(Hang(), clock=clock).version()
    d.cancel()
    assert isinstance(failure_of(d), CancelledError)
    assert clock.getDelayedCalls() == []


# -- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", None),
        ("5", 5),
        (" 12 ", 12),
        ("-1", None),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0),
    ],
)
def test_parse_retry_after(value: str | None, expected: int | None) -> None:
    """Retry-After is delta-seconds or an HTTP-date (relative to now); anything else is ignored."""
    assert parse_retry_after(value, now=40.0) == expected


def test_transport_reasons() -> None:
    """Connection failures get short, fixed reasons."""
    from OpenSSL import SSL
    from service_identity import VerificationError
    from twisted.internet import error
    from twisted.python.failure import Failure
    from twisted.web._newclient import ResponseNeverReceived

    assert transport_reason(error.ConnectionRefusedError()) == "connection refused"
    assert transport_reason(error.DNSLookupError()) == "DNS lookup failed"
    assert transport_reason(error.TimeoutError()) == "connect timed out"
    tls = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert transport_reason(ResponseNeverReceived([Failure(tls)])) == "TLS failure: certificate verify failed"
    assert (
        transport_reason(ResponseNeverReceived([Failure(error.ConnectionLost()), Failure(VerificationError([]))]))
        == "TLS: the server certificate does not match the expected name"
    )
    assert (
        transport_reason(ResponseNeverReceived([Failure(error.ConnectionLost())]))
        == "connection lost before a complete response"
    )


# -- token sources -------------------------------------------------------------------------


def test_token_sources_provide_interface(tmp_path: Path) -> None:
    """Every token source provides ITokenSource."""
    plugin = ExecPlugin("x", object())
    sources = (
        NoToken(),
        StaticToken("t"),
        FileToken(str(tmp_path), Clock()),
        ExecToken(plugin, Clock(), lambda f: Deferred()),
    )
    for source in sources:
        assert verifyObject(ITokenSource, source)


def test_token_source_for() -> None:
    """The config's credentials choose the token source; an exec plugin gets the injected thread runner."""
    clock = Clock()
    base = KubeConfig(server="https://k")
    assert token_source_for(base, clock) == NoToken()
    assert token_source_for(attrs.evolve(base, credentials=BearerToken("t")), clock) == StaticToken("t")
    file_source = token_source_for(attrs.evolve(base, credentials=BearerTokenFile("/p", "fb")), clock)
    assert isinstance(file_source, FileToken)
    assert (file_source.path, file_source.fallback, file_source.period) == ("/p", "fb", 60.0)
    runner = Threads()
    exec_source = token_source_for(attrs.evolve(base, credentials=ExecPlugin("x", object())), clock, runner)
    assert isinstance(exec_source, ExecToken)
    assert (exec_source.run_in_thread, exec_source.clock, exec_source.timeout) == (runner, clock, 30.0)
    assert "t" not in repr(StaticToken("t")).replace("StaticToken", "")


def test_file_token_period_and_invalidate(tmp_path: Path) -> None:
    """The file is re-read after the period, or at once after invalidate(); not in between."""
    path = tmp_path / "token"
    path.write_text("one\n")
    clock = Clock()
    source = FileToken(str(path), clock, period=60.0)
    assert result_of(source.token()) == "one"
    path.write_text("two")
    clock.advance(59)
    assert result_of(source.token()) == "one"
    clock.advance(1)
    assert result_of(source.token()) == "two"
    path.write_text("three")
    source.invalidate()
    assert result_of(source.token()) == "three"


def test_file_token_keeps_last_good(tmp_path: Path) -> None:
    """While the file is unreadable or empty the last good token is kept; without one, the fallback, else failure."""
    path = tmp_path / "token"
    path.write_text("good")
    clock = Clock()
    source = FileToken(str(path), clock, period=1.0)
    assert result_of(source.token()) == "good"
    path.write_text("")
    clock.advance(1)
    assert result_of(source.token()) == "good"
    path.unlink()
    source.invalidate()
    assert result_of(source.token()) == "good"

    fresh = FileToken(str(path), clock, fallback="static")
    assert result_of(fresh.token()) == "static"
    error = failure_of(FileToken(str(path), clock).token())
    assert isinstance(error, KubeCredentialError)
    assert str(path) in error.reason


def plugin_script(tmp_path: Path, body: str) -> str:
    """An executable exec plugin: a Python script that runs ``body``."""
    script = tmp_path / f"plugin-{uuid.uuid4().hex[:8]}.py"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def credential(token: str | None = "exec-token", expires: str | None = None, api: str = "v1", **status: Any) -> str:
    if token is not None:
        status["token"] = token
    if expires is not None:
        status["expirationTimestamp"] = expires
    return json.dumps({"apiVersion": f"client.authentication.k8s.io/{api}", "kind": "ExecCredential", "status": status})


class Threads:
    """
    A thread runner that runs nothing until the test says so: ``pending``
    holds each callable handed over, ``run()`` runs the oldest (here, in the
    test, standing in for a pool thread) and fires its Deferred.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, f: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, d))
        return d

    def run(self) -> None:
        f, d = self.pending.pop(0)
        try:
            result = f()
        except Exception:
            d.errback()
        else:
            d.callback(result)


def exec_config(tmp_path: Path, command: str, **spec: Any) -> KubeConfig:
    """A KubeConfig with an exec plugin, loaded as the daemon loads it."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://kube.example:6443"}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": command,
                        "interactiveMode": "Never",
                        **spec,
                    }
                },
            }
        ],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / f"kubeconfig-{uuid.uuid4().hex[:8]}"
    path.write_text(json.dumps(document))
    return load_kubeconfig(str(path))


def exec_source(tmp_path: Path, body: str, clock: Clock, threads: Any, **spec: Any) -> ExecToken:
    source = token_source_for(exec_config(tmp_path, plugin_script(tmp_path, body), **spec), clock, threads)
    assert isinstance(source, ExecToken)
    return source


@pytest.mark.slow
def test_exec_token_runs_in_a_thread(tmp_path: Path) -> None:
    """
    The plugin runs only inside the thread runner (never inline), once for
    concurrent callers, and sees its args, env and KUBERNETES_EXEC_INFO with
    the cluster (provideClusterInfo).
    """
    runs = tmp_path / "runs"
    threads = Threads()
    source = exec_source(
        tmp_path,
        f"open({str(runs)!r}, 'a').write(json.dumps([sys.argv[1:], os.environ['MY_ENV'], "
        f"json.loads(os.environ['KUBERNETES_EXEC_INFO'])]) + '\\n')\n"
        f"print({credential()!r})",
        Clock(),
        threads,
        args=["--flag"],
        env=[{"name": "MY_ENV", "value": "v"}],
        provideClusterInfo=True,
    )
    first, second = source.token(), source.token()
    assert (first.called, second.called, len(threads.pending), runs.exists()) == (False, False, 1, False)
    threads.run()
    assert (result_of(first), result_of(second)) == ("exec-token", "exec-token")
    assert [json.loads(line) for line in runs.read_text().splitlines()] == [
        [
            ["--flag"],
            "v",
            {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "spec": {"interactive": False, "cluster": {"server": "https://kube.example:6443"}},
            },
        ]
    ]
    # Cached (no expiry): no new run until invalidate().
    assert result_of(source.token()) == "exec-token"
    assert threads.pending == []
    source.invalidate()
    again = source.token()
    assert len(threads.pending) == 1
    threads.run()
    assert result_of(again) == "exec-token"
    assert len(runs.read_text().splitlines()) == 2


@pytest.mark.slow
def test_exec_token_refreshed_after_expiry(tmp_path: Path) -> None:
    """The token is reused until its expirationTimestamp less 10 s, then the plugin runs again (in the runner)."""
    runs = tmp_path / "runs"
    threads = Threads()
    clock = Clock()
    expires = 1_900_000_000.0  # 2030-03-17T17:46:40Z
    clock.advance(expires - 100)
    source = exec_source(
        tmp_path,
        f"open({str(runs)!r}, 'a').write('x')\nprint({credential(expires='2030-03-17T17:46:40Z')!r})",
        clock,
        threads,
    )
    first = source.token()
    threads.run()
    assert result_of(first) == "exec-token"
    clock.advance(89)
    assert result_of(source.token()) == "exec-token"
    assert (threads.pending, runs.read_text()) == ([], "x")
    clock.advance(1)
    refreshed = source.token()
    assert (refreshed.called, len(threads.pending)) == (False, 1)
    threads.run()
    assert result_of(refreshed) == "exec-token"
    assert runs.read_text() == "xx"


@pytest.mark.slow
def test_exec_token_refreshed_after_401(tmp_path: Path) -> None:
    """A 401 makes the client invalidate the exec token; the plugin runs again and the retry carries its new token."""
    token_file = tmp_path / "current"
    token_file.write_text("old-token")
    threads = Threads()
    clock = Clock()
    source = exec_source(
        tmp_path,
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', "
        f"'status': {{'token': open({str(token_file)!r}).read()}}}}))",
        clock,
        threads,
    )
    kube = in_memory(tokens=source)
    kube.fake.tokens = frozenset({"old-token"})
    first = kube.client.version()
    threads.run()
    assert result_of(first)["major"] == "1"
    token_file.write_text("new-token")
    kube.fake.tokens = frozenset({"new-token"})
    second = kube.client.version()
    assert second.called is False
    assert len(threads.pending) == 1
    threads.run()
    assert result_of(second)["major"] == "1"
    assert [c.authenticated for c in kube.fake.calls] == [True, False, True]


@pytest.mark.parametrize(
    "body, reason",
    [
        (f"sys.stderr.write({SECRET_STDERR!r})\nsys.exit(3)", "exited with code 3"),
        ("print('nope')", "did not print JSON"),
        ("print(json.dumps({'kind': 'Other'}))", "malformed response. missing key 'apiVersion'"),
        (f"print({credential(api='v1beta1')!r})", "answered a different apiVersion than configured"),
        (f"print({credential(token=None)!r})", "gave no token"),
        (
            f"print({credential(token=None, clientCertificateData='x', clientKeyData='y')!r})",
            "gave a client certificate; only tokens are supported",
        ),
        (f"print({credential(expires='tomorrow')!r})", "gave an unreadable expirationTimestamp"),
    ],
)
@pytest.mark.slow
def test_exec_token_failures(tmp_path: Path, body: str, reason: str) -> None:
    """A failing or misbehaving plugin fails token() with a KubeCredentialError saying why, never echoing its stderr."""
    threads = Threads()
    source = exec_source(tmp_path, body, Clock(), threads)
    waiting = source.token()
    threads.run()
    error = failure_of(waiting)
    assert isinstance(error, KubeCredentialError)
    assert error.reason.endswith(reason)
    assert error.reason.startswith("exec plugin ")
    assert SECRET_STDERR not in error.reason
    assert "exec-token" not in error.reason


@pytest.mark.slow
def test_exec_token_timeout(tmp_path: Path) -> None:
    """
    A run that has not answered within the timeout fails its callers; when
    the thread finally answers, the token is cached for the next caller.
    """
    threads = Threads()
    clock = Clock()
    source = exec_source(tmp_path, f"print({credential()!r})", clock, threads)
    waiting = source.token()
    clock.advance(30)
    error = failure_of(waiting)
    assert isinstance(error, KubeCredentialError)
    assert error.reason == f"exec plugin {source.plugin.command!r} did not finish within 30s"
    threads.run()
    assert result_of(source.token()) == "exec-token"
    assert clock.getDelayedCalls() == []


@pytest.mark.slow
def test_exec_token_missing_command(tmp_path: Path) -> None:
    """A command that does not exist fails with why it could not start."""
    threads = Threads()
    source = token_source_for(exec_config(tmp_path, "no-such-plugin-for-brigade-cr"), Clock(), threads)
    waiting = source.token()
    threads.run()
    error = failure_of(waiting)
    assert isinstance(error, KubeCredentialError)
    assert error.reason == "exec plugin 'no-such-plugin-for-brigade-cr' could not start: No such file or directory"


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_exec_token_default_runner_is_the_reactor_thread_pool(tmp_path: Path) -> None:
    """Without an injected runner, the plugin runs in the reactor's thread pool, off the reactor thread."""
    from twisted.internet import reactor

    config = exec_config(tmp_path, plugin_script(tmp_path, f"print({credential()!r})"))
    assert isinstance(config.credentials, ExecPlugin)
    provider = config.credentials.provider
    threads_seen: list[threading.Thread] = []
    real_run = provider.run

    def recording_run(*args: Any) -> Any:
        threads_seen.append(threading.current_thread())
        return real_run(*args)

    provider.run = recording_run
    source = token_source_for(config, reactor)
    assert await bounded(source.token(), reactor) == "exec-token"
    assert len(threads_seen) == 1
    assert threads_seen[0] is not threading.main_thread()


# -- the real client stack: treq over the project's pool ------------------------------------


def test_from_config_is_treq_over_a_quiet_pool() -> None:
    """
    from_config sends through treq's HTTPClient over an Agent with the
    project's pool: max_persistent kept connections, 60 s idle, and a
    connection factory that does not log "Starting factory".
    """
    client = KubeClient.from_config(Clock(), KubeConfig(server="https://kube.example:6443"), max_persistent=6)
    assert isinstance(client.http, HTTPClient)
    assert isinstance(client.pool, QuietPool)
    assert (client.pool.maxPersistentPerHost, client.pool.cachedConnectionTimeout) == (6, 60)
    assert issubclass(client.pool._factory, _HTTP11ClientFactory)
    assert client.pool._factory.noisy is False
    assert (client.base_url, client.host_header) == ("https://kube.example:6443", None)
    default = KubeClient.from_config(Clock(), KubeConfig(server="https://kube.example:6443"))
    assert default.pool is not None and default.pool.maxPersistentPerHost == DEFAULT_MAX_PERSISTENT == 8


def test_treq_cannot_encode_an_ipv6_host() -> None:
    """
    Why an IPv6-literal server gets a placeholder URL host: treq encodes
    every URL with hyperlink, which raises on an IPv6 literal.
    """
    with pytest.raises(InvalidCodepoint):
        HTTPClient(Agent(Clock())).request("GET", "https://[fd00::1]:443/x")


@pytest.mark.parametrize(
    "server, base_url, host",
    [
        ("https://[fd00::1]:443", f"https://{IPV6_URL_HOST}:443", "[fd00::1]:443"),
        ("https://[::1]:6443/prefix", f"https://{IPV6_URL_HOST}:6443/prefix", "[::1]:6443"),
        ("https://[::1]", f"https://{IPV6_URL_HOST}", "[::1]"),
        ("https://10.0.0.1:6443", "https://10.0.0.1:6443", None),
    ],
)
def test_ipv6_server_goes_through_treq(server: str, base_url: str, host: str | None) -> None:
    """
    An IPv6-literal server is asked for with the placeholder host in the
    URL and the real [addr]:port in Host; the endpoint factory connects to
    the configured address whatever the URL says.
    """
    clock = Clock()
    client = KubeClient.from_config(clock, KubeConfig(server=server))
    assert (client.base_url, client.host_header) == (base_url, host)
    endpoints = client.http._agent._endpointFactory
    assert isinstance(endpoints, ServerEndpoints)
    assert (endpoints.host, endpoints.port) == (urlsplit(server).hostname, urlsplit(server).port or 443)


def test_an_idn_server_is_asked_for_in_uri_form() -> None:
    """
    The base URL is put in URI form once (the host IDNA-encoded), and every
    request hands treq a URL already in that form, whose to_uri() is itself
    (treq calls it on every request; it would IDNA-encode the host again).
    """
    client = KubeClient.from_config(Clock(), KubeConfig(server="https://кубер.example:6443/k8s"))
    assert client.base_url == "https://xn--90ain0am.example:6443/k8s"
    seen: list[Any] = []

    class Recording:
        def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
            seen.append(url)
            return Deferred()

    client.http = cast(Any, Recording())
    client.version()
    [url] = seen
    assert url.to_uri() is url
    assert url.to_text() == "https://xn--90ain0am.example:6443/k8s/version"


def test_host_header_sent() -> None:
    """A client with host_header sends it as Host, as the one Host header of the request."""
    canned = Canned(body=b'{"major": "1"}')
    client = KubeClient(
        StubTreq(canned), f"https://{IPV6_URL_HOST}:443", StaticToken(TOKEN), Clock(), host_header="[fd00::1]:443"
    )
    assert result_of(client.version()) == {"major": "1"}
    [(_, uri, headers, _)] = canned.requests
    assert (uri, headers[b"host"]) == (b"/version", [b"[fd00::1]:443"])


@pytest_twisted.ensureDeferred
async def test_contract_no_factory_noise(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """API connections log no "Starting factory" / "Stopping factory" lines."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        await bounded(target_client.version(), reactor)
        await bounded(target_client.close(), reactor)
    finally:
        globalLogPublisher.removeObserver(events)
    formats = [str(e.get("log_format", "")) for e in events]
    assert [f for f in formats if "factory" in f.lower()] == []


# -- TLS policy ------------------------------------------------------------------------------


def test_tls_policy_rejects_bad_material(tmp_path: Path) -> None:
    """Non-PEM CA or client material, or a key for another certificate, is a KubeConfigError."""
    pki = write_test_pki(str(tmp_path / "a"))
    other = write_test_pki(str(tmp_path / "b"))
    cert = Path(pki.client_cert or "").read_bytes()
    key = Path(pki.client_key or "").read_bytes()
    base = KubeConfig(server="https://127.0.0.1:1", source="test")
    tls_policy(attrs.evolve(base, client_cert_pem=cert, client_key_pem=key))
    with pytest.raises(KubeConfigError, match="certificate-authority is not a PEM"):
        tls_policy(attrs.evolve(base, ca_pem=b"junk"))
    with pytest.raises(KubeConfigError, match="client key is not a PEM"):
        tls_policy(attrs.evolve(base, client_cert_pem=cert, client_key_pem=b"junk"))
    with pytest.raises(KubeConfigError, match="does not match"):
        tls_policy(attrs.evolve(base, client_cert_pem=cert, client_key_pem=Path(other.client_key or "").read_bytes()))
    assert NoCredentials() == base.credentials


# -- the contract suite, through kube_target ---------------------------------------------------


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest_twisted.async_yield_fixture
async def target_client(kube_target: Any) -> Any:
    """A ``KubeClient`` for ``kube_target``, built as the daemon builds it; closed afterwards."""
    from twisted.internet import reactor

    client = KubeClient.from_config(reactor, load_kubeconfig(kube_target.kubeconfig), timeout=10.0)
    try:
        yield client
    finally:
        await bounded(client.close(), reactor)


@pytest_twisted.ensureDeferred
async def test_contract_version(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """/version answers with the server's version."""
    version = await bounded(target_client.version(), reactor)
    assert version["gitVersion"].startswith("v")
    assert version["major"] == "1"


@pytest_twisted.ensureDeferred
async def test_contract_create_get(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """A created Secret is read back with its type, labels and data; a ~900 KiB value survives byte for byte."""
    name = kube_target.unique_name("brigade-cr")
    kube_target.track(name)
    big = bytes(range(256)) * (900 * 4)
    body = secret(name, kube_target.labels(component="build"), "brigade.sh/build", payload=big, empty=b"")
    created = await bounded(target_client.create_secret(kube_target.namespace, body), reactor)
    assert created["metadata"]["name"] == name
    assert created["metadata"]["namespace"] == kube_target.namespace
    got = await bounded(target_client.get_secret(kube_target.namespace, name), reactor)
    assert got["type"] == "brigade.sh/build"
    assert got["metadata"]["labels"] == kube_target.labels(component="build")
    assert base64.b64decode(got["data"]["payload"]) == big
    assert got["data"].get("empty", "") == ""


@pytest_twisted.ensureDeferred
async def test_contract_list_selectors(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """Label and field selectors select exactly the matching Secrets."""
    ns = kube_target.namespace
    build = kube_target.unique_name("b")
    project = kube_target.unique_name("p")
    for name, component, kind in ((build, "build", "brigade.sh/build"), (project, "project", "brigade.sh/project")):
        kube_target.track(name)
        await bounded(
            target_client.create_secret(ns, secret(name, kube_target.labels(component=component), kind)), reactor
        )

    def names(listing: dict[str, Any]) -> list[str]:
        assert listing["kind"] == "SecretList"
        return sorted(s["metadata"]["name"] for s in listing["items"])

    everything = await bounded(target_client.list_secrets(ns, label_selector=kube_target.label_selector), reactor)
    assert names(everything) == sorted([build, project])
    builds = await bounded(
        target_client.list_secrets(ns, label_selector=kube_target.label_selector + ",component=build"), reactor
    )
    assert names(builds) == [build]
    typed = await bounded(
        target_client.list_secrets(
            ns, label_selector=kube_target.label_selector, field_selector="type=brigade.sh/project"
        ),
        reactor,
    )
    assert names(typed) == [project]


@pytest_twisted.ensureDeferred
async def test_contract_not_found(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """A missing Secret is a 404 carrying the server's NotFound Status."""
    name = kube_target.unique_name("missing")
    with pytest.raises(KubeStatusError) as raised:
        await bounded(target_client.get_secret(kube_target.namespace, name), reactor)
    error = raised.value
    assert (error.code, error.reason) == (404, "NotFound")
    assert error.status["kind"] == "Status"
    assert error.status["details"]["name"] == name
    assert name in error.message


@pytest_twisted.ensureDeferred
async def test_contract_already_exists(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """Creating a name that exists is a 409 AlreadyExists."""
    name = kube_target.unique_name("dup")
    kube_target.track(name)
    body = secret(name, kube_target.labels())
    await bounded(target_client.create_secret(kube_target.namespace, body), reactor)
    with pytest.raises(KubeStatusError) as raised:
        await bounded(target_client.create_secret(kube_target.namespace, body), reactor)
    assert (raised.value.code, raised.value.reason) == (409, "AlreadyExists")
    assert raised.value.status["details"]["name"] == name


@pytest_twisted.ensureDeferred
async def test_contract_invalid(kube_target: Any, target_client: KubeClient, reactor: Any) -> None:
    """An invalid object is a 422 Invalid whose Status names the field."""
    body = secret("Not_A_Valid_Name", kube_target.labels())
    with pytest.raises(KubeStatusError) as raised:
        await bounded(target_client.create_secret(kube_target.namespace, body), reactor)
    error = raised.value
    assert (error.code, error.reason) == (422, "Invalid")
    assert [cause["field"] for cause in error.status["details"]["causes"]] == ["metadata.name"]


@pytest_twisted.ensureDeferred
async def test_contract_wrong_token(kube_target: Any, reactor: Any) -> None:
    """A wrong bearer token (and no client certificate) is a 401 Unauthorized, after one retry."""
    config = attrs.evolve(
        load_kubeconfig(kube_target.kubeconfig),
        credentials=BearerToken("wrong-token"),
        client_cert_pem=None,
        client_key_pem=None,
    )
    client = KubeClient.from_config(reactor, config, timeout=10.0)
    try:
        with pytest.raises(KubeStatusError) as raised:
            await bounded(client.get_secret(kube_target.namespace, "anything"), reactor)
    finally:
        await bounded(client.close(), reactor)
    assert (raised.value.code, raised.value.reason) == (401, "Unauthorized")


# -- request metrics ---------------------------------------------------------------------


def kube_counts(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    """brigade_cr_kube_requests_total by (verb, code)."""
    return {
        (s.labels["verb"], s.labels["code"]): s.value
        for family in metrics.registry.collect()
        if family.name == "brigade_cr_kube_requests"
        for s in family.samples
        if s.name == "brigade_cr_kube_requests_total"
    }


def kube_timed(metrics: GatewayMetrics, verb: str) -> tuple[float | None, float | None]:
    """The duration histogram's count and sum for ``verb``."""
    sample = metrics.registry.get_sample_value
    return (
        sample("brigade_cr_kube_request_duration_seconds_count", {"verb": verb}),
        sample("brigade_cr_kube_request_duration_seconds_sum", {"verb": verb}),
    )


@attrs.define
class Observed:
    fake: FakeKube
    clock: Clock
    stub: StubTreq
    client: KubeClient
    metrics: GatewayMetrics

    def advance(self, seconds: float) -> None:
        self.stub.flush()
        self.clock.advance(seconds)
        self.stub.flush()


def observed(token: str = TOKEN, **client_args: Any) -> Observed:
    clock = Clock()
    fake = FakeKube(clock=clock, tokens=frozenset({TOKEN}), initial_namespaces=["brigade"])
    stub = StubTreq(fake.resource())
    metrics = GatewayMetrics()
    client = KubeClient(stub, "https://kube.example:6443", StaticToken(token), clock, metrics=metrics, **client_args)
    return Observed(fake, clock, stub, client, metrics)


def test_requests_counted_by_verb_and_status_class() -> None:
    """Each call is one request under its verb and its answer's status class."""
    kube = observed()
    result_of(kube.client.create_secret("brigade", secret("a")))
    failure_of(kube.client.create_secret("brigade", secret("a")))  # 409
    result_of(kube.client.get_secret("brigade", "a"))
    failure_of(kube.client.get_secret("brigade", "missing"))  # 404
    result_of(kube.client.list_secrets("brigade"))
    result_of(kube.client.version())
    kube.fake.fail_with(503, verbs=["list"])
    failure_of(kube.client.list_secrets("brigade"))
    assert kube_counts(kube.metrics) == {
        ("create", "2xx"): 1,
        ("create", "4xx"): 1,
        ("get", "2xx"): 2,
        ("get", "4xx"): 1,
        ("list", "2xx"): 1,
        ("list", "5xx"): 1,
    }
    assert kube_timed(kube.metrics, "get") == (3.0, 0.0)
    assert kube_timed(kube.metrics, "create") == (2.0, 0.0)


def test_request_latency_on_the_clock() -> None:
    """A create the server answers after 2.5 s is observed with exactly that duration."""
    kube = observed()
    kube.fake.add_fault(Latency(seconds=2.5, verbs=["create"], times=1))
    created = kube.client.create_secret("brigade", secret("slow"))
    kube.advance(2.4)
    assert not created.called
    kube.advance(0.1)
    assert result_of(created)["metadata"]["name"] == "slow"
    assert kube_timed(kube.metrics, "create") == (1.0, 2.5)
    sample = kube.metrics.registry.get_sample_value
    bucket = "brigade_cr_kube_request_duration_seconds_bucket"
    assert sample(bucket, {"verb": "create", "le": "1.0"}) == 0
    assert sample(bucket, {"verb": "create", "le": "2.5"}) == 1


def test_no_usable_answer_is_an_error() -> None:
    """A timeout and a 2xx that is not JSON are code ``error``; the timeout lasts its 3 s."""
    clock = Clock()
    metrics = GatewayMetrics()
    hung = canned_client(Hang(), clock=clock, timeout=3.0, metrics=metrics).version()
    clock.advance(3.0)
    assert isinstance(failure_of(hung), KubeTransportError)
    assert isinstance(failure_of(canned_client(Canned(200, b"nope"), metrics=metrics).version()), KubeTransportError)
    assert kube_counts(metrics) == {("get", "error"): 2}
    assert kube_timed(metrics, "get") == (2.0, 3.0)


def test_each_attempt_is_a_request_and_unsent_calls_are_not() -> None:
    """
    A 401 retried with a fresh token is two requests; a call with no
    credentials sends nothing and one cancelled by its caller ends without
    an answer: neither is counted.
    """
    kube = observed(token="wrong-token")
    failure_of(kube.client.get_secret("brigade", "a"))
    assert kube_counts(kube.metrics) == {("get", "4xx"): 2}
    metrics = GatewayMetrics()
    no_token = FileToken("/nonexistent/token", Clock())
    client = KubeClient(StubTreq(Canned()), "https://kube.example:6443", no_token, Clock(), metrics=metrics)
    assert isinstance(failure_of(client.version()), KubeTransportError)
    cancelled = canned_client(Hang(), metrics=metrics).version()
    cancelled.cancel()
    failure_of(cancelled)
    assert kube_counts(metrics) == {}


def test_generic_request_verbs() -> None:
    """``request`` counts a method's verb (PUT update, PATCH patch, DELETE delete, else other) unless given one."""
    metrics = GatewayMetrics()
    client = canned_client(Canned(200, b"{}"), metrics=metrics)
    for method in ("PUT", "PATCH", "DELETE", "OPTIONS", "GET", "POST"):
        result_of(client.request(method, "/x"))
    result_of(client.request("GET", "/x", verb="list"))
    assert kube_counts(metrics) == {
        ("update", "2xx"): 1,
        ("patch", "2xx"): 1,
        ("delete", "2xx"): 1,
        ("other", "2xx"): 1,
        ("get", "2xx"): 1,
        ("create", "2xx"): 1,
        ("list", "2xx"): 1,
    }


def test_watch_counted_once_at_its_headers() -> None:
    """
    A watch is one request, counted when its answer's headers arrive (not
    per event, not when the stream ends); a refused watch is counted with
    its code, one that never answers as an error at the timeout.
    """
    kube = observed(timeout=3.0)
    events: list[dict[str, Any]] = []
    stream = kube.client.watch_secrets("brigade", events.append, timeout_seconds=60)
    kube.advance(0)
    assert kube_counts(kube.metrics) == {("watch", "2xx"): 1}
    kube.fake.put_secret("brigade", secret("a"))
    kube.fake.put_secret("brigade", secret("b"))
    kube.advance(1.0)
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    assert kube_counts(kube.metrics) == {("watch", "2xx"): 1}
    assert kube_timed(kube.metrics, "watch") == (1.0, 0.0)
    stream.cancel()
    kube.advance(0)
    failure_of(stream)
    kube.fake.fail_with(403, verbs=["watch"])
    assert isinstance(failure_of(kube.client.watch_secrets("brigade", events.append)), KubeStatusError)
    kube.fake.fail_with(None)
    kube.fake.add_fault(HangFault(verbs=["watch"]))
    hung = kube.client.watch_secrets("brigade", events.append)
    kube.advance(3.0)
    assert isinstance(failure_of(hung), KubeTransportError)
    assert kube_counts(kube.metrics) == {("watch", "2xx"): 1, ("watch", "4xx"): 1, ("watch", "error"): 1}
    assert kube_timed(kube.metrics, "watch") == (3.0, 3.0)


def test_from_config_passes_the_metrics() -> None:
    """The client ``from_config`` (and so make_kube_backend) builds observes into the metrics it is given."""
    metrics = GatewayMetrics()
    client = KubeClient.from_config(Clock(), KubeConfig(server="https://kube.example:6443"), metrics=metrics)
    assert client.metrics is metrics
    assert KubeClient.from_config(Clock(), KubeConfig(server="https://kube.example:6443")).metrics is None


def test_the_endpoint_is_made_once() -> None:
    """Every request gets the same endpoint, made at the first (making one IDNA-encodes the host)."""
    endpoints = ServerEndpoints(Clock(), "kube.example", 6443, None, 5.0)
    first = endpoints.endpointForURI(None)
    assert isinstance(first, HostnameEndpoint)
    assert endpoints.endpointForURI(None) is first
    creator = tls_policy(KubeConfig(server="https://kube.example:6443")).creator
    tls = ServerEndpoints(Clock(), "kube.example", 6443, creator, 5.0)
    assert tls.endpointForURI(None) is tls.endpointForURI(None)
    assert not isinstance(tls.endpointForURI(None), HostnameEndpoint)


def test_a_request_url_is_parsed_once() -> None:
    """A call's URL is parsed (and put in text form) once, then reused; at most 64 are kept."""
    client = KubeClient.from_config(Clock(), KubeConfig(server="https://kube.example:6443"))
    seen: list[Any] = []

    class Recording:
        def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
            seen.append((url, kwargs["cookies"]))
            return Deferred()

    client.http = cast(Any, Recording())
    client.get_secret("brigade", "a")
    client.get_secret("brigade", "a")
    (first, jar), (second, _) = seen
    assert first is second
    assert first.to_text() is first.to_text() == "https://kube.example:6443/api/v1/namespaces/brigade/secrets/a"
    assert len(jar) == 0
    for n in range(100):
        client.get_secret("brigade", f"s{n}")
    assert len(client._uris) <= 64


class _CookieSetting(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.cookies: list[bytes | None] = []

    def render_GET(self, request: Any) -> bytes:
        self.cookies.append(request.getHeader(b"cookie"))
        request.setHeader(b"set-cookie", b"session=abc; Path=/")
        request.setHeader(b"content-type", b"application/json")
        return b'{"major": "1"}'


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_cookies_are_neither_kept_nor_sent(reactor: Any) -> None:
    """A server's Set-Cookie is not kept: a later request through the real client sends no Cookie header."""
    from twisted.web.server import Site

    resource = _CookieSetting()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    client = KubeClient.from_config(reactor, KubeConfig(server=f"http://127.0.0.1:{port.getHost().port}"), timeout=10.0)
    try:
        assert await bounded(client.version(), reactor) == {"major": "1"}
        assert await bounded(client.version(), reactor) == {"major": "1"}
    finally:
        await bounded(client.close(), reactor)
        await port.stopListening()
    assert resource.cookies == [None, None]
