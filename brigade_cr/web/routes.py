"""
The HTTP surface: Brigade v1's webhook routes and the health check.

Domain errors become HTTP answers here (``WebhookSite._answer``), as the
one error table (``core/answers.py``) says.

Every part of the URL that becomes data is checked before the application
sees it (``url_text_problem``): the percent-decoded path (as the routes
match it), the ``Host`` header and every query name and value
(read with ``site.query_items``, the parser the access log redacts with) must
be UTF-8, else the request is answered 400
``{"status": "Bad Request", "reason": ...}`` and nothing more happens. Other
header values are decoded as ISO-8859-1 (RFC 9110 section 5.5: every byte is
one character), which always yields valid text and keeps the bytes as sent.
Text in the body is checked when the body is decoded, after authentication
(``payload.decode_document``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from brigade_cr.core.answers import answer_for
from brigade_cr.core.errors import InvalidText, InvalidURLText, ShuttingDown
from brigade_cr.core.gateway import Accepted, Gateway, Ignored
from brigade_cr.core.values import Delivery
from brigade_cr.web.clientaddr import Network, request_client_address
from brigade_cr.web.site import note_build, query_items, query_text

WEBHOOK_PREFIX = "/events/webhook/"
# How many (path, method) routings RoutedResource remembers, for paths of
# at most MATCHED_PATH_LIMIT characters (so they hold at most about 512 KiB).
MATCHES_KEPT = 1024
MATCHED_PATH_LIMIT = 512


def split_webhook_path(rest: str) -> tuple[str, str] | None:
    """
    The project reference and path commit of ``/events/webhook/<rest>``, or
    None when ``rest`` is not one of the three forms Brigade v1 serves:
    ``a`` (a project ID or a slash-less name), ``a/b`` (the name ``a/b``) and
    ``a/b/c`` (the name ``a/b``, commit ``c``).
    """
    segments = rest.split("/")
    if not 1 <= len(segments) <= 3 or not all(segments):
        return None
    if len(segments) == 3:
        return "/".join(segments[:2]), segments[2]
    return "/".join(segments), ""


def _json(request: IRequest, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=False).encode("utf-8") + b"\n"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def url_text_problem(request: IRequest) -> str | None:
    """
    Why the text of ``request``'s URL cannot become data, or None: the
    percent-decoded path, the host of the ``Host`` header, or a query name
    or value (as ``site.query_items`` reads them) is not UTF-8, or the host
    is not a host name (an empty or over-long label).
    The reason names the part, never its content.
    """
    if not _is_utf8(unquote_to_bytes(request.path)):
        return "the path is not valid UTF-8"
    try:
        host = request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "the Host header is not valid UTF-8"
    try:
        # The labels of a host name, as the IDNA codec checks them (without
        # the port): a router binding the host, as Klein's resource did,
        # would fail on "Host: .." with a 500; the answer stays a 400.
        host.partition(":")[0].encode("idna")
    except UnicodeError:
        return "the Host header is not a valid host name"
    for item in query_items(request.uri):
        if item.name is not None and not (_is_utf8(item.name) and _is_utf8(item.value or b"")):
            return "the query is not valid UTF-8"
    return None


class TextCheckedResource(Resource):
    """
    Answers ``InvalidURLText`` (400 ``{"status": "Bad Request", "reason":
    ...}``, from the error table) for a request whose URL text is not UTF-8
    (``url_text_problem``), before ``inner`` (the routes) sees it; else
    renders ``inner``.
    """

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        reason = url_text_problem(request)
        if reason is None:
            return self._inner.render(request)
        error = InvalidURLText(reason)
        answer = answer_for(error)
        body = _json(request, answer.status, answer.body(error))
        if request.method == b"HEAD":
            # twisted.web would drop the body, but log a warning first.
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


class RoutedResource(Resource):
    """
    Serves the routes and endpoints of the Klein application ``app`` (bound to
    its instance) in place of Klein's own resource: ``unrouted`` answers a path
    no route serves, a method its route does not allow and any other routing
    answer werkzeug might give (these rules ask for no redirect). An endpoint
    returns bytes, or a Deferred or coroutine of them; once the sender hangs
    up, the endpoint's Deferred is cancelled and nothing more is written. An
    endpoint's unexpected error is ``request.processingFailed`` (a 500).

    Why not Klein's resource: its render leaves every request in a reference
    cycle (a closure that refers to itself holds the request), so each
    request, its headers and its routing state waited for the cyclic garbage
    collector, whose full collections stopped the reactor for 60-140 ms under
    load (docs/performance.md, "The collector").
    """

    isLeaf = True

    def __init__(self, app: Klein, unrouted: Callable[[IRequest], bytes]) -> None:
        super().__init__()
        self._app = app
        self._unrouted = unrouted
        # Matching needs no host (no rule names one), so one adapter serves
        # every request and a Host header never reaches werkzeug.
        self._routes = app.url_map.bind("localhost")
        self._matches: dict[tuple[str, str], tuple[str, Mapping[str, Any]] | None] = {}

    def render(self, request: IRequest) -> Any:
        # As Klein matches: the percent-decoded segments twisted.web split the
        # path into (a leading "//" is one slash). Undecodable bytes stay as
        # surrogates, which a delivery refuses as its text (400).
        path = b"/".join(request.postpath)  # type: ignore[attr-defined]
        if not path.startswith(b"/"):
            path = b"/" + path
        matched = self._match(path.decode("utf-8", "surrogateescape"), request.method.decode("latin-1"))
        if matched is None:
            request.write(self._unrouted(request))
            request.finish()
            return NOT_DONE_YET
        endpoint, arguments = matched
        answer = maybeDeferred(self._app.execute_endpoint, endpoint, request, **arguments)
        _Exchange(request, answer)
        return NOT_DONE_YET

    def _match(self, path: str, method: str) -> tuple[str, Mapping[str, Any]] | None:
        """The endpoint and arguments for ``path`` and ``method``, or None when no route serves them."""
        key = (path, method)
        if key in self._matches:
            return self._matches[key]
        found: tuple[str, Mapping[str, Any]] | None
        try:
            rule, arguments = self._routes.match(path, method=method, return_rule=True)
        except HTTPException:
            found = None
        else:
            found = (rule.endpoint, arguments)
        # A registry sends every delivery to the same few paths: werkzeug's
        # matcher runs once for each, while any number of other paths keep
        # at most MATCHES_KEPT short answers.
        if len(path) <= MATCHED_PATH_LIMIT:
            if len(self._matches) >= MATCHES_KEPT:
                self._matches.clear()
            self._matches[key] = found
        return found


class _Exchange:
    """
    Writes ``answer``'s result to ``request``, unless the request has ended
    (answered, or its sender gone: then the answer is cancelled); a result
    that is not bytes, or a write that fails, is logged and the connection
    closed. Only Deferred callbacks refer to it, so it goes when the request
    does.
    """

    log = Logger()

    def __init__(self, request: IRequest, answer: Deferred[Any]) -> None:
        self._request = request
        self._answer = answer
        self._ended = False
        request.notifyFinish().addCallbacks(self._finished, self._hung_up)  # type: ignore[attr-defined]
        answer.addCallbacks(self._write, self._failed).addErrback(self._unwritten)

    def _finished(self, _: object) -> None:
        self._ended = True

    def _hung_up(self, _: Failure) -> None:
        # Ended first, so the cancellation below is not answered.
        self._ended = True
        self._answer.cancel()

    def _write(self, body: bytes) -> None:
        if not self._ended:
            if not isinstance(body, bytes):
                raise TypeError(f"an endpoint answered {type(body).__name__}, not bytes")
            self._request.write(body)
            self._request.finish()

    def _failed(self, failure: Failure) -> None:
        if not self._ended:
            self._request.processingFailed(failure)  # type: ignore[attr-defined]
        elif not failure.check(CancelledError):
            self.log.failure("Unhandled error after the sender went away", failure)

    def _unwritten(self, failure: Failure) -> None:
        # Not an answer (an endpoint's bug), or the write itself failed:
        # nothing more can be said on this connection, and it must not be
        # left waiting for a response that will never come.
        self.log.failure("Could not write an answer; closed the connection", failure)
        if not self._ended:
            self._request.loseConnection()  # type: ignore[attr-defined]


@attrs.define
class WebhookSite:
    """
    The Klein application: ``POST /events/webhook/...``, ``GET /healthz``
    (liveness: the reactor answers) and ``GET /readyz`` (readiness: deliveries
    can be accepted durably).

    ``clock`` stamps each delivery's receive time. ``readiness()`` returns
    None when ready, else a short reason. Once ``shutting_down`` is set, new
    deliveries are refused with 503 while those in flight finish.
    """

    gateway: Gateway
    clock: IReactorTime
    readiness: Callable[[], str | None] = lambda: None
    shutting_down: bool = False
    # Proxies whose X-Forwarded-For / Forwarded name the client (--trusted-proxy).
    trusted_proxies: Sequence[Network] = ()
    _in_flight: int = attrs.field(default=0, init=False)
    _idle_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    app = Klein()
    # werkzeug would answer "//" in a path with a redirect to itself; an
    # empty segment is simply not a route here.
    app.url_map.merge_slashes = False
    log = Logger()

    def resource(self) -> Any:
        """The ``twisted.web`` resource serving this application."""
        return TextCheckedResource(self.routes())

    def routes(self) -> RoutedResource:
        """The application's routes alone, without ``TextCheckedResource``'s check."""
        return RoutedResource(self.app, self._not_found)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK"

    def not_ready(self) -> str | None:
        """Why deliveries cannot be accepted durably now, or None."""
        if self.shutting_down:
            return "shutting down"
        return self.readiness()

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        reason = self.not_ready()
        if reason is None:
            return b"OK"
        request.setResponseCode(503)
        return f"not ready: {reason}".encode()

    @property
    def in_flight(self) -> int:
        """Deliveries being handled now."""
        return self._in_flight

    def idle(self) -> Deferred[None]:
        """A Deferred that fires once no delivery is in flight."""
        if self._in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    @app.route(WEBHOOK_PREFIX + "<path:rest>", methods=["POST"])
    async def webhook(self, request: IRequest, rest: str) -> bytes:
        if self.shutting_down:
            return self._answer(request, ShuttingDown(), "")
        self._in_flight += 1
        try:
            return await self._webhook(request, rest)
        except InvalidText as e:
            # Only making the Delivery raises this here (the gateway's errors
            # are answered in _webhook): it is the URL's text, answered as
            # TextCheckedResource (which refuses such URLs first) answers it;
            # this keeps the app as safe without it.
            return self._answer(request, InvalidURLText(e.message), "")
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    if not waiter.called:  # a waiter may have timed out
                        waiter.callback(None)

    async def _webhook(self, request: IRequest, rest: str) -> bytes:
        parts = split_webhook_path(rest)
        if parts is None:
            return self._not_found(request)
        project_ref, path_commit = parts
        body = request.content.read() if request.content is not None else b""
        # The query as the access log's redactor reads it, so the two cannot
        # disagree about what is a ?token=.
        query = query_text(request.uri)
        delivery = Delivery(
            project_ref=project_ref,
            # A non-empty ?commit= wins over the path's commit.
            commit=dict(query).get("commit") or path_commit,
            body=body,
            received=datetime.fromtimestamp(self.clock.seconds(), tz=timezone.utc),
            headers=[
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            query=query,
            source=request_client_address(request, self.trusted_proxies),
        )
        try:
            outcome = await self.gateway.receive(delivery)
        except CancelledError:
            # RoutedResource cancels the handler when the sender hangs up: nobody is
            # left to answer, and nothing went wrong on this side. (A spooled
            # record, once written, is kept and built all the same.)
            self.log.info(
                "The sender of a delivery for {project_ref!r} went away before its answer",
                project_ref=project_ref,
            )
            raise
        except Exception as e:
            return self._answer(request, e, project_ref, Failure())
        if isinstance(outcome, Ignored):
            return _json(
                request,
                200,
                {
                    "status": "Success",
                    "project_id": outcome.project_id,
                    "event_provider": outcome.event_provider,
                    "ignored": outcome.reason,
                },
            )
        assert isinstance(outcome, Accepted)
        build = outcome.build
        note_build(request, outcome.receipt.build_name)
        return _json(
            request,
            # 202: durably queued, the build will be created under that name.
            202 if outcome.receipt.queued else 200,
            {
                "status": "Success",
                "build_id": outcome.receipt.build_name,
                "build": build.ulid,
                "project_id": build.project_id,
                "event_type": build.event_type,
                "event_provider": build.event_provider,
                "commit_ref": build.commit_ref,
                "duplicate": outcome.receipt.duplicate,
                "queued": outcome.receipt.queued,
            },
        )

    def _answer(
        self, request: IRequest, error: BaseException, project_ref: str, failure: Failure | None = None
    ) -> bytes:
        """
        The one place a domain error becomes an HTTP answer: its status, body,
        ``Retry-After``, ``connection: close`` and log line, all from the
        error table (``core.answers.answer_for``). ``failure`` carries the
        traceback logged for an unexpected error.
        """
        answer = answer_for(error)
        retry_after = answer.retry_after_of(error)
        if answer.log_level is not None:
            fields = answer.log_fields(error, project_ref)
            if answer.traceback:
                self.log.failure(answer.log_format, failure, answer.log_level, **fields)
            else:
                self.log.emit(answer.log_level, answer.log_format, **fields)
        if retry_after is not None:
            request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
        if answer.close:
            request.setHeader(b"connection", b"close")
        return _json(request, answer.status, answer.body(error))

    def _not_found(self, request: IRequest) -> bytes:
        # The old gateway answered 404 for unknown paths and wrong methods
        # alike (Klein would say 405 for the latter).
        return _json(request, 404, {"status": "Not Found"})


def make_site_resource(gateway: Gateway, clock: IReactorTime) -> Any:
    """The root resource for ``gateway`` (always ready)."""
    return WebhookSite(gateway, clock).resource()
