"""
The Kubernetes project watch (``kube/watch.py``) and the client's streaming
call (``KubeClient.watch_secrets``), in memory: the fake API over
``StubTreq`` on a ``Clock``, so every delay is exact and nothing sleeps.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from brigade_cr.core.contract import project_id
from brigade_cr.core.values import Project
from brigade_cr.stores.kube.client import KubeClient, KubeStatusError, KubeTransportError
from brigade_cr.stores.kube.credentials import StaticToken
from brigade_cr.stores.kube.watch import PROJECT_SELECTOR, ProjectWatch
from brigade_cr.stores.retry import Backoff
from tests.backend_contract import project_secret
from tests.helpers import failure_of
from tests.kubeapi import FakeKube

TOKEN = "t0ken"
NS = "brigade"
A = project_id("acme/a")
B = project_id("acme/b")


@attrs.define
class Sink:
    """Records what a source tells, in order."""

    told: list[tuple[str, Any]] = attrs.Factory(list)

    def replace(self, projects: dict[str, Project]) -> None:
        self.told.append(("replace", {k: v.cr_gateway_secret for k, v in sorted(projects.items())}))

    def put(self, project: Project) -> None:
        self.told.append(("put", (project.id, project.cr_gateway_secret)))

    def remove(self, project_id: str) -> None:
        self.told.append(("remove", project_id))

    def broken(self, reason: str) -> None:
        self.told.append(("broken", reason))


@attrs.define
class Harness:
    fake: FakeKube
    clock: Clock
    stub: StubTreq
    client: KubeClient
    watch: ProjectWatch
    sink: Sink

    def flush(self) -> None:
        self.stub.flush()

    def advance(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, delivering what is sent at each second at most."""
        self.stub.flush()
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.stub.flush()
        rest = seconds - int(seconds)
        if rest > 1e-12:
            self.clock.advance(rest)
            self.stub.flush()

    def calls(self, verb: str) -> list[dict[str, str]]:
        return [dict(c.query) for c in self.fake.calls if c.verb == verb]


def harness(resync: float = 300.0, watch_timeout: int = 240, page_size: int = 500, **fake_args: Any) -> Harness:
    clock = Clock()
    fake = FakeKube(clock=clock, tokens=frozenset({TOKEN}), initial_namespaces=[NS], **fake_args)
    stub = StubTreq(fake.resource())
    client = KubeClient(stub, "https://kube.example:6443", StaticToken(TOKEN), clock)
    watch = ProjectWatch(
        client,
        NS,
        clock,
        backoff=Backoff(random=lambda: 0.0, base=0.25),
        resync=resync,
        watch_timeout=watch_timeout,
        page_size=page_size,
    )
    return Harness(fake, clock, stub, client, watch, Sink())


def seed(h: Harness, name: str, secret: bytes, secret_type: str = "brigade.sh/project") -> dict[str, Any]:
    return h.fake.put_secret(NS, project_secret(name, secret_type=secret_type, crGatewaySecret=secret))


def rekey(h: Harness, pid: str, secret: bytes) -> None:
    stored = h.fake.get_secret(NS, pid)
    assert stored is not None
    stored = json.loads(json.dumps(stored))
    stored["data"]["crGatewaySecret"] = base64.b64encode(secret).decode()
    h.fake.put_secret(NS, stored)


def test_list_then_watch_from_its_resource_version() -> None:
    """
    The watch lists project Secrets only (field selector), then watches from
    the list's resourceVersion with bookmarks; ADDED, MODIFIED and DELETED
    become put and remove; a non-project Secret never reaches the sink.
    """
    h = harness()
    seed(h, "acme/a", b"secret-a")
    seed(h, "impostor", b"x", secret_type="brigade.sh/build")
    listed_at = str(h.fake.resource_version)
    h.watch.start(h.sink)
    h.flush()
    assert h.sink.told == [("replace", {A: b"secret-a"})]
    assert h.calls("list") == [{"fieldSelector": PROJECT_SELECTOR, "limit": "500"}]
    assert h.calls("watch") == [
        {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
            "fieldSelector": PROJECT_SELECTOR,
            "resourceVersion": listed_at,
        }
    ]
    seed(h, "acme/b", b"secret-b")
    rekey(h, A, b"secret-a2")
    seed(h, "other-build", b"y", secret_type="brigade.sh/build")
    h.fake.delete_secret(NS, B)
    h.flush()
    assert h.sink.told[1:] == [("put", (B, b"secret-b")), ("put", (A, b"secret-a2")), ("remove", B)]
    assert h.watch.resource_version == str(h.fake.resource_version)
    assert len(h.calls("list")) == 1
    assert len(h.calls("get")) == 0
    h.watch.stop()
    h.flush()
    assert h.fake.active_watches == 0


def test_paged_list() -> None:
    """A list larger than a page is read page by page into one replace."""
    h = harness(page_size=2)
    for n in range(5):
        seed(h, f"p{n}", f"secret-{n}".encode())
    h.watch.start(h.sink)
    h.flush()
    assert h.sink.told == [("replace", {project_id(f"p{n}"): f"secret-{n}".encode() for n in range(5)})]
    pages = h.calls("list")
    assert [p.get("limit") for p in pages] == ["2", "2", "2"]
    assert ["continue" in p for p in pages] == [False, True, True]
    h.watch.stop()


def test_clean_end_resumes_from_bookmark_without_listing() -> None:
    """
    A watch the server ends (timeoutSeconds) is reopened at once from the
    last resourceVersion seen, a BOOKMARK's included; no list is needed.
    """
    h = harness()
    seed(h, "acme/a", b"secret-a")
    h.watch.start(h.sink)
    h.flush()
    seed(h, "unrelated", b"z", secret_type="Opaque")
    h.advance(240)
    assert h.watch.resource_version == str(h.fake.resource_version)
    assert len(h.calls("list")) == 1
    watches = h.calls("watch")
    assert [w["resourceVersion"] for w in watches] == [str(h.fake.resource_version - 1), str(h.fake.resource_version)]
    # The second watch asks the server to end it at the resync.
    assert watches[1]["timeoutSeconds"] == "60"
    assert h.sink.told == [("replace", {A: b"secret-a"})]
    h.watch.stop()


def test_periodic_resync_lists_again() -> None:
    """Every resync seconds the set is listed again in full, and replaced."""
    h = harness(resync=300.0)
    seed(h, "acme/a", b"secret-a")
    h.watch.start(h.sink)
    h.flush()
    h.advance(299)
    assert len(h.calls("list")) == 1
    h.advance(1)
    assert len(h.calls("list")) == 2
    assert h.sink.told == [("replace", {A: b"secret-a"}), ("replace", {A: b"secret-a"})]
    h.watch.stop()


def test_expired_resource_version_relists() -> None:
    """An ERROR event with code 410 (history compacted) makes the watch list again."""
    h = harness(history_limit=2)
    seed(h, "acme/a", b"secret-a")
    h.watch.start(h.sink)
    h.flush()
    # The stream ends; meanwhile three writes push the history past our version.
    h.advance(1)
    h.fake.close_watches()
    seed(h, "acme/b", b"secret-b")
    for n in range(3):
        seed(h, f"noise-{n}", b"n", secret_type="Opaque")
    h.flush()
    # The resumed watch is told 410 at once: the relist follows the first
    # backoff step.
    assert [c.verb for c in h.fake.calls] == ["list", "watch", "watch"]
    h.advance(0.125)
    assert len(h.calls("list")) == 2
    assert h.sink.told == [("replace", {A: b"secret-a"}), ("replace", {A: b"secret-a", B: b"secret-b"})]
    assert [c.verb for c in h.fake.calls] == ["list", "watch", "watch", "list", "watch"]
    h.watch.stop()


def test_expired_as_http_status_relists() -> None:
    """A 410 answer to the watch request itself also means list again, at once."""
    h = harness()
    seed(h, "acme/a", b"secret-a")
    h.fake.fail_with(410, verbs=["watch"])
    h.watch.start(h.sink)
    h.flush()
    assert [c.verb for c in h.fake.calls] == ["list", "watch"]
    h.fake.fail_with(None)
    # A 410 within a second of the watch's start: the relist waits the
    # first backoff step (no busy loop against a server that keeps saying 410).
    h.advance(0.124)
    assert [c.verb for c in h.fake.calls] == ["list", "watch"]
    h.advance(0.001)
    assert [c.verb for c in h.fake.calls] == ["list", "watch", "list", "watch"]
    assert ("broken", "Kubernetes API answered 410 Expired") not in h.sink.told
    h.watch.stop()


def test_outage_reconnects_with_backoff() -> None:
    """
    A failing API marks the sink broken and is retried after the jittered
    backoff (0.125 s, 0.25 s, 0.5 s with no jitter); once it answers, the
    set is listed again (in sync) and watched from that list.
    """
    h = harness()
    seed(h, "acme/a", b"secret-a")
    h.watch.start(h.sink)
    h.flush()
    h.advance(1)
    h.fake.fail_with(503)
    h.fake.close_watches()
    h.flush()
    assert [c.verb for c in h.fake.calls] == ["list", "watch", "watch"]
    h.advance(0.124)
    assert len(h.fake.calls) == 3
    h.advance(0.001)
    assert [c.verb for c in h.fake.calls][3:] == ["list"]
    h.advance(0.25)
    assert [c.verb for c in h.fake.calls][3:] == ["list", "list"]
    seed(h, "acme/b", b"secret-b")
    h.fake.fail_with(None)
    h.advance(0.499)
    assert len(h.fake.calls) == 5
    h.advance(0.001)
    assert [c.verb for c in h.fake.calls][3:] == ["list", "list", "list", "watch"]
    assert h.calls("watch")[-1]["resourceVersion"] == str(h.fake.resource_version)
    reason = "Kubernetes API answered 503 ServiceUnavailable"
    assert h.sink.told == [
        ("replace", {A: b"secret-a"}),
        ("broken", reason),
        ("broken", reason),
        ("broken", reason),
        ("replace", {A: b"secret-a", B: b"secret-b"}),
    ]
    h.fake.delete_secret(NS, B)
    h.flush()
    assert h.sink.told[-1] == ("remove", B)
    h.watch.stop()


def test_outage_before_first_list_keeps_listing() -> None:
    """With no list yet, every retry is a list."""
    h = harness()
    h.fake.fail_with(500)
    h.watch.start(h.sink)
    h.flush()
    h.advance(0.125)
    h.fake.fail_with(None)
    h.advance(0.25)
    assert [c.verb for c in h.fake.calls] == ["list", "list", "list", "watch"]
    assert h.sink.told[-1] == ("replace", {})
    h.watch.stop()


def test_stop_during_backoff_makes_no_more_calls() -> None:
    h = harness()
    h.fake.fail_with(500)
    h.watch.start(h.sink)
    h.flush()
    h.watch.stop()
    h.advance(60)
    assert len(h.fake.calls) == 1


# -- the client's streaming call ------------------------------------------


class Scripted(Resource):
    """A watch endpoint writing the given lines, then staying open."""

    isLeaf = True

    def __init__(self, lines: list[bytes], finish: bool = False) -> None:
        super().__init__()
        self.lines = lines
        self.finish = finish

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.write(b"")
        for line in self.lines:
            request.write(line)
        if self.finish:
            request.finish()
        return NOT_DONE_YET


def scripted_client(resource: Resource, clock: Clock) -> tuple[KubeClient, StubTreq]:
    stub = StubTreq(resource)
    return KubeClient(stub, "https://kube.example:6443", StaticToken(TOKEN), clock), stub


def test_watch_events_split_across_chunks_and_bookmark() -> None:
    """Lines split over writes are reassembled; events arrive in order."""
    clock = Clock()
    event = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "x", "resourceVersion": "7"}}}).encode()
    bookmark = b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}\n'
    client, stub = scripted_client(Scripted([event[:10], event[10:] + b"\n\n", bookmark], finish=True), clock)
    seen: list[Any] = []
    done = client.watch_secrets(NS, seen.append, timeout_seconds=5)
    stub.flush()
    assert [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
    assert seen[0]["object"]["metadata"]["resourceVersion"] == "7"
    assert done.called and done.result is None


def test_silent_watch_is_dropped() -> None:
    """A stream that sends nothing for timeoutSeconds + 30 fails, and is dropped."""
    clock = Clock()
    client, stub = scripted_client(Scripted([]), clock)
    done = client.watch_secrets(NS, lambda e: None, timeout_seconds=10)
    stub.flush()
    clock.advance(39.9)
    assert not done.called
    clock.advance(0.1)
    stub.flush()
    error = failure_of(done)
    assert isinstance(error, KubeTransportError)
    assert error.reason == "watch stream silent for 40s"


def test_long_lived_watch_outlives_the_request_timeout() -> None:
    """The per-request timeout bounds only the wait for headers, not the stream."""
    clock = Clock()
    client, stub = scripted_client(Scripted([b'{"type":"BOOKMARK","object":{}}\n']), clock)
    done = client.watch_secrets(NS, lambda e: None, timeout_seconds=300)
    stub.flush()
    clock.advance(client.timeout * 3)
    stub.flush()
    assert not done.called
    done.cancel()
    assert isinstance(failure_of(done), CancelledError)


def test_overlong_or_bad_lines_fail_the_stream() -> None:
    clock = Clock()
    client, stub = scripted_client(Scripted([b"x" * 100]), clock)
    done = client.watch_secrets(NS, lambda e: None, max_line=64)
    stub.flush()
    error = failure_of(done)
    assert isinstance(error, KubeTransportError)
    assert error.reason == "watch event longer than 64 bytes"
    client, stub = scripted_client(Scripted([b"[1, 2]\n"]), clock)
    done = client.watch_secrets(NS, lambda e: None)
    stub.flush()
    error = failure_of(done)
    assert isinstance(error, KubeTransportError)
    assert error.reason == "watch event is not a JSON object"


def test_watch_error_status() -> None:
    """A non-2xx answer to a watch is a KubeStatusError with the server's Status."""
    h = harness()
    h.fake.fail_with(403)
    done = h.client.watch_secrets(NS, lambda e: None)
    h.flush()
    error = failure_of(done)
    assert isinstance(error, KubeStatusError)
    assert (error.code, error.reason) == (403, "Forbidden")


def test_watch_ending_at_once_again_and_again_backs_off() -> None:
    """A server that ends every watch at once gets a watch per backoff step, not a busy loop."""
    h = harness()

    h.watch.start(h.sink)
    h.flush()
    h.fake.close_watches()
    h.flush()
    assert len(h.calls("watch")) == 1
    h.advance(0.124)
    assert len(h.calls("watch")) == 1
    h.advance(0.001)
    assert len(h.calls("watch")) == 2
    h.fake.close_watches()
    h.advance(0.249)
    assert len(h.calls("watch")) == 2
    h.advance(0.001)
    assert len(h.calls("watch")) == 3
    # A watch that lasts a while resets the count: the next one starts at once.
    h.advance(5)
    h.fake.close_watches()
    h.flush()
    assert len(h.calls("watch")) == 4
    assert len(h.calls("list")) == 1
    h.watch.stop()
