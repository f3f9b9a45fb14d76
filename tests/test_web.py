"""The HTTP surface, driven in memory through the real Klein app and twisted.web."""

from __future__ import annotations

import gc
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import BackendRejected, BackendUnavailable
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import SpooledBuilds
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from brigade_cr.web.routes import WebhookSite, make_site_resource, split_webhook_path
from tests.backend_contract import project_secret
from tests.helpers import result_of

PAYLOADS = Path(__file__).parent / "payloads"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = b"web-test-secret"


class Harness:
    """A gateway over memory stores, served by the real site resource through StubTreq."""

    def __init__(self) -> None:
        self.projects = MemoryProjects()
        for name in ("acme/webapp", "solo"):
            self.projects.add(project_secret(name, crGatewaySecret=SECRET))
        self.builds = MemoryBuilds()
        clock = Clock()
        clock.advance(NOW.timestamp())
        self.gateway = Gateway(self.projects, self.builds, clock)
        self.treq: Any = StubTreq(make_site_resource(self.gateway, clock))  # methods set at run time

    def request(
        self, method: str, path: str, body: bytes = b"", authenticate: bool = True, **kwargs: Any
    ) -> tuple[int, dict[str, Any] | bytes, Any]:
        """One request; with ``authenticate`` it carries the secret as a bearer token."""
        if authenticate:
            kwargs.setdefault("headers", {})["Authorization"] = "Bearer " + SECRET.decode()
        response = self.treq.request(method, "http://gw.example" + path, data=body, **kwargs)
        self.treq.flush()
        response = result_of(response)
        content = result_of(response.content())
        self.treq.flush()
        if response.headers.getRawHeaders(b"content-type", [b""])[0] == b"application/json":
            assert content.endswith(b"\n")
            return response.code, json.loads(content), response.headers
        return response.code, content, response.headers

    def only_build(self) -> dict[str, Any]:
        assert len(self.builds.secrets) == 1
        return next(iter(self.builds.secrets.values()))


@implementer(IBuilds)
@attrs.define
class FailingBuilds:
    """A store whose every submit fails with ``error``."""

    error: Exception

    def submit(self, build: Build) -> Deferred[Receipt]:
        return fail(self.error)


@pytest.fixture
def web() -> Harness:
    return Harness()


def _data(secret: dict[str, Any], key: str) -> bytes:
    import base64

    return base64.b64decode(secret["data"][key])


def test_healthz(web: Harness) -> None:
    """GET /healthz answers 200 text/plain OK."""
    code, body, headers = web.request("GET", "/healthz")
    assert (code, body) == (200, b"OK")
    assert headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]


@pytest.mark.parametrize(
    ("path", "project", "commit"),
    [
        ("/events/webhook/solo", "solo", "master"),
        ("/events/webhook/solo?commit=abc", "solo", "abc"),
        ("/events/webhook/acme/webapp", "acme/webapp", "master"),
        ("/events/webhook/acme/webapp?commit=abc", "acme/webapp", "abc"),
        ("/events/webhook/acme/webapp/v1", "acme/webapp", "v1"),
        ("/events/webhook/acme/webapp/v1?commit=abc", "acme/webapp", "abc"),
        ("/events/webhook/acme/webapp/v1?commit=", "acme/webapp", "v1"),
        ("/events/webhook/acme%2Fwebapp", "acme/webapp", "master"),
        ("/events/webhook/acme%2Fwebapp%2Fv2", "acme/webapp", "v2"),
        ("/events/webhook/" + project_id("acme/webapp"), "acme/webapp", "master"),
        ("/events/webhook/" + project_id("acme/webapp") + "?commit=c1", "acme/webapp", "c1"),
    ],
)
def test_route_forms(web: Harness, path: str, project: str, commit: str) -> None:
    """Every Brigade v1 route form finds its project and commit."""
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    code, answer, _ = web.request("POST", path, body)
    secret = web.only_build()
    assert code == 200
    assert answer == {
        "status": "Success",
        "build_id": secret["metadata"]["name"],
        "build": secret["metadata"]["labels"]["build"],
        "project_id": project_id(project),
        "event_type": "image_push",
        "event_provider": "dockerhub",
        "commit_ref": commit,
        "duplicate": False,
        "queued": False,
    }
    assert _data(secret, "commit_ref") == commit.encode()
    assert _data(secret, "payload") == body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("POST", "/events/webhook"),
        ("POST", "/events/webhook/"),
        ("POST", "/events/webhook/a/b/c/d"),
        ("POST", "/events/webhook/a//b"),
        ("POST", "/events/webhook//solo"),
        ("POST", "/events/webhook/a/"),
        ("POST", "/healthz"),
        ("GET", "/events/webhook/solo"),
        ("PUT", "/events/webhook/solo"),
        ("GET", "/nothing"),
    ],
)
def test_everything_else_is_404(web: Harness, method: str, path: str) -> None:
    """Unknown paths and wrong methods answer 404 with a JSON status, and build nothing."""
    code, body, _ = web.request(method, path, b"{}")
    assert (code, body) == (404, {"status": "Not Found"})
    assert web.builds.secrets == {}


@pytest.mark.parametrize(
    ("path", "authenticate", "query"),
    [
        ("/events/webhook/nobody/here", True, ""),
        ("/events/webhook/fake", True, ""),
        ("/events/webhook/solo", False, ""),
        ("/events/webhook/solo", False, "?token=wrong"),
        ("/events/webhook/keyless", True, ""),
    ],
)
def test_refusals_are_identical(web: Harness, path: str, authenticate: bool, query: str) -> None:
    """Unknown project, non-project Secret, missing or wrong secret, project without a secret: one answer."""
    web.projects.add(project_secret("fake", secret_type="brigade.sh/build", crGatewaySecret=SECRET))
    web.projects.add(project_secret("keyless"))
    code, body, headers = web.request("POST", path + query, b"{}", authenticate=authenticate)
    assert (code, body) == (403, {"status": "Forbidden"})
    assert headers.getRawHeaders(b"retry-after") is None
    assert web.builds.secrets == {}


def test_failed_authentications_get_429(web: Harness) -> None:
    """Past the burst of failed authentications, a source gets 429 with Retry-After."""
    web.gateway.auth_failures = RateLimiter(Clock(), per_second=1 / 60, burst=2)
    for _ in range(2):
        assert web.request("POST", "/events/webhook/solo?token=guess", b"{}", authenticate=False)[0] == 403
    code, body, headers = web.request("POST", "/events/webhook/solo", b"{}")
    assert (code, body) == (429, {"status": "Too Many Requests"})
    assert headers.getRawHeaders(b"retry-after") == [b"60"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is empty"),
        (b"\xff\xfe", "body is not UTF-8"),
        (b"{nope", "body is not JSON"),
        (b"[]", "body is not a JSON object"),
    ],
)
def test_malformed_bodies(web: Harness, body: bytes, reason: str) -> None:
    """Malformed bodies answer 400 with a reason and create nothing."""
    code, answer, _ = web.request("POST", "/events/webhook/solo", body)
    assert (code, answer) == (400, {"status": "Malformed body", "reason": reason})
    assert web.builds.secrets == {}


def test_ping_is_200_without_build(web: Harness) -> None:
    """An ACR ping answers 200 and creates no build."""
    code, body, _ = web.request("POST", "/events/webhook/solo", (PAYLOADS / "acr_ping.json").read_bytes())
    assert (code, body) == (
        200,
        {"status": "Success", "project_id": project_id("solo"), "event_provider": "acr", "ignored": "ping"},
    )
    assert web.builds.secrets == {}


def test_store_down_is_503(web: Harness) -> None:
    """A store outage answers 503 with Retry-After, never 200."""
    web.builds.down = True
    code, body, headers = web.request("POST", "/events/webhook/solo", b"{}")
    assert (code, body) == (503, {"status": "Service Unavailable"})
    assert headers.getRawHeaders(b"retry-after") == [b"1"]


def test_retry_after_defaults(web: Harness) -> None:
    """Without a hint from the store, Retry-After is 10 seconds."""
    web.gateway.builds = FailingBuilds(BackendUnavailable("down"))
    code, _, headers = web.request("POST", "/events/webhook/solo", b"{}")
    assert code == 503
    assert headers.getRawHeaders(b"retry-after") == [b"10"]


def test_store_rejects_is_502(web: Harness) -> None:
    """A permanent refusal from the store answers 502, never 200."""
    web.gateway.builds = FailingBuilds(BackendRejected("422 Invalid"))
    code, body, _ = web.request("POST", "/events/webhook/solo", b"{}")
    assert (code, body) == (502, {"status": "Build refused by Kubernetes"})


def test_unexpected_error_is_500(web: Harness) -> None:
    """A bug answers 500 with a generic body, not a traceback."""
    web.gateway.builds = FailingBuilds(ZeroDivisionError("boom"))
    code, body, _ = web.request("POST", "/events/webhook/solo", b"{}")
    assert (code, body) == (500, {"status": "Internal Server Error"})


def test_headers_reach_recognition(web: Harness) -> None:
    """Request headers are seen by recognition (ACR's user agent)."""
    code, body, _ = web.request(
        "POST",
        "/events/webhook/solo",
        (PAYLOADS / "acr_push.json").read_bytes(),
        headers={"User-Agent": "AzureContainerRegistry/1.0"},
    )
    assert code == 200
    assert isinstance(body, dict) and body["event_provider"] == "acr"


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("a", ("a", "")),
        ("a/b", ("a/b", "")),
        ("a/b/c", ("a/b", "c")),
        ("a/b/c/d", None),
        ("", None),
        ("a//c", None),
        ("/a", None),
    ],
)
def test_split_webhook_path(rest: str, expected: tuple[str, str] | None) -> None:
    """The three Brigade v1 path forms, and nothing else."""
    assert split_webhook_path(rest) == expected


def test_readyz_and_shutdown(web: Harness) -> None:
    """/readyz is 200 until shutdown begins (or the store is not ready); then webhooks get 503, /healthz stays 200."""
    site = WebhookSite(web.gateway, Clock())
    treq: Any = StubTreq(site.resource())

    def get(path: str, method: str = "GET") -> tuple[int, bytes]:
        response = treq.request(method, "http://gw.example" + path, data=b"{}")
        treq.flush()
        answer = result_of(response)
        return answer.code, result_of(answer.content())

    assert get("/readyz") == (200, b"OK")
    site.readiness = lambda: "spool full"
    assert get("/readyz") == (503, b"not ready: spool full")
    site.readiness = lambda: None
    site.shutting_down = True
    assert get("/readyz") == (503, b"not ready: shutting down")
    assert get("/healthz") == (200, b"OK")
    code, body = get("/events/webhook/solo", "POST")
    assert (code, body) == (503, b'{"status": "Service Unavailable"}\n')
    assert web.builds.secrets == {}


@implementer(IBuilds)
@attrs.define
class PendingBuilds:
    """A store whose submits wait until the test fires them."""

    pending: list[Deferred[Receipt]] = attrs.Factory(list)

    def submit(self, build: Build) -> Deferred[Receipt]:
        waiting: Deferred[Receipt] = Deferred()
        self.pending.append(waiting)
        return waiting


def test_idle_waits_for_in_flight(web: Harness) -> None:
    """idle() fires at once with nothing in flight, else only once the last delivery is answered."""
    store = PendingBuilds()
    web.gateway.builds = store
    site = WebhookSite(web.gateway, Clock())
    treq: Any = StubTreq(site.resource())
    now: list[None] = []
    site.idle().addCallback(now.append)
    assert now == [None]
    response = treq.post(
        "http://gw.example/events/webhook/solo", data=b"{}", headers={"Authorization": "Bearer " + SECRET.decode()}
    )
    treq.flush()
    assert site.in_flight == 1
    later: list[None] = []
    site.idle().addCallback(later.append)
    assert later == []
    store.pending[0].callback(Receipt("brigade-worker-x"))
    treq.flush()
    assert later == [None]
    assert site.in_flight == 0
    assert result_of(response).code == 200


# -- text at the edge -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/events/webhook/%ff", "the path is not valid UTF-8"),
        ("/events/webhook/solo/%C3", "the path is not valid UTF-8"),
        ("/healthz%ff", "the path is not valid UTF-8"),
        ("/events/webhook/solo?commit=%ff", "the query is not valid UTF-8"),
        ("/events/webhook/solo?commit=%ED%B2%80", "the query is not valid UTF-8"),
        ("/events/webhook/solo?registry=dockerhub&%ff=", "the query is not valid UTF-8"),
        ("/healthz?x=%ff", "the query is not valid UTF-8"),
    ],
)
def test_url_text_not_utf8_is_400(web: Harness, path: str, reason: str) -> None:
    """A path or query that is not UTF-8 gets a JSON 400 (not Klein's HTML page), before anything is stored."""
    code, body, headers = web.request("POST" if "webhook" in path else "GET", path, b"{}")
    assert (code, body) == (400, {"status": "Bad Request", "reason": reason})
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert web.builds.secrets == {}


def test_url_text_is_checked_before_authentication(web: Harness) -> None:
    """Without credentials, ?commit=%ff is still the 400 (the URL is checked first, and says nothing of projects)."""
    code, body, _ = web.request("POST", "/events/webhook/nobody?commit=%ff", b"{}", authenticate=False)
    assert (code, body) == (400, {"status": "Bad Request", "reason": "the query is not valid UTF-8"})


def test_utf8_url_text_reaches_the_build(web: Harness) -> None:
    """Non-ASCII UTF-8 in the path commit and the query is data like any other."""
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    code, answer, _ = web.request("POST", "/events/webhook/acme/webapp/v%C3%A9?x=%E2%82%AC", body)
    assert code == 200
    assert isinstance(answer, dict) and answer["commit_ref"] == "v\u00e9"
    assert _data(web.only_build(), "commit_ref") == "v\u00e9".encode()


def dockerhub_body(repo_name: str) -> bytes:
    document = json.loads((PAYLOADS / "dockerhub_push.json").read_text())
    document["repository"]["repo_name"] = repo_name
    return json.dumps(document).encode()


def test_lone_surrogate_in_body_is_400(web: Harness) -> None:
    """A repository name "\\udc80" in the JSON body is a 400 Malformed body, and nothing is built."""
    body = dockerhub_body("acme/\udc80")
    assert b'"acme/\\udc80"' in body
    code, answer, _ = web.request("POST", "/events/webhook/solo", body)
    assert (code, answer) == (400, {"status": "Malformed body", "reason": "body has text that is not valid Unicode"})
    assert web.builds.secrets == {}


@pytest.fixture
def spooled(tmp_path: Path) -> Iterator[tuple[Harness, SpooledBuilds]]:
    harness = Harness()
    spool = SpooledBuilds(tmp_path / "spool", harness.builds, Clock(), InlineIO())
    result_of(spool.start())
    harness.gateway.builds = spool
    yield harness, spool
    result_of(spool.stop(0))


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        (
            "/events/webhook/solo?commit=%ff",
            (PAYLOADS / "dockerhub_push.json").read_bytes(),
            {"status": "Bad Request", "reason": "the query is not valid UTF-8"},
        ),
        (
            "/events/webhook/solo",
            dockerhub_body("acme/\udc80"),
            {"status": "Malformed body", "reason": "body has text that is not valid Unicode"},
        ),
        (
            "/events/webhook/solo",
            dockerhub_body("\ud800"),
            {"status": "Malformed body", "reason": "body has text that is not valid Unicode"},
        ),
    ],
)
def test_bad_text_is_never_spooled(
    spooled: tuple[Harness, SpooledBuilds], path: str, body: bytes, answer: dict[str, str]
) -> None:
    """With a spool, unencodable text is the same 400: no record is written, none is dead-lettered."""
    web, spool = spooled
    code, got, _ = web.request("POST", path, body)
    assert (code, got) == (400, answer)
    assert spool.stats().queued == 0
    assert sorted(path.name for path in spool.directory.iterdir()) == ["spool.lock"]
    # The spool still takes a good delivery.
    code, _, _ = web.request("POST", "/events/webhook/solo", (PAYLOADS / "dockerhub_push.json").read_bytes())
    assert code == 200
    assert len(web.builds.secrets) == 1


@pytest.mark.parametrize(
    "target, reason",
    [
        ("solo?commit=%ff", "the query is not valid UTF-8"),
        ("solo%ff", "Delivery.project_ref is not valid UTF-8 text"),
    ],
)
def test_the_routes_alone_refuse_bad_url_text(web: Harness, target: str, reason: str) -> None:
    """Served without TextCheckedResource, the webhook route still answers bad URL text with the 400."""
    treq: Any = StubTreq(WebhookSite(web.gateway, Clock()).routes())
    response = treq.post(
        "http://gw.example/events/webhook/" + target,
        data=(PAYLOADS / "dockerhub_push.json").read_bytes(),
        headers={"Authorization": "Bearer " + SECRET.decode()},
    )
    treq.flush()
    answer = result_of(response)
    assert answer.code == 400
    assert json.loads(result_of(answer.content())) == {"status": "Bad Request", "reason": reason}
    assert web.builds.secrets == {}


class _Hanging:
    """An ``IBuilds`` whose submits never answer, counting how many were cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0

    def submit(self, build: object) -> Deferred[object]:
        def cancel(_: Deferred[object]) -> None:
            self.cancelled += 1

        return Deferred(cancel)


def test_sender_hanging_up_is_no_error() -> None:
    """
    A sender that disconnects while its delivery waits for the store is
    logged as gone (info), with no error, no traceback and no answer.
    """
    from tests.wire import Wire, request

    with Wire() as wire:
        hanging = _Hanging()
        wire.gateway.builds = hanging  # type: ignore[assignment]
        channel, transport = wire.connect()
        body = b'{"push_data": {"tag": "v1", "pushed_at": 1}, "repository": {"repo_name": "acme/webapp"}}'
        wire.send(channel, request("POST", b"/events/webhook/solo", body, bearer=True), settle=0.5)
        assert transport.value() == b""
        channel.connectionLost(Failure(ConnectionDone()))
        wire.reactor.advance(1)
        assert hanging.cancelled == 1
        assert wire.failures() == []
        assert [formatEvent(event) for event in wire.events if event["log_level"] >= LogLevel.warn] == []
        assert "The sender of a delivery for 'solo' went away before its answer" in wire.log_text()


def _live_requests() -> int:
    from brigade_cr.web.site import LimitedRequest

    return sum(1 for thing in gc.get_objects() if isinstance(thing, LimitedRequest))


def test_answered_requests_are_freed_without_the_collector() -> None:
    """
    With the cyclic garbage collector off, every request answered on a
    connection (a build, a duplicate, a health check, a readiness check, an
    unknown path) is gone once its connection is: reference counting alone
    frees them (Klein's own resource left each in a reference cycle).
    """
    from tests.wire import Wire, request

    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    with Wire() as wire:
        gc.collect()
        before = _live_requests()
        gc.disable()
        try:
            channel, transport = wire.connect()
            for data in (
                request("POST", b"/events/webhook/solo", body, bearer=True),
                request("POST", b"/events/webhook/solo", body, bearer=True),
                request("GET", b"/healthz"),
                request("GET", b"/readyz"),
                request("GET", b"/nowhere"),
            ):
                wire.send(channel, data, settle=0.1)
            assert transport.value().count(b"HTTP/1.1 ") == 5
            assert b'"duplicate": true' in transport.value()
            channel.connectionLost(Failure(ConnectionDone()))
            del channel, transport
            assert _live_requests() == before
        finally:
            gc.enable()


def test_an_endpoint_that_fails_is_a_500_with_its_traceback_logged() -> None:
    """A route whose code raises is answered twisted.web's 500, and the failure is logged with its traceback."""
    from tests.wire import Wire, request

    def broken() -> str | None:
        raise ZeroDivisionError("readiness broke")

    with Wire() as wire:
        wire.webhooks.readiness = broken
        responses, _ = wire.exchange(request("GET", b"/readyz"))
        assert [response.code for response in responses] == [500]
        assert [event["log_failure"].type for event in wire.failures()] == [ZeroDivisionError]
        assert "readiness broke" not in responses[0].body.decode()


def test_routing_is_remembered_within_a_bound(web: Harness) -> None:
    """
    The routes answer the same for a path seen before (a build, then its
    duplicate; an unknown path twice), and however many distinct paths
    arrive, at most MATCHES_KEPT routings are kept, none for a path over
    MATCHED_PATH_LIMIT characters.
    """
    from brigade_cr.web.routes import MATCHED_PATH_LIMIT, MATCHES_KEPT

    routes = WebhookSite(web.gateway, Clock()).routes()
    treq: Any = StubTreq(routes)
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()

    def post(path: str) -> tuple[int, Any]:
        response = treq.post(
            "http://gw.example" + path, data=body, headers={"Authorization": "Bearer " + SECRET.decode()}
        )
        treq.flush()
        answer = result_of(response)
        return answer.code, json.loads(result_of(answer.content()))

    first, second = post("/events/webhook/solo"), post("/events/webhook/solo")
    assert (first[0], first[1]["duplicate"]) == (200, False)
    assert (second[0], second[1]["duplicate"], second[1]["build_id"]) == (200, True, first[1]["build_id"])
    assert post("/nowhere") == post("/nowhere") == (404, {"status": "Not Found"})
    for n in range(MATCHES_KEPT + 10):
        treq.get(f"http://gw.example/nowhere/{n}")
    treq.flush()
    assert 0 < len(routes._matches) <= MATCHES_KEPT
    assert post("/events/webhook/solo")[0] == 200
    long = "/events/webhook/" + "x" * MATCHED_PATH_LIMIT
    kept = dict(routes._matches)
    assert post(long)[0] == 403  # no such project; routed, not remembered
    assert routes._matches == kept


class _Odd:
    """A Klein app whose endpoint answers text, not bytes (a bug RoutedResource must survive)."""

    app = Klein()

    @app.route("/odd")
    def odd(self, request: Any) -> Any:
        return "not bytes"


def test_an_answer_that_is_not_bytes_closes_the_connection() -> None:
    """
    An endpoint answering something other than bytes is logged with its
    traceback and its connection closed, never left hanging.
    """
    from brigade_cr.web.routes import RoutedResource
    from tests.wire import Wire, request

    with Wire() as wire:
        wire.site.resource = RoutedResource(_Odd().app, lambda request: b"unrouted")
        channel, transport = wire.connect()
        wire.send(channel, request("GET", b"/odd"), settle=0.1)
        assert transport.value() == b""
        assert transport.disconnecting
        assert [event["log_failure"].type for event in wire.failures()] == [TypeError]
