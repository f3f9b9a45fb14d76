"""
Tests for ``brigade_cr.stores.kube.backend``: the shared backend contract (on the
fake API served over TLS in the test reactor, and through ``kube_target``,
which includes a real cluster when one is configured), then how every
class of API failure maps to a domain error, over real loopback
connections.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, AsyncIterator, cast

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from zope.interface.verify import verifyObject

from brigade_cr.core.contract import BUILD_DATA_KEYS, build_secret, project_id
from brigade_cr.core.errors import BackendRejected, BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.values import Receipt
from brigade_cr.stores.kube.backend import KubeBuilds, KubeProjects, make_kube_backend
from brigade_cr.stores.kube.client import KubeClient, KubeStatusError
from brigade_cr.stores.kube.config import BearerToken, BearerTokenFile, KubeConfig, NoCredentials, load_kubeconfig
from tests.backend_contract import BackendContract, BackendUnderTest, a_build, project_secret
from tests.certs import write_test_pki
from tests.kubeapi import FakeKube

NAMESPACE = "default"
BOUND = 20.0


def bounded(d: Deferred[Any], seconds: float = BOUND) -> Deferred[Any]:
    """``d``, failing with ``TimeoutError`` if it has not fired within ``seconds``."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


def config_for(served: Any, tmp_path: Path, **changes: Any) -> KubeConfig:
    """The KubeConfig of ``served``'s kubeconfig (token ``test-token``), with ``changes``."""
    path = served.write_kubeconfig(str(tmp_path / f"kubeconfig-{len(os.listdir(tmp_path))}"))
    return attrs.evolve(load_kubeconfig(path), **changes)


@attrs.define
class Stores:
    projects: KubeProjects
    builds: KubeBuilds
    client: KubeClient


async def stores(config: KubeConfig, timeout: float = 10.0) -> Stores:
    from twisted.internet import reactor

    projects, builds, client = make_kube_backend(reactor, config, NAMESPACE, timeout=timeout)
    return Stores(projects, builds, client)


@pytest_twisted.async_yield_fixture
async def kube(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Any, Stores]]:
    """The fake served over TLS, and stores talking to it; the client's pool is closed afterwards."""
    fake, served = served_fake_kube
    made = await stores(config_for(served, tmp_path))
    try:
        yield fake, served, made
    finally:
        await bounded(made.client.close())


# -- the shared contract ------------------------------------------------------------


@pytest.fixture
def backend(kube: tuple[FakeKube, Any, Stores]) -> BackendUnderTest:
    fake, _, made = kube

    async def seed(secret: dict[str, Any]) -> None:
        fake.put_secret(NAMESPACE, secret)

    async def stored(name: str) -> dict[str, Any] | None:
        return fake.get_secret(NAMESPACE, name)

    return BackendUnderTest(made.projects, made.builds, NAMESPACE, seed, stored)


class TestKubeBackend(BackendContract):
    """The contract, on the fake Kubernetes API over loopback TLS."""


@pytest_twisted.async_yield_fixture
async def watched_backend(kube: tuple[FakeKube, Any, Stores]) -> AsyncIterator[BackendUnderTest]:
    """
    What a gateway serves from: the in-memory set kept by the project watch
    over loopback TLS. A seed returns once the watch has seen it (its
    resourceVersion reached the fake's), at most ``BOUND`` seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from brigade_cr.stores.kube.watch import ProjectWatch
    from brigade_cr.stores.projects import KnownProjects

    fake, _, made = kube
    watch = ProjectWatch(made.client, NAMESPACE, reactor)
    known = KnownProjects(watch, reactor)
    await known.start()

    async def caught_up(bookmark: bool = False) -> None:
        for _ in range(int(BOUND / 0.01)):
            if bookmark:
                fake.send_bookmarks()
            if known.in_sync and fake.active_watches == 1 and watch.resource_version == str(fake.resource_version):
                return
            await deferLater(reactor, 0.01)
        raise AssertionError("the watch did not catch up")

    await caught_up()

    async def seed(secret: dict[str, Any]) -> None:
        fake.put_secret(NAMESPACE, secret)
        # The field selector keeps a non-project out of the watch: a
        # bookmark then moves the watch's resourceVersion on.
        await caught_up(bookmark=secret.get("type") != "brigade.sh/project")

    async def stored(name: str) -> dict[str, Any] | None:
        return fake.get_secret(NAMESPACE, name)

    try:
        yield BackendUnderTest(known, made.builds, NAMESPACE, seed, stored)
    finally:
        known.stop()


class TestWatchedKubeBackend(BackendContract):
    """The contract, on the watched in-memory set."""

    @pytest.fixture
    def backend(self, watched_backend: BackendUnderTest) -> BackendUnderTest:
        return watched_backend


@pytest_twisted.async_yield_fixture
async def target_backend(kube_target: Any) -> AsyncIterator[BackendUnderTest]:
    """The stores on ``kube_target`` (the fake as a process, or a real cluster)."""
    from twisted.internet import reactor

    projects, builds, client = make_kube_backend(
        reactor, load_kubeconfig(kube_target.kubeconfig), kube_target.namespace, timeout=10.0
    )
    # The contract's builds are created by the stores, not the target: delete them afterwards.
    kube_target.track(a_build().name)

    async def seed(secret: dict[str, Any]) -> None:
        kube_target.seed_secret(secret)

    async def stored(name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = await bounded(client.get_secret(kube_target.namespace, name))
            return found
        except KubeStatusError as e:
            if e.code == 404:
                return None
            raise

    try:
        yield BackendUnderTest(projects, builds, kube_target.namespace, seed, stored)
    finally:
        await bounded(client.close())


class TestKubeBackendOnTarget(BackendContract):
    """The contract, through ``kube_target`` (a real cluster too, when configured)."""

    @pytest.fixture
    def backend(self, target_backend: BackendUnderTest) -> BackendUnderTest:
        return target_backend


# -- Kubernetes specifics --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_make_kube_backend(kube: tuple[FakeKube, Any, Stores]) -> None:
    """make_kube_backend gives verified stores sharing one client, for the namespace asked for."""
    _, _, made = kube
    assert verifyObject(IProjects, made.projects)
    assert verifyObject(IBuilds, made.builds)
    assert made.projects.client is made.client is made.builds.client
    assert (made.projects.namespace, made.builds.namespace) == (NAMESPACE, NAMESPACE)


@pytest_twisted.ensureDeferred
async def test_build_secret_exactly(kube: tuple[FakeKube, Any, Stores]) -> None:
    """The stored Secret is brigade.build_secret's rendering: type, labels, every data key, payload bytes."""
    fake, _, made = kube
    payload = b'{"events":[{"target":{"tag":"v1"}}],"raw":"\xff\xfe\x00"}'
    build = a_build(payload=payload)
    assert await bounded(made.builds.submit(build)) == Receipt(build.name)
    stored = fake.get_secret(NAMESPACE, build.name)
    expected = build_secret(build, NAMESPACE)
    assert stored is not None
    assert stored["type"] == expected["type"] == "brigade.sh/build"
    assert stored["metadata"]["labels"] == expected["metadata"]["labels"]
    assert "status" not in stored["metadata"]["labels"]
    assert sorted(stored["data"]) == sorted(BUILD_DATA_KEYS)
    for key in BUILD_DATA_KEYS:
        assert stored["data"][key] == expected["data"][key], key
    assert base64.b64decode(stored["data"]["payload"]) == payload


@pytest_twisted.ensureDeferred
async def test_invalid_project_id_not_asked(kube: tuple[FakeKube, Any, Stores]) -> None:
    """A project ID that cannot be a Secret name is not found without asking the API."""
    fake, _, made = kube
    for ref in ("brigade-Upper", "brigade-a/b", "brigade-" + "a" * 250, "brigade-x?y", "brigade-x\n"):
        with pytest.raises(ProjectNotFound):
            await bounded(made.projects.get(ref))
    assert fake.calls == []


@pytest.mark.parametrize("code", [401, 403, 429, 500, 503, 504])
@pytest_twisted.ensureDeferred
async def test_project_lookup_unavailable(kube: tuple[FakeKube, Any, Stores], code: int) -> None:
    """A project lookup answered 401/403/429/5xx is BackendUnavailable, not ProjectNotFound."""
    fake, _, made = kube
    fake.put_secret(NAMESPACE, project_secret("acme/webapp"))
    fake.fail_with(code, retry_after=5)
    with pytest.raises(BackendUnavailable) as raised:
        await bounded(made.projects.get(project_id("acme/webapp")))
    assert raised.value.retry_after == 5
    assert raised.value.reason.startswith(f"Kubernetes API answered {code} ")


@pytest.mark.parametrize(
    "code, retry_after",
    [(503, 7), (429, 2), (500, None), (504, None), (401, None)],
)
@pytest_twisted.ensureDeferred
async def test_submit_unavailable(kube: tuple[FakeKube, Any, Stores], code: int, retry_after: int | None) -> None:
    """Creates answered 429/5xx/401 are BackendUnavailable with the server's Retry-After, and create nothing."""
    fake, _, made = kube
    fake.fail_with(code, retry_after=retry_after)
    with pytest.raises(BackendUnavailable) as raised:
        await bounded(made.builds.submit(a_build()))
    assert raised.value.retry_after == retry_after
    assert raised.value.reason.startswith(f"Kubernetes API answered {code} ")
    assert fake.secrets(NAMESPACE) == []


@pytest.mark.parametrize("code", [400, 403, 404, 422])
@pytest_twisted.ensureDeferred
async def test_submit_rejected(kube: tuple[FakeKube, Any, Stores], code: int) -> None:
    """Creates answered 400/403/404/422 are BackendRejected (promise P4 of docs/guarantees.md: parked, not retried)."""
    fake, _, made = kube
    fake.fail_with(code, verbs=["create"])
    with pytest.raises(BackendRejected) as raised:
        await bounded(made.builds.submit(a_build()))
    assert raised.value.reason.startswith(f"Kubernetes API answered {code} ")


@pytest_twisted.ensureDeferred
async def test_submit_missing_namespace_rejected(kube: tuple[FakeKube, Any, Stores]) -> None:
    """A create into a namespace that does not exist (a real 404) is BackendRejected."""
    _, _, made = kube
    builds = KubeBuilds(made.client, "no-such-namespace")
    with pytest.raises(BackendRejected, match="404 NotFound"):
        await bounded(builds.submit(a_build()))


@pytest_twisted.ensureDeferred
async def test_conflict_then_lookup_fails(kube: tuple[FakeKube, Any, Stores]) -> None:
    """After a 409, a failing look at the existing Secret is BackendUnavailable (retrying is safe)."""
    fake, _, made = kube
    await bounded(made.builds.submit(a_build()))
    fake.fail_with(503, retry_after=3, verbs=["get"])
    with pytest.raises(BackendUnavailable) as raised:
        await bounded(made.builds.submit(a_build()))
    assert raised.value.retry_after == 3
    fake.fail_with(None)
    assert await bounded(made.builds.submit(a_build())) == Receipt(a_build().name, duplicate=True)


@pytest_twisted.ensureDeferred
async def test_conflict_with_non_build(kube: tuple[FakeKube, Any, Stores]) -> None:
    """A Secret of the build's name that is not a build at all is a rejection."""
    fake, _, made = kube
    fake.put_secret(NAMESPACE, {"metadata": {"name": a_build().name}, "type": "Opaque", "data": {}})
    with pytest.raises(BackendRejected, match="different content"):
        await bounded(made.builds.submit(a_build()))


@pytest_twisted.ensureDeferred
async def test_token_file_reread_after_401(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> None:
    """A 401 makes the token file be re-read at once and the request retried once, which succeeds."""
    fake, served = served_fake_kube
    token_file = tmp_path / "token"
    token_file.write_text("test-token\n")
    made = await stores(config_for(served, tmp_path, credentials=BearerTokenFile(str(token_file))))
    try:
        fake.put_secret(NAMESPACE, project_secret("acme/webapp"))
        await bounded(made.projects.get(project_id("acme/webapp")))
        token_file.write_text("rotated-token\n")
        fake.tokens = frozenset({"rotated-token"})
        project = await bounded(made.projects.get(project_id("acme/webapp")))
        assert project.name == "acme/webapp"
        assert [c.authenticated for c in fake.calls] == [True, False, True]
    finally:
        await bounded(made.client.close())


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_connection_refused(tmp_path: Path) -> None:
    """A closed port is BackendUnavailable for both stores."""
    from twisted.internet import reactor

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
    number = port.getHost().port
    await port.stopListening()
    made = await stores(KubeConfig(server=f"https://127.0.0.1:{number}", credentials=BearerToken("t")))
    try:
        with pytest.raises(BackendUnavailable) as raised:
            await bounded(made.builds.submit(a_build()))
        assert raised.value.reason == "Kubernetes API unreachable: connection refused"
        assert raised.value.retry_after is None
        with pytest.raises(BackendUnavailable):
            await bounded(made.projects.get(project_id("acme/webapp")))
    finally:
        await bounded(made.client.close())


class Silent(Protocol):
    """Accepts a connection and never says anything."""


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_timeout(scheme: str) -> None:
    """A server that accepts and never answers (nor completes TLS) is BackendUnavailable after the timeout."""
    from twisted.internet import reactor

    connections: list[Silent] = []

    class Recording(Factory):
        def buildProtocol(self, addr: Any) -> Silent:
            protocol = Silent()
            connections.append(protocol)
            return protocol

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Recording())
    made = await stores(
        KubeConfig(server=f"{scheme}://127.0.0.1:{port.getHost().port}", credentials=BearerToken("t")), timeout=0.5
    )
    try:
        with pytest.raises(BackendUnavailable) as raised:
            await bounded(made.builds.submit(a_build()))
        assert raised.value.reason == "Kubernetes API unreachable: timed out after 0.5s"
        assert len(connections) == 1
    finally:
        await bounded(made.client.close())
        for protocol in connections:
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_wrong_ca(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> None:
    """A server certificate from another CA is BackendUnavailable (TLS failure)."""
    _, served = served_fake_kube
    other = write_test_pki(str(tmp_path / "other"))
    made = await stores(config_for(served, tmp_path, ca_pem=Path(other.ca_cert).read_bytes()))
    try:
        with pytest.raises(BackendUnavailable) as raised:
            await bounded(made.projects.get(project_id("acme/webapp")))
        assert raised.value.reason == "Kubernetes API unreachable: TLS failure: certificate verify failed"
    finally:
        await bounded(made.client.close())


@pytest.mark.parametrize("server_name, works", [(None, True), ("localhost", True), ("kubernetes.default.svc", False)])
@pytest_twisted.ensureDeferred
async def test_tls_server_name(
    served_fake_kube: tuple[FakeKube, Any], tmp_path: Path, server_name: str | None, works: bool
) -> None:
    """
    The certificate (SANs 127.0.0.1 and localhost) is checked against the
    server URL's IP, or against tls-server-name when set.
    """
    fake, served = served_fake_kube
    fake.put_secret(NAMESPACE, project_secret("acme/webapp"))
    made = await stores(config_for(served, tmp_path, tls_server_name=server_name))
    try:
        if works:
            assert (await bounded(made.projects.get(project_id("acme/webapp")))).name == "acme/webapp"
        else:
            with pytest.raises(BackendUnavailable) as raised:
                await bounded(made.projects.get(project_id("acme/webapp")))
            assert raised.value.reason == (
                "Kubernetes API unreachable: TLS: the server certificate does not match the expected name"
            )
    finally:
        await bounded(made.client.close())


async def serve_with_certificate(tmp_path: Path, interface: str, hosts: tuple[str, ...]) -> tuple[Any, bytes]:
    """A fake API on ``interface`` whose certificate names only ``hosts``; returns the port and the CA."""
    from twisted.internet import reactor
    from twisted.web.server import Site

    pki = write_test_pki(str(tmp_path / "pki"), hosts=hosts)
    server = PrivateCertificate.loadPEM(Path(pki.server_cert).read_bytes() + Path(pki.server_key).read_bytes())
    options = CertificateOptions(privateKey=server.privateKey.original, certificate=server.original)
    fake = FakeKube(clock=reactor, tokens=frozenset({"t"}))
    port = await SSL4ServerEndpoint(reactor, 0, options, interface=interface).listen(Site(fake.resource()))
    return port, Path(pki.ca_cert).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    "interface, url_host, cert_hosts, server_name, works",
    [
        # The IP in the URL must be one of the certificate's IP SANs...
        ("127.0.0.1", "127.0.0.1", ("localhost",), None, False),
        ("127.0.0.1", "127.0.0.1", ("127.0.0.2",), None, False),
        ("127.0.0.1", "127.0.0.1", ("127.0.0.1",), None, True),
        # ...unless tls-server-name names what the certificate carries.
        ("127.0.0.1", "127.0.0.1", ("localhost",), "localhost", True),
        ("::1", "[::1]", ("::1",), None, True),
        ("::1", "[::1]", ("localhost",), None, False),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ip_address_servers(
    tmp_path: Path, interface: str, url_host: str, cert_hosts: tuple[str, ...], server_name: str | None, works: bool
) -> None:
    """
    A server addressed by IP (v4 or v6) is verified against the
    certificate's IP subjectAltNames, or against tls-server-name when set.
    """
    port, ca = await serve_with_certificate(tmp_path, interface, cert_hosts)
    config = KubeConfig(
        server=f"https://{url_host}:{port.getHost().port}",
        ca_pem=ca,
        tls_server_name=server_name,
        credentials=BearerToken("t"),
    )
    made = await stores(config)
    try:
        if works:
            with pytest.raises(ProjectNotFound):
                await bounded(made.projects.get(project_id("acme/webapp")))
        else:
            with pytest.raises(BackendUnavailable, match="does not match the expected name"):
                await bounded(made.projects.get(project_id("acme/webapp")))
    finally:
        await bounded(made.client.close())
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_client_certificate(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> None:
    """A client certificate alone authenticates to the fake (which trusts its CA)."""
    fake, served = served_fake_kube
    path = served.write_kubeconfig(str(tmp_path / "kubeconfig"), client_cert=True)
    config = load_kubeconfig(path)
    assert config.credentials == NoCredentials()
    assert config.client_cert_pem is not None
    made = await stores(config)
    try:
        assert await bounded(made.builds.submit(a_build())) == Receipt(a_build().name)
        assert fake.calls[-1].authenticated
    finally:
        await bounded(made.client.close())


@pytest_twisted.ensureDeferred
async def test_insecure_skip_verify(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> None:
    """insecure-skip-tls-verify connects without a CA (and with a wrong server name)."""
    fake, served = served_fake_kube
    made = await stores(
        config_for(served, tmp_path, ca_pem=None, insecure_skip_tls_verify=True, tls_server_name="wrong.example")
    )
    try:
        assert await bounded(made.builds.submit(a_build())) == Receipt(a_build().name)
        assert fake.get_secret(NAMESPACE, a_build().name) is not None
    finally:
        await bounded(made.client.close())


@pytest_twisted.ensureDeferred
async def test_create_that_committed_then_failed(kube: tuple[FakeKube, Any, Stores]) -> None:
    """
    Promise P3 (docs/guarantees.md): a create answered 500 may have been stored anyway; the
    retry's 409 finds this very build and reports a duplicate.
    """
    fake, _, made = kube
    build = a_build()
    fake.put_secret(NAMESPACE, build_secret(build, NAMESPACE))  # stored, but...
    fake.fail_with(500, verbs=["create"])  # ...answered 500
    with pytest.raises(BackendUnavailable):
        await bounded(made.builds.submit(build))
    fake.fail_with(None)
    assert await bounded(made.builds.submit(build)) == Receipt(build.name, duplicate=True)
    assert len(fake.secrets(NAMESPACE)) == 1


@pytest_twisted.ensureDeferred
async def test_nothing_secret_is_logged(served_fake_kube: tuple[FakeKube, Any], tmp_path: Path) -> None:
    """
    No log event (message or field) carries a bearer token, a project's
    crGatewaySecret or a payload, through success, 401 refresh and failures.
    """
    from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

    fake, served = served_fake_kube
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    token_file = tmp_path / "token"
    token_file.write_text("test-token")
    made = await stores(config_for(served, tmp_path, credentials=BearerTokenFile(str(token_file))))
    try:
        fake.put_secret(NAMESPACE, project_secret("acme/webapp", crGatewaySecret=b"gateway-secret-value"))
        await bounded(made.projects.get(project_id("acme/webapp")))
        token_file.write_text("rotated-token-value")
        fake.tokens = frozenset({"rotated-token-value"})
        build = a_build(payload=b'{"payload-marker": 1}')
        await bounded(made.builds.submit(build))
        await bounded(made.builds.submit(build))
        fake.fail_with(503, retry_after=1)
        with pytest.raises(BackendUnavailable):
            await bounded(made.builds.submit(a_build(ulid="01jgq8w4h0bbbbbbbbbbbbbbbb")))
        with pytest.raises(BackendUnavailable):
            await bounded(made.projects.get(project_id("acme/webapp")))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
        await bounded(made.client.close())
    # The creation and the duplicate are the store's detail, at debug (the gateway logs the delivery at info).
    steps = [
        (e["log_level"], formatEvent(e))
        for e in events
        if e.get("log_format") in ("Created build {build} for {project}", "Build {build} for {project} already exists")
    ]
    assert steps == [
        (LogLevel.debug, f"Created build {build.name} for {build.project_id}"),
        (LogLevel.debug, f"Build {build.name} for {build.project_id} already exists"),
    ]
    for event in events:
        text = repr(event) + (formatEvent(event) or "")
        for secret_text in ("test-token", "rotated-token-value", "gateway-secret-value", "payload-marker"):
            assert secret_text not in text, (secret_text, event.get("log_format"))


def test_make_kube_backend_pool_size() -> None:
    """make_kube_backend sizes the shared client's pool as asked, and to the default 8 otherwise."""
    from twisted.internet.task import Clock

    config = KubeConfig(server="https://kube.example:6443", source="test")
    _, _, sized = make_kube_backend(Clock(), config, "brigade", max_persistent=6)
    _, _, default = make_kube_backend(Clock(), config, "brigade")
    assert sized.pool is not None and default.pool is not None
    assert (sized.pool.maxPersistentPerHost, default.pool.maxPersistentPerHost) == (6, 8)
