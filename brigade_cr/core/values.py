"""
The values that flow through the gateway: frozen, comparable, free of I/O.

Fields that hold secrets are excluded from ``repr`` so that a value can never
leak one into a log line or a traceback.

Every text field (and every name and value of a ``Delivery``'s headers and
query) must be valid Unicode that UTF-8 can encode (``grammar.is_text``):
making a value with a lone surrogate in one raises ``InvalidText``, so an
unencodable build cannot exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from brigade_cr.core.errors import InvalidText
from brigade_cr.core.grammar import is_repository, is_tag, is_text

# Event actions a parser can report (docs/registries.md section 6.1).
PUSH = "push"
DELETE = "delete"
QUARANTINE = "quarantine"
PING = "ping"
IGNORED = "ignored"

# Artifact classes (docs/registries.md section 3).
IMAGE = "image"
CHART = "chart"
OTHER = "other"
UNKNOWN = "unknown"


def _text_ok(value: str) -> bool:
    # ASCII (nearly every value) is known without encoding it.
    return value.isascii() or is_text(value)


def _all_text(value: object) -> bool:
    if isinstance(value, str):
        return _text_ok(value)
    if isinstance(value, tuple):
        # A value is made per delivery with dozens of strings (header and
        # query pairs): gathered, they are known ASCII by one call, and only
        # when they are not is each one checked.
        strings: list[str] = []
        for item in value:
            if isinstance(item, str):
                strings.append(item)
            elif isinstance(item, tuple):
                for inner in item:
                    if isinstance(inner, str):
                        strings.append(inner)
                    elif isinstance(inner, tuple) and not _all_text(inner):
                        return False
        return "".join(strings).isascii() or all(_text_ok(text) for text in strings)
    return True


# The field names of each value type, looked up once (every value made is checked).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _require_text(instance: attrs.AttrsInstance) -> None:
    """Raise ``InvalidText``, naming the field, unless every text in ``instance`` is encodable."""
    kind = type(instance)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(field.name for field in attrs.fields(kind))
    for name in names:
        if not _all_text(getattr(instance, name)):
            raise InvalidText(f"{kind.__name__}.{name} is not valid UTF-8 text")


def _headers(value: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((name.lower(), text) for name, text in items)


def _pairs(value: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, text) for name, text in value)


@attrs.frozen
class Delivery:
    """
    One webhook request, as the HTTP edge received it.

    ``project_ref`` is the project name or ID taken from the path; ``commit``
    is the commit ref from the URL (query wins over path), or ``""``.
    Header names are lower-cased; ``query`` holds the decoded query
    parameters in order; ``body`` is the raw request body.
    """

    project_ref: str
    commit: str
    body: bytes = attrs.field(repr=False)
    received: datetime
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers, repr=False)
    query: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs, repr=False)
    source: str = ""

    def __attrs_post_init__(self) -> None:
        _require_text(self)

    def query_value(self, name: str) -> str | None:
        """The last value of the query parameter ``name``, or None."""
        found = None
        for key, value in self.query:
            if key == name:
                found = value
        return found

    def header(self, name: str) -> str | None:
        """The last value of the header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        found = None
        for key, value in self.headers:
            if key == wanted:
                found = value
        return found


def _keeps_to(grammar: Callable[[str], bool]) -> Callable[[Any, Any, Any], None]:
    # The parsers drop such values (registries/_common.make_event); this
    # makes an event outside the OCI grammar impossible to construct.
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, str) and not is_text(value):
            # Unencodable text is the edge's concern, reported as such.
            raise InvalidText(f"{type(instance).__name__}.{attribute.name} is not valid UTF-8 text")
        if not (isinstance(value, str) and grammar(value)):
            raise ValueError(f"{attribute.name} outside the OCI grammar: {value!r}")

    return check


@attrs.frozen
class RegistryEvent:
    """
    One event a registry reported, normalised (docs/registries.md section 6.1).

    ``action`` is one of ``push``, ``delete``, ``quarantine``, ``ping`` or
    ``ignored`` (then ``reason`` says why: ``untagged``, ``pull``, ...).
    ``event_id`` is the sender's own id prefixed ``registry:``, or ``None``
    where the sender has none. ``repository`` and ``tag``, when set, keep to
    the OCI distribution grammar (``grammar.py``), else ``ValueError``.
    """

    registry: str
    action: str
    time: datetime
    host: str | None = None
    repository: str | None = attrs.field(default=None, validator=attrs.validators.optional(_keeps_to(is_repository)))
    tag: str | None = attrs.field(default=None, validator=attrs.validators.optional(_keeps_to(is_tag)))
    digest: str | None = None
    media_type: str | None = None
    artifact_class: str = UNKNOWN
    event_id: str | None = None
    event_id_source: str = "derived"
    actor: str | None = None
    reason: str | None = None

    def __attrs_post_init__(self) -> None:
        _require_text(self)


@attrs.frozen
class Project:
    """
    A Brigade project, as much of it as a gateway needs.

    ``cr_gateway_secret`` is the project's ``crGatewaySecret``; it never
    appears in ``repr``.
    """

    id: str
    name: str
    repository: str = ""
    clone_url: str = ""
    cr_gateway_secret: bytes | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        _require_text(self)


@attrs.frozen
class Build:
    """
    A Brigade v1 build, before it becomes a build Secret.

    ``ulid`` is the lowercase ULID; the Secret is named ``name``.
    ``payload`` is the sender's body, byte for byte.
    """

    project_id: str
    ulid: str
    event_type: str
    event_provider: str
    commit_ref: str
    payload: bytes = attrs.field(repr=False)
    short_title: str = ""
    long_title: str = ""
    commit_id: str = ""
    clone_url: str = ""
    log_level: str = ""
    script: str = ""
    config: str = ""

    def __attrs_post_init__(self) -> None:
        _require_text(self)

    @property
    def name(self) -> str:
        """The build Secret's name, which is also its ``build_id``."""
        return "brigade-worker-" + self.ulid


@attrs.frozen
class Receipt:
    """
    What a store says after ``submit``: the build exists under ``build_name``
    or, with ``queued``, is durably recorded and will be created under that
    name.

    ``duplicate`` is true when the same build was already there (or already
    queued).
    """

    build_name: str
    duplicate: bool = False
    queued: bool = False

    def __attrs_post_init__(self) -> None:
        _require_text(self)
