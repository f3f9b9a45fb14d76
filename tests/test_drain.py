"""
``--drain-only``: the one-shot drain of a spool left behind.

The composition (``make_drain_service``) runs on the ``GatewayReactor`` of
``test_service.py`` (a ``MemoryReactorClock`` whose thread pool runs when
the test says), over records written beforehand; ``SpooledBuilds.when_empty``
runs on a ``Clock`` with inline I/O. The end-to-end tests run a real
``twistd -n brigade-cr --drain-only`` to completion, over the directory backend and the
fake Kubernetes API (``tests/kubeapi.py``).
"""

from __future__ import annotations

import base64
import json
import re
import signal
import textwrap
from pathlib import Path
from typing import Any, Iterator

import attrs
import kubernetes_validate
import pytest
import yaml
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

import brigade_cr.app.drain
from brigade_cr.app.backend import Backend
from brigade_cr.app.drain import make_drain_service
from brigade_cr.app.metrics import CountedBuilds
from brigade_cr.app.service import GatewayServices, SpoolService, StopOnSignal
from brigade_cr.app.startup import StartupError
from brigade_cr.app.tap import makeService
from brigade_cr.core.errors import BackendUnavailable
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.directory import write_build
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.retry import Backoff, ThrottledBuilds
from brigade_cr.stores.spool import SpooledBuilds, encode_record, record_filename, write_record
from brigade_cr.stores.spool.disk import no_step
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import a_build, project_secret
from tests.e2e import AUTH, NAMESPACE, PAYLOADS, SECRET
from tests.gatewayprocess import GatewayProcess, run_to_completion, spawn
from tests.helpers import write_minimal_kubeconfig
from tests.kubetarget import FakeKubeProcess
from tests.slow import starts_process
from tests.test_service import GatewayReactor, parse
from tests.test_spool import ManualIO
from tests.test_startup import assert_fails_clearly

SPOOL_EXIT_LINE = re.compile(r"Drain (complete|stopped).*")


def build_no(number: int) -> Build:
    """Build ``number``, its own name."""
    return a_build(ulid=f"01jgq8w4h2{number:016d}", payload=b'{"n": %d}' % number)


def spool_with(directory: Path, count: int, first: int = 0) -> list[str]:
    """A spool ``directory`` holding records of builds ``first`` .. ``first + count - 1``, as a gateway left it."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(first, first + count):
        build = build_no(index)
        write_record(directory, record_filename(index + 1, build.name), encode_record(build), no_step)
        names.append(build.name)
    return names


def damaged_record(directory: Path, sequence: int) -> str:
    """A record file whose content is not a record: quarantined when the spool recovers."""
    filename = record_filename(sequence, build_no(900).name)
    (directory / filename).write_bytes(b"not a record\n")
    return filename


@implementer(IBuilds)
@attrs.define
class Api:
    """The build store as the drain sees it: Secrets in memory, ``down`` until told otherwise."""

    store: MemoryBuilds = attrs.field(factory=lambda: MemoryBuilds(namespace="brigade"))
    down: bool = False
    clock: Any = None
    # (clock time, build) of every call, when ``clock`` is set
    calls: list[tuple[float, str]] = attrs.field(factory=list)

    def submit(self, build: Build) -> Deferred[Receipt]:
        if self.clock is not None:
            self.calls.append((self.clock.seconds(), build.name))
        if self.down:
            return fail(BackendUnavailable("API down"))
        return self.store.submit(build)


@implementer(ILogObserver)
@attrs.define
class Lines:
    """The messages logged by brigade-cr's app layer and its spool, in order."""

    lines: list[str] = attrs.field(factory=list)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith(("brigade_cr.app", "brigade_cr.stores.spool")):
            self.lines.append(event["log_format"].format(**event))

    def drain_lines(self) -> list[str]:
        """The lines saying how a drain ended."""
        return [line for line in self.lines if SPOOL_EXIT_LINE.fullmatch(line)]


@pytest.fixture
def logged() -> Iterator[Lines]:
    observer = Lines()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def settle(reactor: GatewayReactor) -> None:
    """Run the queued thread-pool calls, and what they queue, until none is left (bounded)."""
    for _ in range(50):
        if reactor.pool.run() == 0:
            return
    raise AssertionError("the thread pool never settled")


def advance(reactor: GatewayReactor, seconds: float, step: float = 0.5) -> None:
    """Advance the clock by ``seconds`` in ``step``s, settling the pool after each."""
    for _ in range(int(seconds / step)):
        reactor.advance(step)
        settle(reactor)


@attrs.define
class Drain:
    """``make_drain_service`` on a ``GatewayReactor``, and how its process would exit."""

    service: GatewayServices
    reactor: GatewayReactor
    exits: list[str]

    def start(self) -> None:
        self.service.startService()
        settle(self.reactor)

    def stop(self, seconds: float = 0.0) -> list[object]:
        """What twistd does once the reactor stopped: stop the services (advancing ``seconds``)."""
        stopped: list[object] = []
        self.service.stopService().addBoth(stopped.append)
        settle(self.reactor)
        advance(self.reactor, seconds)
        return stopped


def drain_of(tmp_path: Path, *argv: str, api: Api | None = None, monkeypatch: Any = None) -> Drain:
    """``make_drain_service`` for ``--drain-only --spool tmp_path/spool ARGV``; with ``api``, the store is ``api``."""
    if api is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(
            brigade_cr.app.drain,
            "choose_backend",
            lambda options, reactor, environ, kube_metrics=None: Backend(MemoryProjects(), api, "the test's store"),
        )
    reactor = GatewayReactor()
    exits: list[str] = []
    options = parse("--drain-only", "--spool", str(tmp_path / "spool"), *argv)
    service = make_drain_service(options, reactor, {}, exit_nonzero=lambda: exits.append("exit 1"))
    if api is not None:
        api.clock = reactor
        # No jitter: the retries' times are exact.
        spooling = service.getServiceNamed("spool")
        assert isinstance(spooling, SpoolService) and isinstance(spooling.spool, SpooledBuilds)
        spooling.spool.backoff = Backoff(random=lambda: 0.0)
    return Drain(service, reactor, exits)


COUNTS_0 = "0 build(s) created, 0 duplicate(s), 0 dead-lettered, 0 quarantined"


# -- the composition ---------------------------------------------------------------------


def test_drains_into_the_directory_backend_then_stops_the_reactor(tmp_path: Path, logged: Lines) -> None:
    """
    Three records, one of them built already (by another replica), and a
    damaged one: two are built, the third is a duplicate, the damaged one is
    quarantined; then the reactor is stopped, and the stop logs the
    completion line and asks for no exit 1.
    """
    data = tmp_path / "data"
    names = spool_with(tmp_path / "spool", 3)
    damaged_record(tmp_path / "spool", 4)
    (data / "builds").mkdir(parents=True)
    write_build(data / "builds", build_no(1), "default")

    drain = drain_of(tmp_path, "--backend", f"dir:{data}")
    drain.start()
    assert drain.reactor.hasStopped
    assert sorted(path.name for path in (data / "builds").iterdir()) == sorted(f"{name}.json" for name in names)
    assert drain.stop() == [None]
    spool = (tmp_path / "spool").resolve()
    assert logged.drain_lines() == [
        f"Drain complete: the spool {spool} is empty; "
        "2 build(s) created, 1 duplicate(s), 0 dead-lettered, 1 quarantined"
    ]
    assert drain.exits == []
    assert sorted(path.name for path in spool.iterdir()) == ["quarantine", "spool.lock"]


def test_an_empty_spool_stops_at_once(tmp_path: Path, logged: Lines) -> None:
    """No record: the reactor is stopped as soon as the spool has recovered; exit 0."""
    drain = drain_of(tmp_path, "--backend", f"dir:{tmp_path / 'data'}")
    drain.start()
    assert drain.reactor.hasStopped
    assert drain.reactor.getDelayedCalls() == []
    assert drain.stop() == [None]
    assert logged.drain_lines() == [f"Drain complete: the spool {(tmp_path / 'spool').resolve()} is empty; {COUNTS_0}"]
    assert drain.exits == []


def test_children_and_no_webhook_port(tmp_path: Path, logged: Lines) -> None:
    """
    The services, in start order: metrics, drain, spool, signals (no
    webhook, no projects). --port is not bound (only --metrics is), and the
    start says so.
    """
    drain = drain_of(
        tmp_path,
        "--backend", f"dir:{tmp_path / 'data'}",
        "--port", "tcp:8000:interface=127.0.0.1",
        "--metrics", "tcp:9100:interface=127.0.0.1",
    )  # fmt: skip
    assert [child.name for child in drain.service] == ["metrics", "drain", "spool", "signals"]
    assert [port for port, *_ in drain.reactor.tcpServers] == [9100]
    assert drain.service.announcements[1:] == [
        f"--drain-only: draining the spool {(tmp_path / 'spool').resolve()} into the backend, then exiting; "
        "not listening for webhooks (--port is ignored)"
    ]
    drain.start()
    assert drain.reactor.accepting(9100)


def test_kube_backend_is_throttled_and_its_pool_closed(tmp_path: Path) -> None:
    """With Kubernetes: the client-side limit with no pause budget (the drain waits), and the pool service."""
    kubeconfig = tmp_path / "kubeconfig"
    write_minimal_kubeconfig(kubeconfig)
    drain = drain_of(tmp_path, "--kubeconfig", str(kubeconfig), "--kube-qps", "7", "--kube-burst", "9")
    assert [child.name for child in drain.service] == ["pool", "drain", "spool", "signals"]
    spooling = drain.service.getServiceNamed("spool")
    assert isinstance(spooling, SpoolService)
    assert isinstance(spooling.spool, SpooledBuilds)
    counted = spooling.spool.inner
    assert isinstance(counted, CountedBuilds)  # every build created is counted, as when serving
    throttled = counted.inner
    assert isinstance(throttled, ThrottledBuilds)
    assert throttled.max_pause_wait is None
    assert (throttled.throttle.per_second, throttled.throttle.burst) == (7.0, 9)


def test_waits_through_an_outage_then_exits_0(tmp_path: Path, logged: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The store is down: the records stay and the reactor keeps running
    through 120 s of retries (four records at once, then one probe at a
    time, backing off to the 30 s cap's 15 s without jitter); once the store
    is back the drain empties the spool, stops the reactor and exits 0.
    """
    api = Api(down=True)
    names = spool_with(tmp_path / "spool", 5)
    drain = drain_of(tmp_path, api=api, monkeypatch=monkeypatch)
    drain.start()
    advance(drain.reactor, 120)
    assert not drain.reactor.hasStopped
    probes = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 31.0, 46.0, 61.0, 76.0, 91.0, 106.0]
    assert api.calls == [(0.0, name) for name in names[:4]] + [(when, names[0]) for when in probes]
    assert api.store.secrets == {}
    assert len(list((tmp_path / "spool").glob("*.build"))) == 5
    api.down = False
    advance(drain.reactor, 120)
    assert drain.reactor.hasStopped
    assert sorted(api.store.secrets) == sorted(names)
    assert drain.stop() == [None]
    assert logged.drain_lines() == [
        f"Drain complete: the spool {(tmp_path / 'spool').resolve()} is empty; "
        "5 build(s) created, 0 duplicate(s), 0 dead-lettered, 0 quarantined"
    ]
    assert drain.exits == []


def signalled(drain: Drain) -> Any:
    """Install the drain's SIGTERM handler (as the running reactor would) and return it."""
    handlers: dict[int, Any] = {}
    signals = drain.service.getServiceNamed("signals")
    assert isinstance(signals, StopOnSignal)
    signals.install = lambda number, handler: handlers.__setitem__(number, handler)
    signals.current = lambda number: None
    for hook, args, kwargs in drain.reactor.whenRunningHooks:
        hook(*args, **kwargs)
    return handlers[signal.SIGTERM]


def test_sigterm_before_empty_exits_non_zero_with_the_count(
    tmp_path: Path, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    SIGTERM while the store is down: the reactor stops, the spool drains
    for --shutdown-timeout (3 s) in vain, the records stay on disk, one
    error line counts them, and the process exits 1.
    """
    api = Api(down=True)
    spool_with(tmp_path / "spool", 4)
    drain = drain_of(tmp_path, "--shutdown-timeout", "3", api=api, monkeypatch=monkeypatch)
    drain.start()
    handler = signalled(drain)
    advance(drain.reactor, 10)
    assert not drain.reactor.hasStopped
    handler(signal.SIGTERM, None)
    assert drain.reactor.hasStopped
    stopped = drain.stop(seconds=5)
    assert stopped == [None]
    assert [line for line in logged.lines if line.startswith(("Received", "Spool stopping"))] == [
        "Received SIGTERM, shutting down gracefully",
        "Spool stopping: 4 record(s) queued, draining for up to 3.0s",
    ]
    assert logged.drain_lines() == [
        f"Drain stopped before the spool was empty: 4 record(s) left in {(tmp_path / 'spool').resolve()} "
        f"for the next drain or start; {COUNTS_0}"
    ]
    assert drain.exits == ["exit 1"]
    assert len(list((tmp_path / "spool").glob("*.build"))) == 4


def test_sigterm_whose_graceful_stop_empties_the_spool_exits_0(
    tmp_path: Path, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store comes back during the stop's drain: nothing is left, so the completion line and exit 0."""
    api = Api(down=True)
    spool_with(tmp_path / "spool", 2)
    drain = drain_of(tmp_path, "--shutdown-timeout", "25", api=api, monkeypatch=monkeypatch)
    drain.start()
    handler = signalled(drain)
    advance(drain.reactor, 2)
    handler(signal.SIGTERM, None)
    api.down = False
    stopped = drain.stop(seconds=20)
    assert stopped == [None]
    assert logged.drain_lines() == [
        f"Drain complete: the spool {(tmp_path / 'spool').resolve()} is empty; "
        "2 build(s) created, 0 duplicate(s), 0 dead-lettered, 0 quarantined"
    ]
    assert drain.exits == []


def test_a_spool_that_cannot_start_exits_1_without_a_drain_line(
    tmp_path: Path, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool's start fails after the check: its critical line, exit 1, the reactor stopped, no drain line."""
    drain = drain_of(tmp_path, api=Api(), monkeypatch=monkeypatch)
    spool = tmp_path / "spool"
    for leftover in spool.iterdir():
        leftover.unlink()
    spool.rmdir()
    spool.write_text("")
    drain.start()
    for hook, args, kwargs in drain.reactor.whenRunningHooks:
        hook(*args, **kwargs)
    assert drain.reactor.hasStopped
    assert drain.stop() == [None]
    assert [line for line in logged.lines if line.startswith("Cannot start the spool")] == [
        f"Cannot start the spool, so not accepting deliveries: [Errno 17] File exists: '{spool}'; check --spool"
    ]
    assert logged.drain_lines() == []
    assert drain.exits == ["exit 1"]


# -- usage errors ------------------------------------------------------------------------

NO_SPOOL = "--drain-only needs a spool to drain: drop --no-spool and give --spool DIR"


def test_drain_only_without_a_spool_is_a_startup_error(tmp_path: Path) -> None:
    """--no-spool: StartupError with the one line; through makeService, SystemExit with it."""
    options = parse("--drain-only", "--no-spool", "--backend", f"dir:{tmp_path / 'data'}")
    with pytest.raises(StartupError) as raised:
        make_drain_service(options, GatewayReactor(), {})
    assert raised.value.args == (NO_SPOOL,)
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert exited.value.code == f"brigade-cr: {NO_SPOOL}"


def test_drain_only_with_no_spool_is_a_startup_error(tmp_path: Path) -> None:
    """--no-spool with a --spool from elsewhere (the options as parsed): the same one line."""
    options = {**parse("--drain-only", "--spool", str(tmp_path / "spool")), "no-spool": 1}
    with pytest.raises(StartupError) as raised:
        make_drain_service(options, GatewayReactor(), {})
    assert raised.value.args == (NO_SPOOL,)


def test_drain_only_from_the_environment() -> None:
    """BRIGADE_CR_DRAIN_ONLY=1 sets the flag, as every flag's variable does; off by default."""
    from brigade_cr.app.options import Options

    options = Options({"BRIGADE_CR_DRAIN_ONLY": "1"})
    options.parseOptions([])
    assert options["drain-only"] == 1
    assert parse()["drain-only"] == 0


def test_a_spool_locked_by_a_running_gateway_is_refused(tmp_path: Path) -> None:
    """The orphaned spool's lock held (its gateway still runs): the start-up error naming --spool."""
    import fcntl
    import os

    spool = tmp_path / "spool"
    spool.mkdir()
    fd = os.open(spool / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        with pytest.raises(StartupError) as raised:
            drain_of(tmp_path, "--backend", f"dir:{tmp_path / 'data'}")
    finally:
        os.close(fd)
    assert raised.value.args == (
        f"--spool {spool} is in use by another process (pid 4242, holding spool.lock); "
        "each spool directory takes one gateway: give this one another --spool",
    )


# -- SpooledBuilds.when_empty --------------------------------------------------------------


def spool_on_clock(directory: Path, api: Api, clock: Clock) -> SpooledBuilds:
    return SpooledBuilds(directory, api, clock, InlineIO(), backoff=Backoff(random=lambda: 0.5))


def test_when_empty_before_start_fails(tmp_path: Path) -> None:
    """when_empty() before start(): RuntimeError."""
    failures: list[Failure] = []
    spool_on_clock(tmp_path / "spool", Api(), Clock()).when_empty().addErrback(failures.append)
    assert [str(failure.value) for failure in failures] == ["when_empty() before start()"]


def test_when_empty_fires_once_the_last_record_lands(tmp_path: Path) -> None:
    """
    Records queued: not fired while the store is down nor while one is in
    flight; fired once the last hand-over lands. A dead-lettered record does
    not hold it back. Asked while empty: fired at once.
    """
    spool_with(tmp_path / "spool", 3)
    clock = Clock()
    api = Api(down=True)
    api.store.secrets[build_no(2).name] = {"different": "content"}  # build 2 is refused for good
    spool = spool_on_clock(tmp_path / "spool", api, clock)
    fired: list[object] = []
    spool.start()
    spool.when_empty().addCallback(fired.append)
    for _ in range(20):
        clock.advance(5)
    assert fired == []
    assert spool.stats().queued == 3
    api.down = False
    for _ in range(20):
        clock.advance(5)
    assert fired == [None]
    stats = spool.stats()
    assert (stats.queued, stats.in_flight, stats.created, stats.dead_lettered) == (0, 0, 2, 1)
    again: list[object] = []
    spool.when_empty().addCallback(again.append)
    assert again == [None]
    spool.stop(0)


def test_when_empty_on_an_empty_spool_fires_after_recovery(tmp_path: Path) -> None:
    """Asked while the spool starts: fired once it has recovered, not before."""
    clock = Clock()
    spool = SpooledBuilds(tmp_path / "spool", Api(), clock, ManualIO())
    spool.start()
    fired: list[object] = []
    spool.when_empty().addCallback(fired.append)
    assert fired == []
    assert isinstance(spool.io, ManualIO)
    spool.io.complete_all()
    assert fired == [None]
    spool.stop(0)
    spool.io.complete_all()


# -- end to end: real twistd processes ---------------------------------------------------------

COMPLETION = re.compile(r"\] (Drain (?:complete|stopped).*)$", re.MULTILINE)


@pytest.mark.slow
def test_end_to_end_drain_only_into_the_directory_backend(tmp_path: Path) -> None:
    """
    A spool written beforehand (three records, one built already, one
    damaged record) drained by ``twistd -n brigade-cr --drain-only``: exit
    0, exactly those three builds, the spool left empty, one completion line,
    and no webhook listener although --port was given.
    """
    spool = tmp_path / "spool"
    data = tmp_path / "data"
    names = spool_with(spool, 3)
    damaged_record(spool, 4)
    (data / "builds").mkdir(parents=True)
    write_build(data / "builds", build_no(2), "default")
    finished = run_to_completion(
        ["--drain-only", "--spool", str(spool), "--backend", f"dir:{data}", "--port", "tcp:0:interface=127.0.0.1"],
        tmp_path / "run",
    )
    assert finished.returncode == 0, finished.output
    assert sorted(path.name for path in (data / "builds").iterdir()) == sorted(f"{name}.json" for name in names)
    assert sorted(path.name for path in spool.iterdir()) == ["quarantine", "spool.lock"]
    assert COMPLETION.findall(finished.output) == [
        f"Drain complete: the spool {spool} is empty; "
        "2 build(s) created, 1 duplicate(s), 0 dead-lettered, 1 quarantined"
    ]
    assert "BrigadeSite starting" not in finished.output
    assert "Traceback" not in finished.output


@pytest.mark.slow
def test_end_to_end_sigterm_before_empty(tmp_path: Path) -> None:
    """
    The Kubernetes API refuses connections: the drain keeps retrying; SIGTERM
    stops it within --shutdown-timeout, exit 1, one line counting the two
    records left, both still on disk.
    """
    spool = tmp_path / "spool"
    spool_with(spool, 2)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t0k3n}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    drain = spawn(
        ["--drain-only", "--spool", str(spool), "--kubeconfig", str(kubeconfig), "--shutdown-timeout", "1"],
        tmp_path / "run",
    )
    drain.wait_for_log("stays spooled; retrying")
    assert drain.terminate() == 1
    assert COMPLETION.findall(drain.log) == [
        f"Drain stopped before the spool was empty: 2 record(s) left in {spool} for the next drain or start; {COUNTS_0}"
    ]
    assert len(list(spool.glob("*.build"))) == 2
    assert "t0k3n" not in drain.log


@pytest.mark.slow
def test_end_to_end_drain_only_without_a_spool(tmp_path: Path) -> None:
    """--drain-only with --no-spool: the one line, exit 1, no traceback."""
    finished = run_to_completion(
        ["--drain-only", "--no-spool", "--backend", f"dir:{tmp_path / 'data'}"], tmp_path / "run"
    )
    assert_fails_clearly(finished, f"brigade-cr: {NO_SPOOL}")


# -- the README's drain Job, against overlays/ha ------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _readme_yaml(first_line: str) -> Any:
    """The README's one ```yaml block (indented or not) that starts with ``first_line``, parsed."""
    found = re.findall(r"^( *)```yaml\n(.*?)^\1```", (ROOT / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    [block] = [text for text in (textwrap.dedent(body) for _, body in found) if text.startswith(first_line)]
    return yaml.safe_load(block)


def _statefulset() -> Any:
    return yaml.safe_load((ROOT / "etc" / "kubernetes" / "overlays" / "ha" / "statefulset.yaml").read_text())


def test_readme_drain_job_fits_the_ha_overlay() -> None:
    """
    The README's Job is valid for the newest Kubernetes schemas (strict),
    mounts the claim the StatefulSet makes for ordinal 2 where the pods mount
    theirs, runs with their ServiceAccount, security contexts, grace period
    and image, passes options that parse to a drain of that spool, and is not
    selected by the webhook Service.
    """
    job = _readme_yaml("# drain-spool-brigade-cr-2.yaml")
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    statefulset = _statefulset()
    pod, gateway_pod = job["spec"]["template"]["spec"], statefulset["spec"]["template"]["spec"]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert pod["volumes"] == [
        {"name": "spool", "persistentVolumeClaim": {"claimName": f"{claim['metadata']['name']}-brigade-cr-2"}}
    ]
    [drain], [gateway] = pod["containers"], gateway_pod["containers"]
    assert drain["volumeMounts"] == gateway["volumeMounts"]
    for key in ("serviceAccountName", "securityContext", "terminationGracePeriodSeconds"):
        assert pod[key] == gateway_pod[key], key
    assert drain["securityContext"] == gateway["securityContext"]
    assert drain["env"] == gateway["env"]
    assert drain["image"] == "ghcr.io/brigade-cr/brigade-cr:0.1.0"
    options = parse(*drain["args"])
    assert (options["drain-only"], options["backend"], options["spool"]) == (1, "kube", "/var/lib/brigade-cr/spool")
    assert options["spool"].startswith(drain["volumeMounts"][0]["mountPath"] + "/")
    assert options["shutdown-timeout"] == parse(*gateway["args"])["shutdown-timeout"]
    service = yaml.safe_load((ROOT / "etc" / "kubernetes" / "base" / "service.yaml").read_text())
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not set(service["spec"]["selector"].items()) <= set(labels.items())


def test_ha_grace_period_covers_the_pause_and_the_drain() -> None:
    """overlays/ha, as the README says: a 10 s preStop pause, --shutdown-timeout 25, a 40 s grace period."""
    pod = _statefulset()["spec"]["template"]["spec"]
    [gateway] = pod["containers"]
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    timeout = parse(*gateway["args"])["shutdown-timeout"]
    assert (pause, timeout, pod["terminationGracePeriodSeconds"]) == (10, 25.0, 40)
    assert pause + timeout < pod["terminationGracePeriodSeconds"]


# -- end to end: an orphaned spool, against the fake Kubernetes API -------------------------------


@pytest.fixture
@starts_process
def fake_api(tmp_path: Path) -> Iterator[FakeKubeProcess]:
    """The fake Kubernetes API over TLS, namespace brigade, with the project ``solo``."""
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps([project_secret("solo", crGatewaySecret=SECRET.encode())]))
    process = FakeKubeProcess.start(str(tmp_path / "api"), namespaces=(NAMESPACE,), seeds=[str(seed)])
    try:
        yield process
    finally:
        process.stop()


def acr_push(n: int) -> bytes:
    """A distinct ACR push (its own event id and tag)."""
    document = json.loads((PAYLOADS / "acr_push.json").read_bytes())
    document["id"] = f"00000000-0000-4000-8000-{n:012d}"
    document["target"]["tag"] = f"v{n}"
    return json.dumps(document).encode()


def built_payloads(api: FakeKubeProcess) -> dict[str, bytes]:
    return {
        secret["metadata"]["name"]: base64.b64decode(secret["data"]["payload"])
        for secret in api.secrets(NAMESPACE)
        if secret.get("type") == "brigade.sh/build"
    }


def test_end_to_end_orphaned_spool_drained_into_kubernetes(fake_api: FakeKubeProcess, tmp_path: Path) -> None:
    """
    A serving gateway builds delivery 0, then, the API down, spools
    deliveries 1 to 3 and a re-delivery of 0 (all 202), and is killed (its
    pod gone). ``--drain-only`` over its spool, the API back: exit 0, exactly
    builds 0 to 3 with their payloads, the re-delivery a duplicate, the spool
    empty, one completion line.
    """
    spool = tmp_path / "spool"
    kube = ["--kubeconfig", fake_api.kubeconfig, "--namespace", NAMESPACE, "--spool", str(spool)]
    gateway = GatewayProcess.start(kube, tmp_path / "serving")
    try:
        first = gateway.post("/events/webhook/solo", acr_push(0), AUTH)
        assert (first.status, first.json["duplicate"]) == (200, False)
        fake_api.set_listening(False)
        spooled = [gateway.post("/events/webhook/solo", acr_push(n), AUTH) for n in (1, 2, 3, 0)]
        assert [answer.status for answer in spooled] == [202] * 4
        assert spooled[3].json["build_id"] == first.json["build_id"]
    finally:
        gateway.kill()
    assert len(list(spool.glob("*.build"))) == 4
    fake_api.set_listening(True)
    finished = run_to_completion(["--drain-only", *kube], tmp_path / "drain", timeout=60)
    assert finished.returncode == 0, finished.output
    expected = {answer.json["build_id"]: acr_push(n) for n, answer in zip((1, 2, 3, 0), spooled, strict=True)}
    assert built_payloads(fake_api) == expected
    assert sorted(path.name for path in spool.iterdir()) == ["projects.json", "spool.lock"]
    assert COMPLETION.findall(finished.output) == [
        f"Drain complete: the spool {spool} is empty; "
        "3 build(s) created, 1 duplicate(s), 0 dead-lettered, 0 quarantined"
    ]
