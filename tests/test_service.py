"""
The gateway's services: the composition root (``make_service``) on a
``MemoryReactorClock``, the start order, a graceful stop within its deadline,
and the SIGTERM handler that lets twistd exit 0.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorThreads, IReadDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from brigade_cr.app.compose import make_service
from brigade_cr.app.service import (
    GatewayServices,
    ProjectsService,
    SpoolService,
    StopDeadline,
    StopOnSignal,
    WebhookListener,
)
from brigade_cr.app.startup import BoundPort
from brigade_cr.app.tap import Options
from tests.backend_contract import project_secret
from tests.gatewayprocess import GatewayProcess
from tests.helpers import write_minimal_kubeconfig

SECRET = "service-test-secret-0123456789"


# -- a reactor for the composition root ------------------------------------------------


@implementer(IListeningPort, IReadDescriptor)
@attrs.define(eq=False)
class ListeningPort:
    """A bound port: read by the reactor (accepting) while it is one of its readers."""

    reactor: MemoryReactorClock
    number: int
    factory: IProtocolFactory
    events: list[str]
    listening: bool = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.listening = False
        self.reactor.removeReader(self)
        self.events.append(f"port {self.number} closed")

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.number)

    def doRead(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "ListeningPort"


class QueuedPool:
    """A thread pool whose calls wait until the test runs them, on its own thread."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[bool, Any], None] | None, Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], function: Callable[..., Any], *args: Any
    ) -> None:
        self.queue.append((on_result, function, args))

    def callInThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.queue.append((None, function, args))

    def run(self) -> int:
        """Run what is queued, and what that queues (at most 200 calls); how many ran."""
        ran = 0
        while self.queue and ran < 200:
            on_result, function, args = self.queue.pop(0)
            try:
                outcome: tuple[bool, Any] = (True, function(*args))
            except Exception:
                outcome = (False, Failure())
            if on_result is not None:
                on_result(*outcome)
            ran += 1
        return ran


@implementer(IReactorThreads)
class GatewayReactor(MemoryReactorClock):
    """
    A ``MemoryReactorClock`` with a ``QueuedPool`` and ports that read from
    the moment they are bound, as a real reactor's do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = QueuedPool()
        self.events: list[str] = []
        self.ports: dict[int, ListeningPort] = {}

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = "") -> ListeningPort:
        super().listenTCP(port, factory, backlog, interface)
        listening = ListeningPort(self, port, factory, self.events)
        self.addReader(listening)
        self.ports[port] = listening
        return listening

    def accepting(self, port: int) -> bool:
        return self.ports[port] in self.getReaders()

    def getThreadPool(self) -> QueuedPool:  # type: ignore[override]
        return self.pool

    def callInThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        self.pool.callInThread(lambda: callable(*args, **kwargs))

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        callable(*args, **kwargs)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass

    def sigInt(self, number: int, frame: object = None) -> None:
        """Stands for the reactor's own SIGINT handler."""


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    """A directory backend with the project ``solo``."""
    projects = tmp_path / "data" / "projects"
    projects.mkdir(parents=True)
    (projects / "solo.json").write_text(json.dumps(project_secret("solo", crGatewaySecret=SECRET.encode())))
    return tmp_path


def made(tmp_path: Path, *extra: str) -> tuple[GatewayServices, GatewayReactor]:
    reactor = GatewayReactor()
    options = parse(
        "--backend", f"dir:{tmp_path / 'data'}",
        "--spool", str(tmp_path / "spool"),
        "--port", "tcp:8000:interface=127.0.0.1",
        "--metrics", "tcp:9100:interface=127.0.0.1",
        *extra,
    )  # fmt: skip
    return make_service(options, reactor, {}), reactor


def deliver(reactor: GatewayReactor) -> StringTransport:
    """POST an ACR push for ``solo`` to the webhook port's factory; the connection's transport."""
    body = (Path(__file__).parent / "payloads" / "acr_push.json").read_bytes()
    protocol = reactor.ports[8000].factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"POST /events/webhook/solo HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return transport


def get(reactor: GatewayReactor, port: int, path: bytes) -> bytes:
    """GET ``path`` from the factory listening on ``port``; everything written back once the pool has run."""
    protocol = reactor.ports[port].factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
    reactor.pool.run()
    written: bytes = transport.value()
    return written


@implementer(ILogObserver)
class Timeline:
    """The messages logged by the gateway's services and its spool, in order."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith(("brigade_cr.app.service", "brigade_cr.stores.spool")):
            self.events.append(event["log_format"].format(**event))


@pytest.fixture
def timeline() -> Any:
    events: list[str] = []
    observer = Timeline(events)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


# -- make_service on a MemoryReactorClock -----------------------------------------------


def test_children_and_their_order(gateway_dir: Path) -> None:
    """make_service: metrics, projects, spool, webhook, signals; both ports bound (--port first), not accepting."""
    service, reactor = made(gateway_dir)
    assert [(child.name, type(child)) for child in service] == [
        ("metrics", BoundPort),
        ("projects", ProjectsService),
        ("spool", SpoolService),
        ("webhook", WebhookListener),
        ("signals", StopOnSignal),
    ]
    # Bound in make_service so that a port in use is a start-up error ...
    assert [(port, type(factory).__name__, interface) for port, factory, _, interface in reactor.tcpServers] == [
        (8000, "BrigadeSite", "127.0.0.1"),
        (9100, "ScrapeSite", "127.0.0.1"),
    ]
    # ... but nothing is accepted before the service starts.
    assert reactor.getReaders() == []
    assert not service.running


def test_without_spool_and_metrics(gateway_dir: Path) -> None:
    """With --no-spool and without --metrics: projects, webhook, signals."""
    reactor = GatewayReactor()
    options = parse("--backend", f"dir:{gateway_dir / 'data'}", "--port", "tcp:8000", "--no-spool")
    service = make_service(options, reactor, {})
    assert [child.name for child in service] == ["projects", "webhook", "signals"]
    service.startService()
    assert reactor.accepting(8000)


def test_the_spool_is_on_by_default_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --spool and no --no-spool: a spool in brigade-cr-data/spool under the working directory."""
    monkeypatch.chdir(tmp_path)
    reactor = GatewayReactor()
    options = parse("--backend", f"dir:{tmp_path / 'data'}", "--port", "tcp:8000")
    assert options["spool"] == "brigade-cr-data/spool"
    service = make_service(options, reactor, {})
    assert [child.name for child in service] == ["projects", "spool", "webhook", "signals"]
    spooling = service.getServiceNamed("spool")
    assert Path(spooling.spool.directory).resolve() == tmp_path / "brigade-cr-data" / "spool"


def test_kube_backend_has_a_pool_to_close(tmp_path: Path) -> None:
    """With Kubernetes: pool (closed after the projects stop), projects, webhook, signals; nothing dialled."""
    kubeconfig = tmp_path / "kubeconfig"
    write_minimal_kubeconfig(kubeconfig)
    reactor = GatewayReactor()
    service = make_service(parse("--kubeconfig", str(kubeconfig), "--port", "tcp:8000", "--no-spool"), reactor, {})
    assert [(child.name, type(child).__name__) for child in service] == [
        ("pool", "ClosePool"),
        ("projects", "ProjectsService"),
        ("webhook", "WebhookListener"),
        ("signals", "StopOnSignal"),
    ]
    assert reactor.tcpClients == []


def test_listener_accepts_only_after_the_spool_started(gateway_dir: Path, timeline: list[str]) -> None:
    """startService: metrics accepts at once, the webhook port only once the spool has recovered."""
    service, reactor = made(gateway_dir)
    service.startService()
    assert reactor.accepting(9100)
    assert not reactor.accepting(8000)
    spool = service.getServiceNamed("spool")
    assert isinstance(spool, SpoolService)
    assert not spool.spool.accepting()
    # The spool's recovery runs in the thread pool.
    assert reactor.pool.run() > 0
    assert spool.spool.accepting()
    assert reactor.accepting(8000)
    assert timeline[:3] == [
        f"using the local directory backend: projects from {gateway_dir / 'data' / 'projects'}, "
        f"builds written to {gateway_dir / 'data' / 'builds'} (namespace 'default')",
        f"Spool: deliveries are stored in {gateway_dir / 'spool'} before they are acknowledged",
        f"Spool {gateway_dir / 'spool'} started: 0 record(s) to drain",
    ]
    # The signal handler is installed once the reactor runs, not before.
    assert len(reactor.whenRunningHooks) == 1


def test_spool_that_fails_to_start_ends_the_run_non_zero(
    gateway_dir: Path, timeline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A spool whose start fails after make_service checked it: one critical
    line naming --spool, exit status 1 at the end, the reactor stopped, and
    the webhook port never accepts.
    """
    import brigade_cr.app.compose

    ends: list[str] = []
    monkeypatch.setattr(brigade_cr.app.compose, "exit_nonzero_at_end", lambda: ends.append("exit 1 at the end"))
    service, reactor = made(gateway_dir)
    # The directory goes away between the check and the start.
    for leftover in (gateway_dir / "spool").iterdir():
        leftover.unlink()
    (gateway_dir / "spool").rmdir()
    (gateway_dir / "spool").write_text("")
    service.startService()
    reactor.pool.run()
    assert ends == ["exit 1 at the end"]
    assert [line for line in timeline if line.startswith("Cannot start the spool")] == [
        "Cannot start the spool, so not accepting deliveries: "
        f"[Errno 17] File exists: '{gateway_dir / 'spool'}'; check --spool"
    ]
    assert not reactor.accepting(8000)
    # Not running yet: the stop is asked for once it runs.
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    assert reactor.hasStopped


def test_graceful_stop_in_order(gateway_dir: Path, timeline: list[str]) -> None:
    """
    stopService: not ready first, the webhook port closes, the delivery in
    flight is waited for, then the spool drains for what is left of the
    deadline (22 s of 25 after 3 s), the metrics port closes last.
    """
    service, reactor = made(gateway_dir)
    service.startService()
    reactor.pool.run()
    webhook = service.getServiceNamed("webhook")
    assert isinstance(webhook, WebhookListener)
    transport = deliver(reactor)
    # The spool's write of the record waits in the pool: the delivery is in flight.
    assert webhook.site.in_flight == 1
    del timeline[:]
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert webhook.site.shutting_down
    assert reactor.events == ["port 8000 closed"]
    assert reactor.accepting(9100)
    assert timeline == ["Shutting down: no new connections, finishing 1 delivery(ies)"]
    reactor.advance(3)
    assert stopped == []
    for _ in range(10):
        reactor.pool.run()
        reactor.advance(0)
        if stopped:
            break
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value()
    assert webhook.site.in_flight == 0
    assert stopped == [None]
    assert reactor.events == ["port 8000 closed", "port 9100 closed"]
    # The delivery's record was handed over while the listener waited for it.
    assert timeline[1].startswith("Build brigade-worker-") and timeline[1].endswith(" handed over from the spool")
    assert timeline[2:] == [
        # Handed over, its file not yet removed (that waits in the pool).
        "Spool stopping: 1 record(s) queued, draining for up to 22.0s",
        "Spool stopped: 0 record(s) left for the next start",
        "Stopped after 3.0s",
    ]
    assert reactor.getReaders() == []
    assert [build.suffix for build in (gateway_dir / "data" / "builds").iterdir()] == [".json"]


def test_stuck_delivery_does_not_hold_the_stop(gateway_dir: Path, timeline: list[str]) -> None:
    """A delivery that does not finish is waited for 25 s (the deadline) at most; the spool then gets 0 s."""
    service, reactor = made(gateway_dir, "--shutdown-timeout", "25")
    service.startService()
    reactor.pool.run()
    deliver(reactor)
    webhook = service.getServiceNamed("webhook")
    assert isinstance(webhook, WebhookListener)
    assert webhook.site.in_flight == 1
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    reactor.advance(24.9)
    assert "Shutdown deadline passed with 1 delivery(ies) in flight" not in timeline
    assert reactor.accepting(9100)
    reactor.advance(0.2)
    assert "Shutdown deadline passed with 1 delivery(ies) in flight" in timeline
    assert "Spool stopping: 1 record(s) queued, draining for up to 0.0s" in timeline
    # The spool waits for the write in its thread before it lets its lock go.
    for _ in range(10):
        reactor.pool.run()
        reactor.advance(0.1)
        if stopped:
            break
    assert stopped == [None]
    assert reactor.events == ["port 8000 closed", "port 9100 closed"]


def test_only_tap_imports_the_global_reactor() -> None:
    """In brigade_cr, only app/tap.py (makeService) imports twisted.internet.reactor."""
    package = Path(__file__).parent.parent / "brigade_cr"
    importing = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
                if any(alias.name == "reactor" for alias in node.names):
                    importing.append(str(path.relative_to(package)))
            elif isinstance(node, ast.Import) and any(a.name == "twisted.internet.reactor" for a in node.names):
                importing.append(str(path.relative_to(package)))
    assert importing == ["app/tap.py"]


GLOBAL_REACTOR_UNUSED = """
import sys
from pathlib import Path
from twisted.internet.main import installReactor
from twisted.internet.testing import MemoryReactorClock

# Klein imports the global reactor when it is imported: make it one that
# records every use.
sentinel = MemoryReactorClock()
installReactor(sentinel)

from brigade_cr.app.compose import make_service
from tests.test_service import GatewayReactor, get, parse

tmp = Path(sys.argv[1])
reactor = GatewayReactor()
options = parse(
    "--backend", f"dir:{tmp / 'data'}", "--spool", str(tmp / "spool"),
    "--port", "tcp:8000", "--metrics", "tcp:9100",
)
service = make_service(options, reactor, {})
service.startService()
reactor.pool.run()
answer = get(reactor, 9100, b"/metrics")
service.stopService()
reactor.pool.run()
print(answer.splitlines()[0].decode(), b"brigade_cr_deliveries_total" in answer)
print(sentinel.tcpServers, sentinel.getDelayedCalls(), sentinel.whenRunningHooks, sentinel.getReaders())
"""


@pytest.mark.slow
def test_the_global_reactor_is_never_used(tmp_path: Path) -> None:
    """
    With a recording reactor installed as the global one, a gateway made,
    started, asked for /metrics and stopped on another reactor leaves the
    global reactor untouched (Klein imports it; nothing uses it).
    """
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_REACTOR_UNUSED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HTTP/1.1 200 OK True", "[] [] [] []"]


def test_reactor_without_threads_is_refused(gateway_dir: Path) -> None:
    """A reactor that does not provide IReactorThreads is a TypeError, before anything is bound."""
    reactor = MemoryReactorClock()
    with pytest.raises(TypeError):
        make_service(parse("--backend", f"dir:{gateway_dir / 'data'}"), reactor, {})
    assert reactor.tcpServers == []


# -- the services, one by one ----------------------------------------------------------


class Port(Service):
    """Records when it starts and stops."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def startService(self) -> None:
        super().startService()
        self.events.append("listening")

    def stopService(self) -> None:
        super().stopService()
        self.events.append("not listening")


@attrs.define
class FakeSite:
    events: list[str]
    shutting_down: bool = False
    in_flight: int = 0
    waiters: list[Deferred[None]] = attrs.Factory(list)

    def idle(self) -> Deferred[None]:
        if self.in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        return waiter

    def finish(self) -> None:
        self.in_flight = 0
        for waiter in self.waiters:
            if not waiter.called:
                waiter.callback(None)


@attrs.define
class FakeSpool:
    events: list[str]
    started: Deferred[None] = attrs.Factory(Deferred)
    stopped_with: list[float] = attrs.Factory(list)

    def start(self) -> Deferred[None]:
        self.events.append("spool starting")
        return self.started

    def stop(self, deadline: float) -> Deferred[None]:
        self.stopped_with.append(deadline)
        self.events.append("spool stopped")
        return succeed(None)

    def accepting(self) -> bool:
        return True


@attrs.define
class FakeProjects:
    events: list[str]

    def start(self) -> Deferred[None]:
        self.events.append("projects started")
        return succeed(None)

    def stop(self) -> None:
        self.events.append("projects stopped")


@attrs.define
class Services:
    root: GatewayServices
    events: list[str]
    clock: Clock
    spool: FakeSpool
    site: FakeSite


def services(spool: bool = True) -> Services:
    events: list[str] = []
    clock = Clock()
    deadline = StopDeadline(clock, 25.0)
    root = GatewayServices(deadline, failed=lambda: events.append("stop failed"))
    fake_spool = FakeSpool(events)
    site = FakeSite(events)

    def close() -> Deferred[None]:
        events.append("pool closed")
        return succeed(None)

    from brigade_cr.app.service import ClosePool

    ClosePool(close).setServiceParent(root)
    ProjectsService(FakeProjects(events)).setServiceParent(root)
    webhook = WebhookListener(site, Port(events), deadline)
    if spool:
        spooling = SpoolService(fake_spool, deadline, failed=lambda: events.append("start failed"))
        spooling.setServiceParent(root)
        webhook.ready = spooling.recovered
    webhook.setServiceParent(root)
    return Services(root, events, clock, fake_spool, site)


def test_listens_only_after_spool_recovered() -> None:
    """With a spool, the port accepts only once its recovery is done."""
    s = services()
    s.root.startService()
    assert s.events == ["projects started", "spool starting"]
    s.spool.started.callback(None)
    assert s.events == ["projects started", "spool starting", "listening"]


def test_spool_that_cannot_start_ends_the_process() -> None:
    """A spool that cannot start calls ``failed`` (stop, exit 1); the port never accepts."""
    s = services()
    s.root.startService()
    s.spool.started.errback(RuntimeError("locked"))
    assert s.events == ["projects started", "spool starting", "start failed"]


def test_stop_before_the_spool_recovered_never_listens() -> None:
    """A stop that begins while the spool recovers: the port is closed and never accepts."""
    s = services()
    s.root.startService()
    s.root.stopService()
    s.spool.started.callback(None)
    assert "listening" not in s.events
    assert s.events[2] == "not listening"


def test_without_spool_listens_at_once() -> None:
    """Without a spool the port accepts at once."""
    s = services(spool=False)
    s.root.startService()
    assert s.events == ["projects started", "listening"]


def test_graceful_stop_order() -> None:
    """Stop: not ready, stop listening, wait for in-flight deliveries, the spool, the projects, the pool."""
    s = services()
    s.root.startService()
    s.spool.started.callback(None)
    s.site.in_flight = 1
    stopped: list[object] = []
    s.root.stopService().addBoth(stopped.append)
    assert s.site.shutting_down
    assert s.events[-1] == "not listening"
    s.clock.advance(3)
    assert stopped == []
    s.site.finish()
    assert s.events[-4:] == ["not listening", "spool stopped", "projects stopped", "pool closed"]
    assert s.spool.stopped_with == [22.0]
    assert stopped == [None]


def test_stop_deadline_with_stuck_delivery() -> None:
    """A delivery that never finishes does not hold the stop past the deadline."""
    s = services()
    s.root.startService()
    s.spool.started.callback(None)
    s.site.in_flight = 1
    stopped: list[object] = []
    s.root.stopService().addBoth(stopped.append)
    s.clock.advance(24.9)
    assert stopped == []
    s.clock.advance(0.2)
    assert stopped == [None]
    assert s.spool.stopped_with == [0.0]
    assert s.events[-3:] == ["spool stopped", "projects stopped", "pool closed"]


def test_children_stop_one_after_another() -> None:
    """Each child's stop begins only once the one added after it has stopped."""
    events: list[str] = []
    root = GatewayServices(StopDeadline(Clock()))
    pending: dict[str, Deferred[None]] = {}

    @attrs.define(eq=False)
    class Slow(Service):
        label: str

        def stopService(self) -> Deferred[None]:
            super().stopService()
            events.append(f"{self.label} stopping")
            pending[self.label] = Deferred()
            return pending[self.label]

    for label in ("first", "second", "third"):
        Slow(label).setServiceParent(root)
    root.startService()
    stopped: list[object] = []
    root.stopService().addBoth(stopped.append)
    assert events == ["third stopping"]
    pending["third"].callback(None)
    assert events == ["third stopping", "second stopping"]
    pending["second"].callback(None)
    pending["first"].callback(None)
    assert events == ["third stopping", "second stopping", "first stopping"]
    assert stopped == [None]


def test_a_failing_stop_still_stops_the_rest() -> None:
    """A child whose stop fails is logged; the others still stop and ``failed`` is called once."""
    s = services(spool=False)
    s.root.startService()

    class Broken(Service):
        def stopService(self) -> Deferred[None]:
            super().stopService()
            raise RuntimeError("cannot stop")

    Broken().setServiceParent(s.root)
    stopped: list[object] = []
    s.root.stopService().addBoth(stopped.append)
    assert s.events[-4:] == ["not listening", "projects stopped", "pool closed", "stop failed"]
    assert stopped == [None]


def test_signal_handler_installed_once_the_reactor_runs() -> None:
    """
    StopOnSignal: nothing installed before the reactor runs; then SIGTERM
    (and SIGINT, where the reactor handles it) stop the reactor once; a second
    signal does nothing more.
    """
    reactor = GatewayReactor()
    installed: dict[int, Callable[[int, Any], Any]] = {}
    handlers: dict[int, Any] = {signal.SIGINT: reactor.sigInt}
    stopping = StopOnSignal(
        reactor,
        reactor,
        install=lambda number, handler: installed.__setitem__(number, handler),
        current=lambda number: handlers.get(number),
    )
    stops: list[str] = []
    reactor.stop = lambda: stops.append("stop")  # type: ignore[method-assign]
    stopping.startService()
    assert installed == {}
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    assert sorted(installed) == [signal.SIGINT, signal.SIGTERM]
    installed[signal.SIGTERM](signal.SIGTERM, None)
    assert stops == ["stop"]
    installed[signal.SIGTERM](signal.SIGTERM, None)
    installed[signal.SIGINT](signal.SIGINT, None)
    assert stops == ["stop"]


def test_ignored_sigint_stays_ignored() -> None:
    """Where SIGINT is not the reactor's (ignored, as under nohup), only SIGTERM is taken over."""
    reactor = GatewayReactor()
    installed: dict[int, Callable[[int, Any], Any]] = {}
    stopping = StopOnSignal(
        reactor,
        reactor,
        install=lambda number, handler: installed.__setitem__(number, handler),
        current=lambda number: signal.SIG_IGN,
    )
    stopping.startService()
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    assert sorted(installed) == [signal.SIGTERM]


# -- end to end: a real twistd process ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_graceful_signal_exits_zero(gateway_dir: Path, number: signal.Signals) -> None:
    """twistd -n brigade-cr: SIGTERM (or SIGINT) stops it gracefully, in order, and it exits 0."""
    process = GatewayProcess.start(
        ["--backend", f"dir:{gateway_dir / 'data'}", "--spool", str(gateway_dir / "spool")], gateway_dir / "run"
    )
    try:
        assert process.request("GET", "/readyz").status == 200
        process.process.send_signal(number)
        code = process.process.wait(30)
    finally:
        process.kill()
    assert code == 0, process.log
    log = process.log
    order = [
        f"Received {number.name}, shutting down gracefully",
        "Shutting down: no new connections, finishing 0 delivery(ies)",
        "Spool stopping: 0 record(s) queued, draining for up to 25.0s",
        "Spool stopped: 0 record(s) left for the next start",
        "Stopped after ",
        "Server Shut Down.",
    ]
    positions = [log.find(line) for line in order]
    assert -1 not in positions, log
    assert positions == sorted(positions), log
