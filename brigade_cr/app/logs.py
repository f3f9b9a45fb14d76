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
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
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


def json_record(event: LogEvent) -> dict[str, Any]:
    """
    The json line's object for ``event``: ``time``, ``level``, ``logger``,
    ``message``, then the event's own fields (the log call's keyword
    arguments; anything not JSON as its repr), and ``traceback`` for an
    event that carries a failure.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": rfc3339(float(event.get("log_time", 0.0))),
        "level": str(getattr(level, "name", "info")),
        "logger": str(event.get("log_namespace") or "-"),
        "message": formatEvent(event),
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


def json_line(event: LogEvent) -> str:
    """``json_record(event)`` as one line of JSON (ASCII, no newline inside)."""
    return json.dumps(json_record(event), ensure_ascii=True, separators=(",", ":")) + "\n"


def json_file_observer(out: IO[str]) -> ILogObserver:
    """An observer writing each event to ``out`` as ``json_line``, flushed."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        out.write(json_line(event))
        out.flush()

    written: ILogObserver = observe
    return written


def observer(out: IO[str], format: str, level: Any) -> ILogObserver:
    """The observer for ``--log-format format`` and ``--log-level level``, writing to ``out``."""
    make: Callable[[IO[str]], ILogObserver] = json_file_observer if format == "json" else textFileLogObserver
    filtering: ILogObserver = FilteringLogObserver(make(out), [LogLevelFilterPredicate(defaultLogLevel=level)])
    return filtering
