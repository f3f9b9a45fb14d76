"""Authentication of deliveries, and the gateway's refusals and rate limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from brigade_cr.core.auth import HmacScheme, Verdict, check_credentials
from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import InvalidText, RateLimited, Unauthorized
from brigade_cr.core.gateway import DUMMY_SECRET_LENGTH, Accepted, Gateway, failure_key
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.core.values import Delivery
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import project_secret
from tests.helpers import failure_of, result_of

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = b"It's a Secret to Everybody"
GITHUB = HmacScheme("x-hub-signature-256", "sha256", "sha256=")
NEXUS = HmacScheme("x-nexus-webhook-signature", "sha1")
JFROG = HmacScheme("x-jfrog-event-auth", "sha256", "", or_token=True)
SCHEMES = (GITHUB, NEXUS, JFROG)


def delivery(body: bytes = b"Hello, World!", headers: dict[str, str] | None = None, **query: str) -> Delivery:
    return Delivery("p", "", body, NOW, headers or {}, list(query.items()), source="192.0.2.1")


def test_github_test_vector() -> None:
    """GitHub's documented test vector verifies."""
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    verdict = check_credentials(SECRET, delivery(headers={"X-Hub-Signature-256": signature}), SCHEMES)
    assert verdict == Verdict(True, "signature:x-hub-signature-256")


def test_signature_over_other_body_fails() -> None:
    """A signature is over the raw body: one changed byte fails."""
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    verdict = check_credentials(SECRET, delivery(b"Hello, World?", {"X-Hub-Signature-256": signature}), SCHEMES)
    assert verdict == Verdict(False, "none", "wrong credentials (signature:x-hub-signature-256)")


def test_signature_prefix_required() -> None:
    """A GitHub signature without its sha256= prefix is not accepted."""
    digest = hmac.new(SECRET, b"Hello, World!", hashlib.sha256).hexdigest()
    assert not check_credentials(SECRET, delivery(headers={"X-Hub-Signature-256": digest}), SCHEMES).ok


def test_legacy_sha1_github_header_is_not_enough() -> None:
    """GitHub's legacy X-Hub-Signature (SHA-1) alone is not a credential."""
    digest = hmac.new(SECRET, b"Hello, World!", hashlib.sha1).hexdigest()
    verdict = check_credentials(SECRET, delivery(headers={"X-Hub-Signature": "sha1=" + digest}), SCHEMES)
    assert verdict == Verdict(False, "none", "no credentials presented")


def test_nexus_sha1_signature() -> None:
    """Nexus signs with a bare hex HMAC-SHA1."""
    digest = hmac.new(SECRET, b"Hello, World!", hashlib.sha1).hexdigest()
    verdict = check_credentials(SECRET, delivery(headers={"X-Nexus-Webhook-Signature": digest}), SCHEMES)
    assert verdict == Verdict(True, "signature:x-nexus-webhook-signature")


@pytest.mark.parametrize(
    "value",
    [SECRET.decode(), hmac.new(SECRET, b"Hello, World!", hashlib.sha256).hexdigest()],
)
def test_jfrog_token_or_signature(value: str) -> None:
    """JFrog's header carries either the secret or the body's HMAC-SHA256: both verify."""
    assert check_credentials(SECRET, delivery(headers={"X-JFrog-Event-Auth": value}), SCHEMES).ok


def test_url_token() -> None:
    """?token= with the secret verifies."""
    assert check_credentials(SECRET, delivery(token=SECRET.decode()), SCHEMES) == Verdict(True, "url-token")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer(scheme: str) -> None:
    """Authorization: Bearer with the secret verifies, whatever the scheme's case."""
    verdict = check_credentials(SECRET, delivery(headers={"Authorization": f"{scheme} {SECRET.decode()}"}), SCHEMES)
    assert verdict == Verdict(True, "bearer")


def test_basic_password() -> None:
    """Basic authentication verifies on the password (EventBridge connections)."""
    credential = base64.b64encode(b"eventbridge:" + SECRET).decode()
    verdict = check_credentials(SECRET, delivery(headers={"Authorization": f"Basic {credential}"}), SCHEMES)
    assert verdict == Verdict(True, "basic")


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [
        ({}, {}, "no credentials presented"),
        ({}, {"token": "wrong"}, "wrong credentials (url-token)"),
        ({}, {"token": ""}, "wrong credentials (url-token)"),
        ({"Authorization": "Bearer wrong"}, {}, "wrong credentials (bearer)"),
        ({"Authorization": "Bearer "}, {}, "wrong credentials (bearer)"),
        ({"Authorization": "Basic !!!"}, {}, "wrong credentials (basic)"),
        ({"Authorization": "Token " + SECRET.decode()}, {}, "wrong credentials (token)"),
        ({"X-Hub-Signature-256": "sha256=zz"}, {}, "wrong credentials (signature:x-hub-signature-256)"),
        ({"X-JFrog-Event-Auth": "nope"}, {}, "wrong credentials (signature:x-jfrog-event-auth)"),
    ],
)
def test_refusals(headers: dict[str, str], query: dict[str, str], reason: str) -> None:
    """Missing, empty and wrong credentials fail with a reason naming only the mechanism."""
    refused = Delivery("p", "", b"Hello, World!", NOW, headers, list(query.items()), source="192.0.2.1")
    verdict = check_credentials(SECRET, refused, SCHEMES)
    assert verdict == Verdict(False, "none", reason)
    assert SECRET.decode() not in verdict.reason


def test_any_valid_proof_is_enough() -> None:
    """A wrong bearer header does not spoil a right URL token (proxies add headers)."""
    verdict = check_credentials(
        SECRET, delivery(headers={"Authorization": "Bearer proxy"}, token=SECRET.decode()), SCHEMES
    )
    assert verdict.ok


def test_non_ascii_token_bytes() -> None:
    """
    Tokens compare as the UTF-8 bytes sent; a non-UTF-8 token cannot become
    a Delivery at all (the edge answers 400).
    """
    secret = "s\u00e9cret".encode()
    assert check_credentials(secret, delivery(token="s\u00e9cret"), SCHEMES).ok
    raw = b"\xff\xfe".decode("utf-8", "surrogateescape")
    with pytest.raises(InvalidText):
        delivery(token=raw)


def test_non_ascii_header_bytes() -> None:
    """A bearer header (decoded ISO-8859-1 at the edge) compares as the bytes sent."""
    sent = "s\u00e9cret".encode()
    header = "Bearer " + sent.decode("latin-1")
    assert check_credentials(sent, delivery(headers={"Authorization": header}), SCHEMES).ok
    assert not check_credentials(
        "s\u00e9cret".encode("latin-1"), delivery(headers={"Authorization": header}), SCHEMES
    ).ok


# The gateway's use of it.


def make_gateway(
    auth_required: bool = True, project_rate: RateLimiter | None = None
) -> tuple[Gateway, MemoryBuilds, Clock]:
    projects = MemoryProjects()
    projects.add(project_secret("keyed", crGatewaySecret=SECRET))
    projects.add(project_secret("open"))
    builds = MemoryBuilds()
    clock = Clock()
    clock.advance(NOW.timestamp())
    gateway = Gateway(
        projects,
        builds,
        clock,
        auth_required=auth_required,
        auth_failures=RateLimiter(clock, per_second=10 / 60, burst=10),
        project_rate=project_rate,
    )
    return gateway, builds, clock


_bodies = iter(range(1_000_000))


def to(project: str, source: str = "192.0.2.1", **query: str) -> Delivery:
    """A delivery of a distinct generic event (so no two are duplicates)."""
    body = b'{"n": %d}' % next(_bodies)
    return Delivery(project, "", body, NOW, {}, list(query.items()), source=source)


@pytest.mark.parametrize(
    ("project", "query", "reason"),
    [
        ("keyed", {}, "no credentials presented"),
        ("keyed", {"token": "wrong"}, "wrong credentials (url-token)"),
        ("open", {}, "project has no crGatewaySecret"),
        ("open", {"token": "anything"}, "project has no crGatewaySecret"),
        ("absent", {"token": SECRET.decode()}, "no such project"),
    ],
)
def test_required_refusals_look_alike(project: str, query: dict[str, str], reason: str) -> None:
    """Under --auth required every refusal is the same error; only the logged reason differs."""
    gateway, builds, _ = make_gateway()
    error = failure_of(gateway.receive(to(project, **query)))
    assert type(error) is Unauthorized
    assert error.reason == reason
    assert builds.secrets == {}


def test_right_secret_builds() -> None:
    """The right secret makes a build."""
    gateway, builds, _ = make_gateway()
    assert isinstance(result_of(gateway.receive(to("keyed", token=SECRET.decode()))), Accepted)
    assert len(builds.secrets) == 1


def test_optional_admits_projects_without_secret() -> None:
    """--auth optional admits a project without a secret, but still checks one that has it."""
    gateway, builds, _ = make_gateway(auth_required=False)
    assert isinstance(result_of(gateway.receive(to("open"))), Accepted)
    assert isinstance(failure_of(gateway.receive(to("keyed", token="wrong"))), Unauthorized)
    assert isinstance(failure_of(gateway.receive(to("absent"))), Unauthorized)
    assert len(builds.secrets) == 1


def test_body_not_parsed_before_authentication() -> None:
    """A malformed body from an unauthenticated sender is refused as unauthenticated, not parsed."""
    gateway, _, _ = make_gateway()
    bad = Delivery("keyed", "", b"\xff not json", NOW, source="192.0.2.1")
    assert isinstance(failure_of(gateway.receive(bad)), Unauthorized)


def test_missing_secret_warned_once() -> None:
    """A project without crGatewaySecret is warned about once, saying what to set."""
    gateway, _, _ = make_gateway()
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(3):
            failure_of(gateway.receive(to("open")))
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [event for event in observer if event["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert "crGatewaySecret" in warnings[0]["log_format"]


def test_failed_authentications_rate_limited_per_source() -> None:
    """After a burst of 10 failures a source gets 429 with Retry-After; others are unaffected; it recovers."""
    gateway, builds, clock = make_gateway()
    for _ in range(10):
        assert isinstance(failure_of(gateway.receive(to("keyed", token="guess"))), Unauthorized)
    limited = failure_of(gateway.receive(to("keyed", token=SECRET.decode())))
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 6
    # Another source is not affected.
    assert isinstance(result_of(gateway.receive(to("keyed", source="192.0.2.2", token=SECRET.decode()))), Accepted)
    clock.advance(6)
    assert isinstance(result_of(gateway.receive(to("keyed", token=SECRET.decode()))), Accepted)
    assert len(builds.secrets) == 2


def test_project_rate_limit() -> None:
    """With a per-project limit, deliveries beyond the burst get 429 until it refills."""
    clock_for_limit = Clock()
    gateway, builds, _ = make_gateway(project_rate=RateLimiter(clock_for_limit, per_second=1 / 60, burst=2))
    for _ in range(2):
        result_of(gateway.receive(to("keyed", token=SECRET.decode())))
    limited = failure_of(gateway.receive(to("keyed", token=SECRET.decode())))
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 60
    assert len(builds.secrets) == 2
    clock_for_limit.advance(60)
    assert isinstance(result_of(gateway.receive(to("keyed", token=SECRET.decode()))), Accepted)
    assert len(builds.secrets) == 3


def test_rate_limiter_bounded_keys() -> None:
    """The limiter forgets the least recently used key beyond max_keys."""
    clock = Clock()
    limiter = RateLimiter(clock, per_second=0.0, burst=1, max_keys=3)
    for key in "abcd":
        assert limiter.consume(key) is None
    assert len(limiter) == 3
    assert limiter.consume("a") is None  # forgotten, so full again
    assert limiter.consume("d") == 3600


def test_failures_on_one_project_do_not_refuse_another() -> None:
    """A source's failures on one project leave its deliveries to another project (and the same project
    from another source) alone: the limiter is keyed by (source, project)."""
    gateway, builds, _ = make_gateway()
    gateway.projects.add(project_secret("other", crGatewaySecret=SECRET))  # type: ignore[attr-defined]
    for _ in range(10):
        assert isinstance(failure_of(gateway.receive(to("keyed", token="guess"))), Unauthorized)
    assert isinstance(failure_of(gateway.receive(to("keyed", token=SECRET.decode()))), RateLimited)
    assert isinstance(result_of(gateway.receive(to("other", token=SECRET.decode()))), Accepted)
    assert isinstance(result_of(gateway.receive(to("keyed", source="192.0.2.9", token=SECRET.decode()))), Accepted)
    assert len(builds.secrets) == 2
    assert gateway.auth_failures is not None
    assert gateway.auth_failures.blocked(failure_key("192.0.2.1", project_id("keyed"))) == 6
    assert gateway.auth_failures.blocked(failure_key("192.0.2.1", project_id("other"))) is None


def test_failure_key() -> None:
    """The limiter's key names both the source and the project."""
    assert failure_key("192.0.2.1", "brigade-abc") == "192.0.2.1 brigade-abc"
    assert failure_key("192.0.2.1", "brigade-abc") != failure_key("192.0.2.1", "brigade-abd")


@attrs.define
class _RecordingLimiter(RateLimiter):
    """A limiter that records which source each check and charge was for."""

    calls: list[tuple[str, object]] = attrs.Factory(list)

    def blocked(self, key: str) -> int | None:
        self.calls.append(("blocked", key.split(" ")[0]))
        return super().blocked(key)

    def consume(self, key: str) -> int | None:
        self.calls.append(("consume", key.split(" ")[0]))
        return super().consume(key)


def _traced(monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, list[tuple[str, object]]]:
    import brigade_cr.core.gateway as gateway_module

    gateway, _, _ = make_gateway()
    calls: list[tuple[str, object]] = []
    real_check = check_credentials

    def check(secret: bytes, delivery: Delivery, schemes: object) -> Verdict:
        verdict = real_check(secret, delivery, schemes)  # type: ignore[arg-type]
        calls.append(("check_credentials", (len(secret), verdict.ok, schemes)))
        return verdict

    monkeypatch.setattr(gateway_module, "check_credentials", check)
    gateway.auth_failures = _RecordingLimiter(gateway.clock, per_second=10 / 60, burst=10, calls=calls)
    return gateway, calls


@pytest.mark.parametrize("query", [{"token": "wrong-guess-of-the-secret"}, {}])
def test_unknown_project_does_the_same_work_as_a_wrong_secret(
    monkeypatch: pytest.MonkeyPatch, query: dict[str, str]
) -> None:
    """An unknown project and a known one with a wrong secret get the same answer after the same steps:
    one limiter check, one credential check against a secret of typical length, one limiter charge,
    one log line of the same format."""
    traces = []
    for project in ("keyed", "absent"):
        gateway, calls = _traced(monkeypatch)
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        try:
            error = failure_of(gateway.receive(to(project, **query)))
        finally:
            globalLogPublisher.removeObserver(observer)
        assert type(error) is Unauthorized
        formats = [event["log_format"] for event in observer]
        traces.append((calls, formats, error.reason))
    (known_calls, known_formats, known_reason), (unknown_calls, unknown_formats, unknown_reason) = traces
    schemes = make_gateway()[0].signatures
    assert known_calls == [
        ("blocked", "192.0.2.1"),
        ("check_credentials", (len(SECRET), False, schemes)),
        ("consume", "192.0.2.1"),
    ]
    assert unknown_calls == [
        ("blocked", "192.0.2.1"),
        ("check_credentials", (DUMMY_SECRET_LENGTH, False, schemes)),
        ("consume", "192.0.2.1"),
    ]
    assert known_formats == unknown_formats == ["Refused a delivery for {project_id!r} from {source}: {reason}"]
    assert unknown_reason == "no such project"
    assert known_reason == ("wrong credentials (url-token)" if query else "no credentials presented")


def test_unknown_project_refused_even_with_the_dummy_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that happen to match the dummy secret still do not admit a delivery to an unknown project."""
    gateway, builds, _ = make_gateway()
    dummy = gateway._dummy_secret
    assert len(dummy) == DUMMY_SECRET_LENGTH
    error = failure_of(gateway.receive(to("absent", token=dummy.decode())))
    assert type(error) is Unauthorized
    assert error.reason == "no such project"
    assert builds.secrets == {}


def test_unknown_project_charges_the_limiter_like_a_wrong_secret() -> None:
    """Ten failures on an unknown project block that (source, project) just as ten wrong secrets do."""
    gateway, _, _ = make_gateway()
    for _ in range(10):
        assert isinstance(failure_of(gateway.receive(to("absent", token="guess"))), Unauthorized)
    limited = failure_of(gateway.receive(to("absent", token="guess")))
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 6


def test_project_without_secret_does_the_same_work_under_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --auth required a project without crGatewaySecret is refused after the same steps as a
    wrong secret too: one limiter check, one credential check (dummy secret), one charge."""
    gateway, calls = _traced(monkeypatch)
    error = failure_of(gateway.receive(to("open", token="anything")))
    assert type(error) is Unauthorized
    assert error.reason == "project has no crGatewaySecret"
    assert calls == [
        ("blocked", "192.0.2.1"),
        ("check_credentials", (DUMMY_SECRET_LENGTH, False, gateway.signatures)),
        ("consume", "192.0.2.1"),
    ]
