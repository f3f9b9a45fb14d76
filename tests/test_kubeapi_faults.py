"""
The fault modes of the fake Kubernetes API (C{tests/kubeapi.py}).

Three layers, as in C{tests/test_kubeapi.py}:

  - the fake as a process (one per module), driven through its control
    endpoint (L{FakeKubeProcess} helpers) and observed through the official
    Kubernetes client, built with C{retries=False} so every client call is
    exactly one request;
  - in memory, through C{StubTreq} and a C{Clock} (latency, hangs, seeded
    storms, selectors, composition);
  - pytest-twisted tests of the fake served over TLS in the test reactor
    (stop/start listening on the same port, a reset seen by treq).

Every wait is bounded: client calls carry a timeout, polls a deadline.
"""

from __future__ import annotations

import errno
import json
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
import urllib3
from attrs import define
from kubernetes.client.exceptions import ApiException
from treq.testing import StubTreq
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.web.client import ResponseFailed

from tests.kubeapi import (
    FAULT_KINDS,
    APICall,
    ErrorStorm,
    FailAfterCommit,
    FakeKube,
    FaultResponse,
    Hang,
    Latency,
    ResetMidResponse,
    TooManyRequests,
    make_fault,
    serve_http,
    serve_tls,
)
from tests.kubetarget import ControlError, FakeKubeProcess, KubeTarget
from tests.slow import starts_process

T = 10.0  # seconds: the timeout of every client call that should answer
SHORT = 0.3  # seconds: the timeout of client calls meant to give up
NS = "default"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll C{predicate} until true or C{timeout} seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


def headers_of(error: ApiException) -> Any:
    """The answer's headers (an HTTP answer always has them)."""
    assert error.headers is not None
    return error.headers


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body or "null")
    return body


# ---------------------------------------------------------------------------
# The fake as a process, through the official client
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
@starts_process
def proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeProcess]:
    """A fake API process of our own: faults must not leak into other modules."""
    process = FakeKubeProcess.start(str(tmp_path_factory.mktemp("fake-kube-faults")))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def target(proc: FakeKubeProcess) -> Iterator[KubeTarget]:
    """A L{KubeTarget} on L{proc}; faults cleared and the port open afterwards."""
    kube = KubeTarget("fake", proc.kubeconfig, proc.namespace, token=proc.token, fake=proc)
    try:
        yield kube
    finally:
        proc.set_listening(True)
        proc.clear_faults()
        kube.cleanup()


def core(target: KubeTarget) -> Any:
    """A C{CoreV1Api} that makes exactly one request per call (no retries)."""
    return target.core(target.api_client(retries=False))


def secret(target: KubeTarget, name: str) -> dict[str, Any]:
    target.track(name)
    return {"metadata": {"name": name, "labels": target.labels()}, "stringData": {"k": "v"}}


def stored(proc: FakeKubeProcess, name: str) -> bool:
    return any(s["metadata"]["name"] == name for s in proc.secrets(NS))


def test_control_endpoint(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """The documented JSON shapes, and 400/404 for bad calls."""
    assert proc.control_url.startswith("http://127.0.0.1:")
    assert proc.control_url != f"http://127.0.0.1:{proc.port}"
    added = proc.add_fault("error_storm", code=503, times=2, verbs=["create"], resources="secrets")
    assert added == {
        "kind": "error_storm",
        "id": added["id"],
        "fired": 0,
        "active": True,
        "verbs": ["create"],
        "kinds": None,
        "resources": ["secrets"],
        "namespaces": None,
        "times": 2,
        "probability": 1.0,
        "seed": 0,
        "code": 503,
        "retry_after": None,
        "message": None,
    }
    first = proc.add_fault("latency", seconds=0.0, first=True)
    assert [f["id"] for f in proc.faults()] == [first["id"], added["id"]]
    proc.remove_fault(first["id"])
    assert [f["id"] for f in proc.faults()] == [added["id"]]
    with pytest.raises(ControlError) as info:
        proc.remove_fault(first["id"])
    assert info.value.code == 404
    assert proc.clear_faults() == 1
    assert proc.faults() == []
    assert proc.control("GET", "/listening") == {"listening": True, "port": proc.port}

    bad: list[tuple[str, dict[str, Any], str]] = [
        ("nope", {}, "unknown fault kind 'nope'"),
        ("latency", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ("error_storm", {"probability": 2}, "probability must be between 0 and 1"),
        ("too_many_requests", {"style": "loud"}, "'style' must be in"),
        ("error_storm", {"code": 42}, "code must be an HTTP status code"),
    ]
    for kind, params, fragment in bad:
        with pytest.raises(ControlError) as info:
            proc.add_fault(kind, **params)
        assert info.value.code == 400
        assert fragment in info.value.body["error"]
    for method, path, body, code in [
        ("POST", "/faults", b"{not json", 400),
        ("POST", "/listening", b'{"listening": "no"}', 400),
        ("GET", "/api/v1/namespaces/default/secrets", None, 404),
        ("PUT", "/faults", b"{}", 405),
    ]:
        request = urllib.request.Request(proc.control_url + path, data=body, method=method)
        with pytest.raises(urllib.error.HTTPError) as http_error:
            _NO_PROXY.open(request, timeout=T)
        with http_error.value as e:
            assert e.code == code
            assert "error" in json.loads(e.read())
    assert proc.faults() == []

    api = core(target)
    api.create_namespaced_secret(NS, secret(target, "ctl-a"), _request_timeout=T)
    assert [s["metadata"]["name"] for s in proc.secrets(NS) if s["metadata"]["name"] == "ctl-a"] == ["ctl-a"]
    assert proc.secrets("no-such-namespace") == []
    calls = proc.calls()
    assert calls[-1] == {
        "method": "POST",
        "path": "/api/v1/namespaces/default/secrets",
        "kind": "secrets",
        "verb": "create",
        "namespace": NS,
        "name": None,
        "authenticated": True,
        "query": {},
    }
    assert proc.count(verb="create", name=None, namespace=NS) >= 1
    assert proc.calls_by_verb()["create"] == proc.count(verb="create")
    assert proc.reset_calls() == len(calls)
    assert proc.calls() == []
    assert proc.calls_by_verb() == {}


def test_control_not_on_api_port(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """The API port answers the control paths like any unknown path: 404, no effect."""
    client = target.api_client(retries=False)
    for method, path in [
        ("GET", "/faults"),
        ("POST", "/faults"),
        ("DELETE", "/faults"),
        ("POST", "/listening"),
        ("GET", "/secrets"),
        ("GET", "/calls"),
    ]:
        _, url, headers, _, _ = client.param_serialize(
            method, path, header_params={"Content-Type": "application/json"}, auth_settings=["BearerToken"]
        )
        response = client.rest_client.pool_manager.request(
            method, url, body=b'{"kind": "hang"}', headers=headers, timeout=T, preload_content=True
        )
        body = json.loads(response.data)
        assert response.status == 404, (method, path)
        assert (body["kind"], body["reason"]) == ("Status", "NotFound")
    assert proc.faults() == []


def test_api_down_then_up_on_the_same_port(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """Connections are refused (pooled ones cut), then work again on the same port."""
    api = core(target)
    api.create_namespaced_secret(NS, secret(target, "down-a"), _request_timeout=T)  # a pooled connection
    received = len(proc.calls())

    proc.set_listening(False)
    assert proc.control("GET", "/listening") == {"listening": False, "port": proc.port}
    with pytest.raises(urllib3.exceptions.HTTPError):  # the pooled connection was cut
        api.read_namespaced_secret("down-a", NS, _request_timeout=T)
    with pytest.raises(urllib3.exceptions.NewConnectionError) as info:
        core(target).read_namespaced_secret("down-a", NS, _request_timeout=T)
    assert "Connection refused" in str(info.value)
    with socket.socket() as probe:
        probe.settimeout(T)
        assert probe.connect_ex(("127.0.0.1", proc.port)) == errno.ECONNREFUSED
    assert len(proc.calls()) == received  # nothing got through
    proc.set_listening(False)  # idempotent

    proc.set_listening(True)
    assert proc.control("GET", "/listening") == {"listening": True, "port": proc.port}
    assert core(target).read_namespaced_secret("down-a", NS, _request_timeout=T).metadata.name == "down-a"
    proc.set_listening(True)  # idempotent


def test_error_storm_next_n_creates(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """C{times=N} fails exactly the next N matching requests, with a proper Status."""
    storm = proc.add_fault("error_storm", code=503, times=2, retry_after=4, verbs=["create"])
    api = core(target)
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            api.create_namespaced_secret(NS, secret(target, "storm-a"), _request_timeout=T)
        assert info.value.status == 503
        assert headers_of(info.value)["Retry-After"] == "4"
        assert status_of(info.value) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "the server is currently unable to handle the request",
            "reason": "ServiceUnavailable",
            "details": {"retryAfterSeconds": 4},
            "code": 503,
        }
        assert api.list_namespaced_secret(NS, _request_timeout=T).kind == "SecretList"  # other verbs pass
    assert not stored(proc, "storm-a")
    api.create_namespaced_secret(NS, secret(target, "storm-a"), _request_timeout=T)
    (after,) = proc.faults()
    assert (after["id"], after["fired"], after["active"]) == (storm["id"], 2, False)
    assert sum(1 for c in proc.calls() if c["verb"] == "create" and c["name"] is None) >= 3


@pytest.mark.parametrize("style", ["status", "limiter"])
def test_too_many_requests(proc: FakeKubeProcess, target: KubeTarget, style: str) -> None:
    """429 with C{Retry-After}: a Status with C{retryAfterSeconds}, or the limiter's plain text."""
    proc.add_fault("too_many_requests", retry_after=7, style=style, times=1, verbs=["get"])
    api = core(target)
    with pytest.raises(ApiException) as info:
        api.read_namespaced_secret("anything", NS, _request_timeout=T)
    error = info.value
    assert error.status == 429
    assert headers_of(error)["Retry-After"] == "7"
    if style == "status":
        assert headers_of(error)["Content-Type"] == "application/json"
        assert status_of(error) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Too many requests, please try again later.",
            "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": 7},
            "code": 429,
        }
    else:
        assert headers_of(error)["Content-Type"] == "text/plain; charset=utf-8"
        assert headers_of(error)["X-Content-Type-Options"] == "nosniff"
        assert error.body == "Too many requests, please try again later.\n"
    with pytest.raises(ApiException) as info:  # used up: the real answer
        api.read_namespaced_secret("anything", NS, _request_timeout=T)
    assert info.value.status == 404


def test_latency_on_a_process(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """
    Real-time latency delays only the selected verb; a client that gives up
    first leaves nothing behind (the delayed create is never performed).
    """
    api = core(target)
    # How long the delay lasts is asserted on a Clock (test_mem_latency_*):
    # here, that a real client sees it, and only on the selected verb.
    proc.add_fault("latency", seconds=1.0, verbs=["get"])
    api.create_namespaced_secret(NS, secret(target, "slow-a"), _request_timeout=T)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.read_namespaced_secret("slow-a", NS, _request_timeout=SHORT)
    assert api.read_namespaced_secret("slow-a", NS, _request_timeout=T).metadata.name == "slow-a"
    assert [fault["fired"] for fault in proc.faults()] == [2]  # both gets, not the create
    proc.clear_faults()

    proc.add_fault("latency", seconds=0.6, verbs=["create"], times=1)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.create_namespaced_secret(NS, secret(target, "slow-b"), _request_timeout=SHORT)
    time.sleep(max(0.0, started + 0.9 - time.monotonic()))  # past the delay
    assert not stored(proc, "slow-b")

    proc.add_fault("latency", seconds=0.6, answer_only=True, verbs=["create"], times=1)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.create_namespaced_secret(NS, secret(target, "slow-c"), _request_timeout=SHORT)
    assert stored(proc, "slow-c")  # timed out, yet stored


def test_fail_after_commit(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """The create is answered 500 but stored: a GET finds it, a retry gets 409."""
    fault = proc.add_fault("fail_after_commit", verbs=["create"], times=1)
    api = core(target)
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret(NS, secret(target, "commit-a"), _request_timeout=T)
    assert info.value.status == 500
    assert status_of(info.value)["reason"] == "InternalError"
    assert api.read_namespaced_secret("commit-a", NS, _request_timeout=T).data == {"k": "dg=="}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret(NS, secret(target, "commit-a"), _request_timeout=T)
    assert (info.value.status, status_of(info.value)["reason"]) == (409, "AlreadyExists")
    (after,) = proc.faults()
    assert (after["id"], after["fired"], after["committed"], after["active"]) == (fault["id"], 1, 1, False)


def test_timeout_after_commit_and_refusals_pass(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """504 Timeout after the commit; a create the API refuses gets its real answer."""
    proc.add_fault("fail_after_commit", code=504, verbs=["create"])
    api = core(target)
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret(NS, {"metadata": {"name": "Not_Valid"}}, _request_timeout=T)
    assert (info.value.status, status_of(info.value)["reason"]) == (422, "Invalid")
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret(NS, secret(target, "commit-b"), _request_timeout=T)
    assert (info.value.status, status_of(info.value)["reason"]) == (504, "Timeout")
    assert stored(proc, "commit-b")
    (after,) = proc.faults()
    assert (after["fired"], after["committed"]) == (2, 1)


@pytest.mark.parametrize("commit", [True, False])
def test_reset_mid_response(proc: FakeKubeProcess, target: KubeTarget, commit: bool) -> None:
    """
    The client gets the start of a response and then a broken connection,
    whether or not the create was performed; only the GET tells which.
    """
    proc.add_fault("reset", commit=commit, verbs=["create"], times=1)
    api = core(target)
    with pytest.raises(urllib3.exceptions.ProtocolError) as info:
        api.create_namespaced_secret(NS, secret(target, f"reset-{commit}".lower()), _request_timeout=T)
    # Headers and part of the body were sent, then a RST. Whether the client
    # reads those bytes first (IncompleteRead) or the kernel reports the RST
    # and drops them (ECONNRESET) is a race the client loses at random.
    message = str(info.value)
    assert "IncompleteRead" in message or "Connection reset by peer" in message, message
    if commit:
        assert api.read_namespaced_secret("reset-true", NS, _request_timeout=T).metadata.name == "reset-true"
    else:
        with pytest.raises(ApiException) as not_found:
            api.read_namespaced_secret("reset-false", NS, _request_timeout=T)
        assert not_found.value.status == 404
    assert wait_until(lambda: proc.hanging() == 0)
    assert proc.faults()[0]["fired"] == 1


def test_reset_before_any_byte(proc: FakeKubeProcess, target: KubeTarget) -> None:
    """C{send_headers=False}: the connection drops before a status line."""
    proc.add_fault("reset", send_headers=False, verbs=["get"], times=1)
    with pytest.raises(urllib3.exceptions.ProtocolError) as info:
        core(target).read_namespaced_secret("nothing", NS, _request_timeout=T)
    assert "IncompleteRead" not in str(info.value)


@pytest.mark.parametrize("commit", [True, False])
def test_hang_until_the_client_gives_up(proc: FakeKubeProcess, target: KubeTarget, commit: bool) -> None:
    """A hung request times out on the client; with C{commit} it was performed."""
    proc.add_fault("hang", commit=commit, verbs=["create"])
    api = core(target)
    name = f"hang-{commit}".lower()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.create_namespaced_secret(NS, secret(target, name), _request_timeout=SHORT)
    assert stored(proc, name) is commit
    assert wait_until(lambda: proc.hanging() == 0)  # released when the client closed
    assert proc.faults()[0]["fired"] == 1


# ---------------------------------------------------------------------------
# In memory: StubTreq and a Clock
# ---------------------------------------------------------------------------

TOKEN = "t0ken"


@define
class Pending:
    """One request in flight through StubTreq: (code, headers, body) once answered."""

    results: list[Any]

    @property
    def done(self) -> bool:
        return bool(self.results)

    def answer(self) -> tuple[int, Any, Any]:
        assert self.results, "request did not complete"
        (result,) = self.results
        if not isinstance(result, tuple):
            result.raiseException()
        code, headers, raw = result
        return code, headers, json.loads(raw)


@define
class Mem:
    """A FakeKube on a Clock, driven through StubTreq."""

    fake: FakeKube
    clock: Clock
    stub: Any  # a StubTreq: its request methods are set at run time, untyped

    def start(self, method: str, path: str, body: Any = None) -> Pending:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        results: list[Any] = []
        d = self.stub.request(method, "https://kube.test" + path, headers=headers, data=data)
        d.addCallback(lambda r: treq.content(r).addCallback(lambda c: results.append((r.code, r.headers, c))))
        d.addErrback(results.append)
        self.stub.flush()
        return Pending(results)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        return self.start(method, path, body).answer()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.stub.flush()

    def create(self, name: str) -> Pending:
        return self.start("POST", f"/api/v1/namespaces/{NS}/secrets", {"metadata": {"name": name}})


@pytest.fixture
def mem() -> Mem:
    clock = Clock()
    fake = FakeKube(clock=clock, tokens={TOKEN}, initial_namespaces=(NS, "other"))
    return Mem(fake, clock, StubTreq(fake.resource()))


def names(fake: FakeKube) -> list[str]:
    return [s["metadata"]["name"] for s in fake.secrets()]


def test_mem_latency_waits_for_the_clock(mem: Mem) -> None:
    """The request is handled exactly when the clock reaches the delay."""
    latency = mem.fake.add_fault(Latency(seconds=5.0, verbs=["create"], times=1))
    pending = mem.create("late")
    read = mem.start("GET", f"/api/v1/namespaces/{NS}/secrets/late")
    assert read.answer()[0] == 404  # other verbs are not delayed
    mem.advance(4.999)
    assert not pending.done
    assert names(mem.fake) == []  # not handled yet
    mem.advance(0.001)
    assert pending.answer()[0] == 201
    assert names(mem.fake) == ["late"]
    assert latency.fired == 1
    assert mem.create("quick").answer()[0] == 201  # times=1: used up


def test_mem_latency_of_the_answer_only(mem: Mem) -> None:
    """C{answer_only}: stored at once, answered when the clock says."""
    mem.fake.add_fault(Latency(seconds=3.0, answer_only=True, verbs=["create"]))
    pending = mem.create("now")
    assert names(mem.fake) == ["now"]
    mem.advance(2.999)
    assert not pending.done
    mem.advance(0.001)
    code, _, body = pending.answer()
    assert (code, body["metadata"]["name"]) == (201, "now")


def test_mem_faults_compose(mem: Mem) -> None:
    """Delays add up and the first terminal fault answers after them."""
    mem.fake.add_fault(Latency(seconds=1.0))
    mem.fake.add_fault(Latency(seconds=2.0, resources=["secrets"]))
    mem.fake.add_fault(ErrorStorm(code=503, times=1))
    mem.fake.add_fault(ErrorStorm(code=500))
    pending = mem.create("x")
    mem.advance(2.9)
    assert not pending.done
    mem.advance(0.1)
    assert pending.answer()[0] == 503
    pending = mem.start("GET", "/version")  # not a secrets request: 1 s only
    mem.advance(1.0)
    code, _, body = pending.answer()
    assert (code, body["reason"]) == (500, "InternalError")


def test_mem_storm_fraction_is_seeded(mem: Mem) -> None:
    """C{probability} fails a share of requests, the same ones for the same seed."""

    def pattern(seed: int) -> tuple[list[int], int]:
        mem.fake.clear_faults()
        storm = mem.fake.add_fault(ErrorStorm(code=503, probability=0.5, seed=seed))
        codes = [mem.request("GET", f"/api/v1/namespaces/{NS}/secrets")[0] for _ in range(40)]
        return codes, storm.fired

    codes, fired = pattern(7)
    assert set(codes) == {200, 503}
    assert codes.count(503) == fired
    assert 5 < fired < 35
    assert pattern(7) == (codes, fired)
    assert pattern(8)[0] != codes


def test_mem_selectors_and_times(mem: Mem) -> None:
    """Verb, kind, resource and namespace select; C{times} deactivates."""
    mem.fake.add_fault(ErrorStorm(code=500, verbs="create", namespaces=["other"]))
    mem.fake.add_fault(ErrorStorm(code=502, kinds=["secret"]))
    mem.fake.add_fault(ErrorStorm(code=503, resources=["namespaces"], times=2))
    never = mem.fake.add_fault(ErrorStorm(code=504, times=0))
    assert mem.create("fine").answer()[0] == 201
    assert mem.start("POST", "/api/v1/namespaces/other/secrets", {"metadata": {"name": "o"}}).answer()[0] == 500
    assert mem.request("GET", f"/api/v1/namespaces/{NS}/secrets/fine")[0] == 502
    assert mem.request("GET", f"/api/v1/namespaces/{NS}/secrets")[0] == 200
    assert [mem.request("GET", "/api/v1/namespaces")[0] for _ in range(3)] == [503, 503, 200]
    assert mem.request("GET", f"/api/v1/namespaces/{NS}")[0] == 200
    assert [f.fired for f in mem.fake.faults if isinstance(f, ErrorStorm)] == [1, 1, 2, 0]
    assert not never.active
    assert mem.fake.clear_faults() == 4
    assert mem.fake.faults == []


def test_mem_fail_after_commit_counts_commits(mem: Mem) -> None:
    fault = mem.fake.add_fault(FailAfterCommit(verbs=["create"]))
    assert mem.create("c").answer()[0] == 500
    assert mem.create("c").answer()[0] == 409  # the real answer: nothing committed
    assert (fault.fired, fault.committed) == (2, 1)
    assert names(mem.fake) == ["c"]


def test_mem_hang(mem: Mem) -> None:
    """A hung request never completes, whatever the clock says; commit stores first."""
    mem.fake.add_fault(Hang(commit=True, verbs=["create"]))
    pending = mem.create("h")
    mem.advance(1e6)
    assert not pending.done
    assert mem.fake.hanging == 1
    assert names(mem.fake) == ["h"]
    assert mem.request("GET", f"/api/v1/namespaces/{NS}/secrets/h")[0] == 200


def test_mem_reset(mem: Mem) -> None:
    """In memory too: a 200 starts, the body breaks off, nothing stays held."""
    mem.fake.add_fault(ResetMidResponse(verbs=["get"], times=1))
    got: list[Any] = []
    d = mem.stub.get(
        f"https://kube.test/api/v1/namespaces/{NS}/secrets/x", headers={"Authorization": f"Bearer {TOKEN}"}
    )

    def received(response: Any) -> None:
        got.append(response.code)
        treq.content(response).addBoth(got.append)

    d.addCallback(received)
    mem.stub.flush()
    assert got[0] == 200
    assert got[1].check(ResponseFailed)
    assert mem.fake.hanging == 0
    assert mem.request("GET", f"/api/v1/namespaces/{NS}/secrets/x")[0] == 404


def test_mem_custom_fault_still_works(mem: Mem) -> None:
    """Plain callables returning a L{FaultResponse} keep working alongside."""

    def teapot(call: APICall) -> FaultResponse | None:
        return FaultResponse(418, b"short and stout", {"Content-Type": "text/plain"}) if call.verb == "list" else None

    mem.fake.faults.append(teapot)
    pending = mem.start("GET", f"/api/v1/namespaces/{NS}/secrets")
    assert pending.results[0][0] == 418
    assert pending.results[0][2] == b"short and stout"


def test_fault_registry_and_validation() -> None:
    assert sorted(FAULT_KINDS) == ["error_storm", "fail_after_commit", "hang", "latency", "reset", "too_many_requests"]
    assert isinstance(make_fault("reset", commit=True), ResetMidResponse)
    assert make_fault("too_many_requests").describe()["retry_after"] == 1
    bad: list[tuple[str, dict[str, Any]]] = [
        ("nope", {}),
        ("latency", {"seconds": -1}),
        ("hang", {"times": -1}),
        ("reset", {"fraction": 1.5}),
        ("error_storm", {"code": 1000}),
        ("latency", {"extra": True}),
    ]
    for kind, params in bad:
        with pytest.raises(ValueError):
            make_fault(kind, **params)
    assert TooManyRequests().id != TooManyRequests().id


# ---------------------------------------------------------------------------
# In the reactor: served over TLS or plain HTTP
# ---------------------------------------------------------------------------


def _tls_treq(served: Any) -> Any:
    from twisted.internet import reactor, ssl
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    with open(served.ca_path, "rb") as f:
        ca = ssl.Certificate.loadPEM(f.read())

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return ssl.optionsForClientTLS(hostname.decode(), trustRoot=ca)

    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=Policy(), pool=pool))


AUTH = {"Authorization": "Bearer test-token"}


@pytest_twisted.ensureDeferred
async def test_served_stop_and_start_listening(served_fake_kube: tuple[FakeKube, Any]) -> None:
    _, served = served_fake_kube
    http = _tls_treq(served)
    url = served.url + "/api/v1/namespaces/default/secrets"
    response = await http.get(url, headers=AUTH, timeout=T)
    assert response.code == 200
    await response.content()
    port = served.port_number

    await served.stop_listening()
    assert not served.listening
    with pytest.raises(ConnectionRefusedError):
        await http.get(url, headers=AUTH, timeout=T)
    await served.start_listening()
    assert (served.listening, served.port_number, served.port.getHost().port) == (True, port, port)
    response = await http.get(url, headers=AUTH, timeout=T)
    assert response.code == 200
    await response.content()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_served_start_listening_retries_while_port_is_taken() -> None:
    """EADDRINUSE: retried every C{interval}, at most C{attempts} times."""
    from twisted.internet import reactor

    served = await serve_http(reactor, FakeKube(clock=reactor))
    try:
        await served.stop_listening()
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", served.port_number))
        squatter.listen(1)
        try:
            with pytest.raises(CannotListenError):
                await served.start_listening(attempts=2, interval=0.01)
            assert not served.listening
            freed: list[bool] = []

            def free() -> None:
                squatter.close()
                freed.append(True)

            reactor.callLater(0.1, free)
            await served.start_listening(attempts=100, interval=0.02)
            # It listens, and only since the port was freed: it kept retrying.
            assert freed == [True]
        finally:
            squatter.close()
        assert served.listening
        response = await treq.get(served.url + "/version", timeout=T)
        assert response.code == 200
        await response.content()
    finally:
        await served.stop()


@pytest_twisted.ensureDeferred
async def test_served_reset_seen_by_treq(served_fake_kube: tuple[FakeKube, Any]) -> None:
    """A committed create starts its real 201, then the body breaks off."""
    fake, served = served_fake_kube
    fake.add_fault(ResetMidResponse(commit=True, verbs=["create"], times=1))
    response = await _tls_treq(served).post(
        served.url + "/api/v1/namespaces/default/secrets",
        json={"metadata": {"name": "r"}},
        headers=AUTH,
        timeout=T,
    )
    assert response.code == 201
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    with pytest.raises(ResponseFailed):
        await response.content()
    assert [s["metadata"]["name"] for s in fake.secrets()] == ["r"]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_served_hang_released_on_stop() -> None:
    """Stopping the server cuts hung requests: the client sees a failure, not a hang."""
    from twisted.internet import reactor

    fake = FakeKube(clock=reactor)
    fake.add_fault(Hang())
    with tempfile.TemporaryDirectory(prefix="fake-kube-") as cert_dir:
        served = await serve_tls(reactor, fake, cert_dir)
        try:
            d = _tls_treq(served).get(served.url + "/version", timeout=T)
            deadline = time.monotonic() + T
            while not fake.hanging and time.monotonic() < deadline:
                await deferLater(reactor, 0.01, lambda: None)
            assert fake.hanging == 1
        finally:
            await served.stop()
        with pytest.raises(ResponseFailed):
            await d
        assert fake.hanging == 0


@pytest.mark.slow
def test_process_token_may_start_with_a_dash(tmp_path: Any) -> None:
    """A random token starting with "-" is not taken for an option (1 in 64 tokens)."""
    process = FakeKubeProcess.start(str(tmp_path), token="-looks-like-an-option")
    try:
        assert process.control("GET", "/listening")["listening"] is True
    finally:
        process.stop()
