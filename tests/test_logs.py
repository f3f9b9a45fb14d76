"""The log observer (--log-format, --log-level) and the access log's probes, latency and build."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import Application, IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from brigade_cr.app import tap
from brigade_cr.app.logs import FIXED_KEYS, LEVELS, json_record, observer, rfc3339
from brigade_cr.web.site import ScrapeSite
from tests.backend_contract import project_secret
from tests.gatewayprocess import GatewayProcess
from tests.wire import SECRET, Wire, parse_responses, request

PAYLOADS = Path(__file__).parent / "payloads"

QUOTED_SECRET = "".join(f"%{byte:02X}" for byte in SECRET.encode())


def parse(*argv: str) -> tap.Options:
    options = tap.Options({})
    options.parseOptions(list(argv))
    return options


def test_log_option_defaults_and_values() -> None:
    """text and info by default; json and every level by name; probes off."""
    options = parse()
    assert (options["log-format"], options["log-level"], options["log-probes"]) == ("text", LogLevel.info, 0)
    options = parse("--log-format", "json", "--log-level", "warn", "--log-probes")
    assert (options["log-format"], options["log-level"], options["log-probes"]) == ("json", LogLevel.warn, 1)
    for name, level in [("debug", LogLevel.debug), ("error", LogLevel.error), ("critical", LogLevel.critical)]:
        assert parse("--log-level", name)["log-level"] is level


def test_log_options_from_the_environment() -> None:
    """BRIGADE_CR_LOG_FORMAT, BRIGADE_CR_LOG_LEVEL and the boolean BRIGADE_CR_LOG_PROBES."""
    options = tap.Options(
        {"BRIGADE_CR_LOG_FORMAT": "json", "BRIGADE_CR_LOG_LEVEL": "error", "BRIGADE_CR_LOG_PROBES": "yes"}
    )
    options.parseOptions([])
    assert (options["log-format"], options["log-level"], options["log-probes"]) == ("json", LogLevel.error, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-format", "xml"], "Parameter type enforcement failed: not one of text, json: 'xml'"),
        (
            ["--log-level", "loud"],
            "Parameter type enforcement failed: not one of debug, info, warn, error, critical: 'loud'",
        ),
    ],
)
def test_bad_log_options(argv: list[str], message: str) -> None:
    """A bad format or level is a usage error naming the allowed values."""
    with pytest.raises(usage.UsageError) as raised:
        parse(*argv)
    assert str(raised.value) == message


def test_rfc3339() -> None:
    """UTC, milliseconds, Z."""
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1796123570.4257736) == "2026-12-01T11:12:50.425Z"


def test_json_record_of_an_event() -> None:
    """The fixed keys, then the call's keyword arguments (repr for non-JSON values), no log_ keys."""
    event: dict[str, Any] = {
        "log_time": 1796123570.5,
        "log_level": LogLevel.warn,
        "log_namespace": "brigade_cr.core.gateway.Gateway",
        "log_format": "Refused {project_ref!r}: {reason}",
        "log_source": object(),
        "project_ref": "acme/webapp",
        "reason": "bad",
        "count": 3,
        "ratio": float("nan"),
        "where": b"bytes",
        "items": ("a", 1),
    }
    record = json_record(event)
    assert record == {
        "time": "2026-12-01T11:12:50.500Z",
        "level": "warn",
        "logger": "brigade_cr.core.gateway.Gateway",
        "message": "Refused 'acme/webapp': bad",
        "project_ref": "acme/webapp",
        "reason": "bad",
        "count": 3,
        "ratio": "nan",
        "where": "b'bytes'",
        "items": ["a", 1],
    }
    assert list(record)[:4] == list(FIXED_KEYS)


def test_json_record_of_a_failure() -> None:
    """A failure becomes a traceback field; the Failure object itself is never a field."""
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    out = io.StringIO()
    log = Logger(namespace="brigade_cr.test", observer=observer(out, "json", LEVELS["info"]))
    log.failure("It failed for {who}", failure, who="me")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert list(record) == ["time", "level", "logger", "message", "who", "traceback"]
    assert (record["level"], record["logger"], record["message"], record["who"]) == (
        "critical",
        "brigade_cr.test",
        "It failed for me",
        "me",
    )
    assert record["traceback"] == failure.getTraceback()
    assert "ValueError: boom" in record["traceback"]


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        ("debug", ["debug", "info", "warn", "error", "critical"]),
        ("info", ["info", "warn", "error", "critical"]),
        ("warn", ["warn", "error", "critical"]),
        ("error", ["error", "critical"]),
        ("critical", ["critical"]),
    ],
)
def test_level_filter(level: str, kept: list[str]) -> None:
    """Only events at or above --log-level reach the output, whatever their namespace."""
    out = io.StringIO()
    observe = observer(out, "json", LEVELS[level])
    for namespace in ("brigade_cr.app", "twisted.web.client"):
        log = Logger(namespace=namespace, observer=observe)
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["logger"], r["level"]) for r in records] == [
        (namespace, name) for namespace in ("brigade_cr.app", "twisted.web.client") for name in kept
    ]


def test_text_format_filters_too() -> None:
    """The text format is Twisted's text observer, behind the same level filter."""
    out = io.StringIO()
    log = Logger(namespace="brigade_cr.app", observer=observer(out, "text", LEVELS["warn"]))
    log.info("hidden")
    log.warn("shown {n}", n=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" [brigade_cr.app#warn] shown 1")


def access_lines(wire: Wire) -> list[str]:
    return wire.site.access_log.getvalue().splitlines()


def test_probes_stay_out_of_the_access_log() -> None:
    """By default /healthz and /readyz are answered but not logged; other requests are."""
    with Wire() as wire:
        channel, transport = wire.connect()
        wire.send(channel, request("GET", b"/healthz"))
        wire.send(channel, request("GET", b"/readyz"))
        wire.send(channel, request("GET", b"/nowhere"))
        assert transport.value().count(b"HTTP/1.1 200 OK") == 2
        assert [line.split('"')[3] for line in access_lines(wire)] == ["GET /nowhere HTTP/1.1"]


def test_probes_in_the_access_log_with_log_probes() -> None:
    """--log-probes logs them too."""
    with Wire(log_probes=True) as wire:
        channel, _ = wire.connect()
        wire.send(channel, request("GET", b"/healthz"))
        wire.send(channel, request("GET", b"/readyz"))
        assert [line.split('"')[3] for line in access_lines(wire)] == ["GET /healthz HTTP/1.1", "GET /readyz HTTP/1.1"]


def test_scrape_site_logs_only_with_log_probes() -> None:
    """The metrics listener's requests reach the access log only with --log-probes."""
    written: list[Any] = []
    for log_probes, expected in [(False, 0), (True, 1)]:
        site = ScrapeSite(Resource(), MemoryReactorClock(), log_probes=log_probes)
        site._logFile = io.StringIO()
        fake = type("R", (), {})()
        site._logFormatter = lambda timestamp, request: "line"
        site.log(fake)  # type: ignore[arg-type]
        written.append(site._logFile.getvalue().count("line"))
        assert written[-1] == expected


def test_access_line_has_latency_and_build() -> None:
    """Latency from the first line to the answer on the site's clock; the delivery's build name."""
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    with Wire() as wire:
        channel, transport = wire.connect()
        whole = request("POST", b"/events/webhook/solo?token=" + SECRET.encode(), body)
        # The first line, then a quarter of a second, then the rest.
        cut = whole.index(b"\r\n") + 2
        head, rest = whole[:cut], whole[cut:]
        channel.dataReceived(head)
        wire.reactor.advance(0.25)
        wire.send(channel, rest)
        wire.send(channel, request("GET", b"/nowhere"))
        responses, _ = parse_responses(transport.value(), [b"POST", b"GET"])
        answer = json.loads(responses[0].body)
        build = answer["build_id"]
        assert build.startswith("brigade-worker-")
        lines = access_lines(wire)
        assert len(lines) == 2
        assert lines[0].endswith(f" latency_ms=250.0 build={build}")
        assert lines[1].endswith(" latency_ms=0.0 build=-")


def test_a_whole_json_session_has_no_secret() -> None:
    """
    A session of deliveries (right, wrong, percent-encoded, absolute-form
    secrets) logged as json: every line parses, has the fixed keys first,
    and none holds the secret in any form.
    """
    out = io.StringIO()
    observe = observer(out, "json", LEVELS["debug"])
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    globalLogPublisher.addObserver(observe)
    try:
        with Wire() as wire:
            # In the process, the access log goes to the log (no logPath).
            wire.site._logFile = legacy_log.logfile
            for target in (
                f"/events/webhook/solo?token={SECRET}",
                f"/events/webhook/solo?token=wrong&token={SECRET}",
                f"/events/webhook/solo?token={SECRET}#x",
                f"/events/webhook/solo?token={QUOTED_SECRET}",
                f"http://x:{SECRET}@gw.example/events/webhook/solo?token={SECRET}",
                f"/events/webhook/nobody?token={SECRET}",
            ):
                wire.exchange(request("POST", target.encode(), body))
            wire.exchange(request("POST", f"/events/webhook/solo?token={SECRET}".encode(), b"{not json"))
    finally:
        globalLogPublisher.removeObserver(observe)
    text = out.getvalue()
    lines = text.splitlines()
    assert len(lines) >= 7
    access = 0
    for line in lines:
        record = json.loads(line)
        assert list(record)[:4] == list(FIXED_KEYS)
        assert all(isinstance(record[key], str) for key in FIXED_KEYS)
        if record["logger"] == "twisted.python.log" and '"POST ' in record["message"]:
            access += 1
            assert list(record) == list(FIXED_KEYS)
    assert access == 7
    assert SECRET not in text
    assert QUOTED_SECRET not in text
    assert QUOTED_SECRET.lower() not in text


def test_make_service_sets_the_application_log_observer() -> None:
    """twistd's AppLogger begins logging to the Application's ILogObserver: the plugin's services set it."""
    made = observer(io.StringIO(), "json", LEVELS["info"])
    services = tap._Logging(MultiService(), made)
    application = Application("brigade-cr")
    services.setServiceParent(application)
    assert application.getComponent(ILogObserver) is made
    assert services.parent is IService(application)


@pytest.mark.slow
def test_twistd_json_log_session(tmp_path: Path) -> None:
    """
    A real `twistd -n brigade-cr --log-format json`: every line of its whole
    log is one JSON object with the fixed keys first, the secret is in none,
    probes are not logged and the delivery's access line has its build.
    """
    projects = tmp_path / "gw" / "data" / "projects"
    projects.mkdir(parents=True)
    secret = project_secret("solo", crGatewaySecret=SECRET.encode())
    (projects / "solo.json").write_text(json.dumps(secret))
    process = GatewayProcess.start(
        ["--backend", f"dir:{tmp_path / 'gw' / 'data'}", "--log-format", "json"], tmp_path / "gw"
    )
    try:
        assert process.request("GET", "/healthz").status == 200
        answer = process.post(f"/events/webhook/solo?token={SECRET}", (PAYLOADS / "dockerhub_push.json").read_bytes())
        assert answer.status == 200, answer.json
        build = answer.json["build_id"]
    finally:
        assert process.stop() == 0
    lines = process.log.splitlines()
    records = [json.loads(line) for line in lines]
    assert all(list(record)[:4] == list(FIXED_KEYS) for record in records)
    access = [r["message"] for r in records if '"GET /healthz' in r["message"] or '"POST /events' in r["message"]]
    assert len(access) == 1
    assert access[0].endswith(f" build={build}")
    assert SECRET not in process.log


@pytest.mark.parametrize(("parent", "expected"), [({"logger": "x.y"}, None), ({"syslog": 1}, None)])
def test_twistd_logger_or_syslog_keeps_twistds_choice(parent: dict[str, Any], expected: None) -> None:
    """With twistd's --logger or --syslog the plugin sets no observer (twistd's choice stands)."""
    options = parse("--log-format", "json")
    options.parent = parent  # type: ignore[assignment]
    assert tap._log_file(options) is expected
    application = Application("brigade-cr")
    tap._Logging(MultiService(), None).setServiceParent(application)
    assert application.getComponent(ILogObserver) is None


def test_nodaemon_logs_to_standard_output_at_the_chosen_level() -> None:
    """With -n and no --logfile: the json observer over standard output, filtered at --log-level."""
    options = parse("--log-format", "json", "--log-level", "error")
    options.parent = {"nodaemon": 1, "logfile": None}  # type: ignore[assignment]
    out = io.StringIO()
    real, sys.stdout = sys.stdout, out
    try:
        assert tap._log_file(options) is out
        made = tap._observer(options, out)
        log = Logger(namespace="t", observer=made)
        log.warn("dropped")
        log.error("kept {n}", n=2)
    finally:
        sys.stdout = real
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"], record["n"]) == ("error", "t", "kept 2", 2)


def _events() -> list[dict[str, Any]]:
    """Events of every shape the text observer meets, at fixed times (one a hair before a whole second)."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="brigade_cr.core.gateway.Gateway", observer=cast(ILogObserver, events.append))
    log.info("Delivery for {project}: {n!r} {obj.real:>5} {d[k]}", project="p", n="x", obj=3, d={"k": "v"})
    log.info("two\nlines {a}", a=1)
    log.info("missing {absent}")
    log.info("called {f()}", f=lambda: "yes")
    log.info("positional {0}")
    log.info("{text}", text="surrogate \udc80")
    log.info(None)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("boom {x}", x=1)
    events.append({"log_format": "legacy {v}", "v": 2, "log_system": "-", "log_time": 0.0})
    events.append({"log_format": "no level", "log_namespace": "x"})
    for n, event in enumerate(events):
        if "log_time" in event:
            event["log_time"] = 1796123570.25 + n
    events[1]["log_time"] = 1796123570.9999997
    return events


def test_text_lines_are_twisted_text_lines() -> None:
    """The text observer writes, event for event, what Twisted's textFileLogObserver writes."""
    from twisted.logger import textFileLogObserver

    from brigade_cr.app.logs import text_file_observer

    ours, twisted = io.StringIO(), io.StringIO()
    observe, reference = text_file_observer(ours), textFileLogObserver(twisted)
    for event in _events():
        observe(dict(event))
        reference(dict(event))
    assert ours.getvalue() == twisted.getvalue()
    lines = ours.getvalue()
    assert " [brigade_cr.core.gateway.Gateway#info] two\n\tlines 1\n" in lines
    assert "[brigade_cr.core.gateway.Gateway#info] Delivery for p: 'x'     3 v\n" in lines
    assert "[brigade_cr.core.gateway.Gateway#info] called yes\n" in lines


def test_json_times_and_messages_as_before() -> None:
    """json lines carry rfc3339(log_time) and Twisted's formatting of the message, per event."""
    from twisted.logger import formatEvent

    out = io.StringIO()
    observe = observer(out, "json", LEVELS["debug"])
    kept = [event for event in _events() if event.get("log_level") is not None]
    for event in kept:
        observe(dict(event))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["time"] for r in records] == [rfc3339(event["log_time"]) for event in kept]
    assert [r["message"] for r in records] == [formatEvent(event) for event in kept]


def test_events_without_level_or_namespace_are_dropped() -> None:
    """As Twisted's level filter does: an event with no level, or no namespace, is not written."""
    out = io.StringIO()
    observe = observer(out, "text", LEVELS["debug"])
    observe({"log_format": "no level", "log_namespace": "x", "log_time": 0.0})
    observe({"log_format": "no namespace", "log_level": LogLevel.critical, "log_time": 0.0})
    observe({"log_format": "kept", "log_namespace": "x", "log_level": LogLevel.debug, "log_time": 0.0})
    [line] = out.getvalue().splitlines()
    assert line.endswith(" [x#debug] kept")
