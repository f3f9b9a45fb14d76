"""Decoding webhook bodies: every malformed body is a BadRequest with a fixed reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brigade_cr.core.errors import BadRequest, InvalidText
from brigade_cr.core.payload import MAX_DEPTH, decode_document


def test_object_decodes() -> None:
    """A JSON object decodes to the same dict."""
    assert decode_document(b'{"a": [1, {"b": null}], "c": "\xc3\xa9"}') == {
        "a": [1, {"b": None}],
        "c": "\u00e9",
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is empty"),
        (b"  \n", "body is empty"),
        (b'{"a": "\xff"}', "body is not UTF-8"),
        (b"\xef\xbb\xbf{}", "body starts with a byte-order mark"),
        (b"{", "body is not JSON"),
        (b"{'a': 1}", "body is not JSON"),
        (b"[]", "body is not a JSON object"),
        (b'"text"', "body is not a JSON object"),
        (b"null", "body is not a JSON object"),
        (b"42", "body is not a JSON object"),
        (b'{"a": 1, "a": 2}', "body has a duplicated object key"),
        (b'{"a": NaN}', "body contains NaN, which is not JSON"),
        (b'{"a": -Infinity}', "body contains -Infinity, which is not JSON"),
        (b'{"a": 1e999}', "body has a number out of range"),
        (b'{"a": -1.5e400}', "body has a number out of range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "body is not JSON"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "body is nested too deeply"),
        (b'{"a":' * 100000 + b"1" + b"}" * 100000, "body is nested too deeply"),
        (b"[" * 100000 + b"]" * 100000, "body is nested too deeply"),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "body is nested too deeply"),
        (b'{"a": "\\udc80"}', "body has text that is not valid Unicode"),
        (b'{"\\ud800": 1}', "body has text that is not valid Unicode"),
        (b'{"a": [{"b": ["x\\uDFFFy"]}]}', "body has text that is not valid Unicode"),
        (b'{"a": "\\ude00\\ud83d"}', "body has text that is not valid Unicode"),
        (b'{"a": {"\\udc80": null}}', "body has text that is not valid Unicode"),
        (b'"\\udc80"', "body has text that is not valid Unicode"),
    ],
)
def test_malformed_bodies(body: bytes, reason: str) -> None:
    """Each malformed body is refused with its own fixed reason."""
    with pytest.raises(BadRequest) as caught:
        decode_document(body)
    assert caught.value.message == reason


def test_bad_text_is_invalid_text() -> None:
    """A lone surrogate escape is refused as InvalidText, the BadRequest for text."""
    with pytest.raises(InvalidText):
        decode_document(b'{"repository": {"repo_name": "acme/\\udc80"}}')


def test_escapes_that_are_valid_text() -> None:
    """A surrogate pair escape is one character; an escaped backslash before "u" is no escape at all."""
    assert decode_document(b'{"a": "\\ud83d\\ude00", "b": "\\\\udc80", "\\u00e9": "\\uffff"}') == {
        "a": "\U0001f600",
        "b": "\\udc80",
        "\u00e9": "\uffff",
    }


def test_depth_limit_counts_only_structure() -> None:
    """Brackets inside strings do not count towards the depth limit."""
    body = json.dumps({"text": "[" * 1000 + '\\"{'}).encode()
    assert decode_document(body) == {"text": "[" * 1000 + '\\"{'}


def test_depth_at_limit_is_accepted() -> None:
    """Nesting exactly at the limit is fine, in objects and arrays; one more is not."""
    body = b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert "a" in decode_document(body)
    body = b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH
    assert "a" in decode_document(body)
    with pytest.raises(BadRequest) as caught:
        decode_document(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1))
    assert caught.value.message == "body is nested too deeply"


@given(
    st.recursive(
        st.none() | st.integers() | st.text(alphabet='ab\u00e9\udc80\udfff\U0001f600\\"', max_size=4),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet="k\udc80", max_size=2), c, max_size=3),
        max_leaves=15,
    )
)
def test_refused_exactly_when_some_text_is_not_encodable(value: object) -> None:
    """
    A document with a lone surrogate in any key or string is refused with
    InvalidText; one without decodes to itself. (Only low surrogates are
    drawn: a high one before a low one would be a pair, one character.)
    """
    document = {"d": value}
    body = json.dumps(document).encode()
    encodable = True
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    if encodable:
        assert decode_document(body) == document
    else:
        with pytest.raises(InvalidText):
            decode_document(body)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    """Any bytes either decode to a dict or raise BadRequest; nothing else escapes."""
    try:
        result = decode_document(body)
    except BadRequest:
        return
    assert isinstance(result, dict)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_json_values_round_trip(value: object) -> None:
    """Any JSON document decodes to itself when it is an object, else is refused."""
    body = json.dumps(value).encode()
    if isinstance(value, dict):
        assert decode_document(body) == value
    else:
        with pytest.raises(BadRequest):
            decode_document(body)
