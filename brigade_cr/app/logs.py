"""
The process's log observer: ``--log-format`` (text or json) and
``--log-level``, for brigade-cr's events and Twisted's alike.

twistd begins logging after ``makeService`` has returned, to the
``ILogObserver`` component of its Application when one is set (and no
``--logger`` was given); ``tap.makeService`` sets ``observer(...)`` there.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import IO, Any, Callable, Protocol, cast

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import provider

LEVELS: dict[str, Any] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
FORMATS = ("text", "json")
# The keys every json line has, in this order.
FIXED_KEYS = ("time", "level", "logger", "message")
# Keys of legacy (twisted.python.log) events that the fixed keys already say.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "format", "why", "failure", "time", "printed"})


class LineOutput(Protocol):
    """Where an observer writes its lines: a text file, or ``logwriter.TurnWriter`` over one."""

    def write(self, text: str, /) -> object:
        """Write ``text`` (whole lines)."""

    def flush(self) -> None:
        """Make what was written reach its file (when it decides)."""


def log_level(value: str) -> Any:
    """``--log-level``'s value: debug, info, warn, error or critical."""
    try:
        return LEVELS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"not one of {', '.join(LEVELS)}: {value!r}") from None


def log_format(value: str) -> str:
    """``--log-format``'s value: text or json."""
    if value not in FORMATS:
        raise ValueError(f"not one of {', '.join(FORMATS)}: {value!r}")
    return value


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (POSIX seconds) as RFC 3339 UTC with milliseconds: ``2026-12-01T11:07:24.123Z``."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _PerSecond:
    """
    ``make(second)`` for whole seconds, made once a second: every log line
    formats its time, and formatting a time (a time zone, ``strftime``) is
    a measurable share of a delivery's CPU (docs/performance.md).
    """

    def __init__(self, make: Callable[[int], str]) -> None:
        self._make = make
        self._second: int | None = None
        self._text = ""

    def __call__(self, second: int) -> str:
        if second != self._second:
            self._text = self._make(second)
            self._second = second
        return self._text


class _Stamps:
    """
    ``twisted.logger.formatTime(when)`` (RFC 3339 to the second, with the
    local offset, as Twisted's text observer writes it), one per second.
    """

    def __init__(self) -> None:
        self._seconds = _PerSecond(formatTime)

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = math.floor(when)
        if when - second >= 0.9999995:
            # datetime rounds to microseconds: this one is the next second.
            return formatTime(when)
        return self._seconds(second)


class _Milliseconds:
    """``rfc3339(timestamp)``, its part to the second made once a second."""

    def __init__(self) -> None:
        self._seconds = _PerSecond(lambda second: rfc3339(second)[:-4])

    def __call__(self, timestamp: float) -> str:
        moment = datetime.fromtimestamp(timestamp, timezone.utc)
        return self._seconds(math.floor(moment.timestamp())) + f"{moment.microsecond // 1000:03d}Z"


def message(event: LogEvent) -> str:
    """
    ``twisted.logger.formatEvent(event)``: the event's ``log_format`` filled
    in from the event. A format without Twisted's call syntax (``{f()}``) is
    filled by ``str.format_map`` directly, which for such a format is what
    Twisted's formatter does, at a fraction of its cost; any other event, or
    one that does not format, goes to Twisted's.
    """
    format = event.get("log_format")
    if type(format) is str and "()" not in format and "log_flattened" not in event:
        try:
            return format.format_map(event)
        except Exception:
            # Twisted's formatter says what could not be formatted.
            return formatEvent(event)
    return formatEvent(event)


def classic_text(event: LogEvent, stamps: Callable[[float | None], str]) -> str | None:
    """
    ``twisted.logger.formatEventAsClassicLogText(event, stamps)``:
    ``"{time} [{namespace}#{level}] {message}\\n"`` (or ``[{log_system}]``),
    continuation lines indented by a tab; ``None`` for an event with no text.
    """
    if "log_failure" in event or "log_system" in event:
        return formatEventAsClassicLogText(event, formatTime=stamps)
    text = message(event)
    if not text:
        return None
    level = event.get("log_level")
    system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    return f"{stamps(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"


def text_file_observer(out: LineOutput) -> ILogObserver:
    """
    Twisted's ``textFileLogObserver(out)``, line for line, with the time
    formatted once a second and the message by ``message``.
    """
    stamps = _Stamps()
    # FileLogObserver only writes and flushes.
    written: ILogObserver = FileLogObserver(cast(IO[Any], out), lambda event: classic_text(event, stamps))
    return written


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json_safe(item) for key, item in value.items()}
    return repr(value)


def json_record(event: LogEvent, stamp: Callable[[float], str] = rfc3339) -> dict[str, Any]:
    """
    The json line's object for ``event``: ``time``, ``level``, ``logger``,
    ``message``, then the event's own fields (the log call's keyword
    arguments; anything not JSON as its repr), and ``traceback`` for an
    event that carries a failure.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": stamp(float(event.get("log_time", 0.0))),
        "level": str(getattr(level, "name", "info")),
        "logger": str(event.get("log_namespace") or "-"),
        "message": message(event),
    }
    legacy = "log_legacy" in event
    for key, value in event.items():
        if key.startswith("log_") or key in record or key == "traceback" or (legacy and key in _LEGACY_KEYS):
            continue
        record[key] = _json_safe(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a failure that cannot render must not lose the line
            record["traceback"] = repr(failure)
    return record


def json_line(event: LogEvent, stamp: Callable[[float], str] = rfc3339) -> str:
    """``json_record(event, stamp)`` as one line of JSON (ASCII, no newline inside)."""
    return json.dumps(json_record(event, stamp), ensure_ascii=True, separators=(",", ":")) + "\n"


def json_file_observer(out: LineOutput) -> ILogObserver:
    """An observer writing each event to ``out`` as ``json_line``, flushed."""
    stamp = _Milliseconds()

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        out.write(json_line(event, stamp))
        out.flush()

    written: ILogObserver = observe
    return written


def at_least(level: Any, inner: ILogObserver) -> ILogObserver:
    """
    ``inner`` for the events at ``level`` or above; the others are dropped,
    as are events without a level or a namespace (what Twisted's
    ``LogLevelFilterPredicate`` with no per-namespace levels lets through,
    checked without its per-event namespace walk).
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        event_level = event.get("log_level")
        if event_level is not None and event.get("log_namespace") and event_level >= level:
            inner(event)

    filtering: ILogObserver = observe
    return filtering


def observer(out: LineOutput, format: str, level: Any) -> ILogObserver:
    """The observer for ``--log-format format`` and ``--log-level level``, writing to ``out``."""
    make: Callable[[LineOutput], ILogObserver] = json_file_observer if format == "json" else text_file_observer
    return at_least(level, make(out))
