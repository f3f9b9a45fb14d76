"""The values refuse text that UTF-8 cannot encode, whichever field holds it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

import attrs
import pytest

from brigade_cr.core.errors import BadRequest, InvalidText
from brigade_cr.core.values import PUSH, Build, Delivery, Project, Receipt, RegistryEvent

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
BAD = ["\udc80", "a\ud800b", "\udfff"]


def delivery(**changes: Any) -> Delivery:
    return Delivery(**{"project_ref": "solo", "commit": "", "body": b"\xff", "received": NOW, **changes})


def event(**changes: Any) -> RegistryEvent:
    return RegistryEvent(**{"registry": "dockerhub", "action": PUSH, "time": NOW, **changes})


def project(**changes: Any) -> Project:
    return Project(**{"id": "brigade-x", "name": "x", **changes})


def build(**changes: Any) -> Build:
    fields = {"project_id": "brigade-x", "ulid": "u", "event_type": "image_push", "event_provider": "d"}
    return Build(**{**fields, "commit_ref": "master", "payload": b"\xff\xfe", **changes})


def receipt(**changes: Any) -> Receipt:
    return Receipt(**{"build_name": "brigade-worker-u", **changes})


def text_fields(cls: type) -> list[str]:
    return [field.name for field in attrs.fields(cls) if field.type in ("str", "str | None")]


CASES: list[tuple[Callable[..., Any], type, list[str]]] = [
    (delivery, Delivery, text_fields(Delivery)),
    (event, RegistryEvent, text_fields(RegistryEvent)),
    (project, Project, text_fields(Project)),
    (build, Build, text_fields(Build)),
    (receipt, Receipt, text_fields(Receipt)),
]


def test_the_text_fields() -> None:
    """Every text field of every value is covered below."""
    assert {cls.__name__: names for _, cls, names in CASES} == {
        "Delivery": ["project_ref", "commit", "source"],
        "RegistryEvent": [
            "registry",
            "action",
            "host",
            "repository",
            "tag",
            "digest",
            "media_type",
            "artifact_class",
            "event_id",
            "event_id_source",
            "actor",
            "reason",
        ],
        "Project": ["id", "name", "repository", "clone_url"],
        "Build": [
            "project_id",
            "ulid",
            "event_type",
            "event_provider",
            "commit_ref",
            "short_title",
            "long_title",
            "commit_id",
            "clone_url",
            "log_level",
            "script",
            "config",
        ],
        "Receipt": ["build_name"],
    }


@pytest.mark.parametrize(
    ("make", "cls", "name", "bad"),
    [(make, cls, name, bad) for make, cls, names in CASES for name in names for bad in BAD],
)
def test_unencodable_text_is_refused(make: Callable[..., Any], cls: type, name: str, bad: str) -> None:
    """A lone surrogate in any text field raises InvalidText (a BadRequest) naming the field, not its content."""
    with pytest.raises(InvalidText) as caught:
        make(**{name: "ok " + bad})
    assert isinstance(caught.value, BadRequest)
    assert caught.value.message == f"{cls.__name__}.{name} is not valid UTF-8 text"


@pytest.mark.parametrize(("make", "cls", "names"), CASES)
def test_any_valid_text_is_kept(make: Callable[..., Any], cls: type, names: list[str]) -> None:
    """Non-ASCII, astral, NUL and control characters are valid text and are kept as given."""
    text = "\u00e9\U0001f600\x00\r\n\u2028"
    # An event's repository and tag keep to the OCI grammar as well
    # (tests/test_registries_grammar.py): free text is kept everywhere else.
    names = [name for name in names if not (cls is RegistryEvent and name in ("repository", "tag"))]
    value = make(**dict.fromkeys(names, text))
    assert [getattr(value, name) for name in names] == [text] * len(names)


def test_evolve_is_checked_too() -> None:
    """A value made from another (attrs.evolve) is checked like any other."""
    with pytest.raises(InvalidText):
        attrs.evolve(build(), commit_ref="\udc80")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"headers": {"user-agent": "\udc80"}}, "headers"),
        ({"headers": [("x-\udc80", "v")]}, "headers"),
        ({"query": [("commit", "\udcff")]}, "query"),
        ({"query": [("\ud800", "v")]}, "query"),
        # Among valid non-ASCII pairs (the slow check), the one bad value.
        ({"headers": [("a", "\u00e9"), ("b", "ok"), ("c", "\U0001f600\udc80")]}, "headers"),
    ],
)
def test_delivery_headers_and_query_are_checked(changes: dict[str, Any], field: str) -> None:
    """Every name and value of a delivery's headers and query must be encodable."""
    with pytest.raises(InvalidText) as caught:
        delivery(**changes)
    assert caught.value.message == f"Delivery.{field} is not valid UTF-8 text"


def test_delivery_headers_and_query_keep_any_valid_text() -> None:
    """Non-ASCII names and values of headers and query are kept as given."""
    made = delivery(headers=[("x-\u00e9", "\U0001f600"), ("a", "b")], query=[("\u2028", "\x00\u00e9")])
    assert made.headers == (("x-\u00e9", "\U0001f600"), ("a", "b"))
    assert made.query == (("\u2028", "\x00\u00e9"),)


def test_bytes_fields_are_not_text() -> None:
    """Bodies, payloads and secrets are bytes, any bytes."""
    assert delivery(body=b"\xff\xfe").body == b"\xff\xfe"
    assert build(payload=b"\xed\xb2\x80").payload == b"\xed\xb2\x80"
    assert project(cr_gateway_secret=b"\xff").cr_gateway_secret == b"\xff"
