"""
Decoding a webhook body into a JSON object, defensively.

Every refusal is a ``BadRequest`` with a fixed reason that never echoes the
body back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from brigade_cr.core.errors import BadRequest, InvalidText
from brigade_cr.core.grammar import is_text

MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"body contains {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e999 parses as infinity, which JSON cannot represent.
    if value in (float("inf"), float("-inf")):
        raise BadRequest("body has a number out of range")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicated key is read differently by different parsers (first wins
    # in some, last in others): refuse it rather than guess.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise BadRequest("body has a duplicated object key")
    return result


# Text decoded strictly from UTF-8 holds no surrogate, so only a JSON escape
# ``\\uD800``-``\\uDFFF`` can put a lone one into a string; without any
# such escape in the body, the strings need no checking.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# What json.loads would make on every call with these hooks; it keeps no
# state between documents.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


def _check_structure(document: Any, limit: int, check_text: bool) -> None:
    # Level by level, so depth costs no Python stack and each container is
    # looked at once; strings are looked at only when an escape could have
    # made a bad one.
    level = [document]
    depth = 1
    while level:
        if depth > limit:
            raise BadRequest("body is nested too deeply")
        below = []
        for value in level:
            if value.__class__ is dict:
                if check_text and not all(is_text(key) for key in value):
                    raise InvalidText("body has text that is not valid Unicode")
                children = value.values()
            else:
                children = value
            for child in children:
                if child.__class__ is dict or child.__class__ is list:
                    below.append(child)
                elif check_text and child.__class__ is str and not is_text(child):
                    raise InvalidText("body has text that is not valid Unicode")
        level = below
        depth += 1


def decode_document(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """
    The JSON object in ``body``.

    Raises ``BadRequest`` when the body is empty, not UTF-8, not JSON, nested
    deeper than ``max_depth``, has duplicated keys or NaN/Infinity, or is not
    an object; ``InvalidText`` (a ``BadRequest``) when a string, key or value,
    is not valid Unicode (a lone surrogate escape such as ``"\\udc80"``).
    """
    if not body.strip():
        raise BadRequest("body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise BadRequest("body starts with a byte-order mark")
    try:
        document = _DECODER.decode(text)
    except RecursionError:
        # Deeper than the interpreter's recursion limit, so far deeper than
        # max_depth.
        raise BadRequest("body is nested too deeply") from None
    except ValueError:
        raise BadRequest("body is not JSON") from None
    check_text = _SURROGATE_ESCAPE.search(text) is not None
    if isinstance(document, (dict, list)):
        _check_structure(document, max_depth, check_text)
    elif check_text and isinstance(document, str) and not is_text(document):
        raise InvalidText("body has text that is not valid Unicode")
    if not isinstance(document, dict):
        raise BadRequest("body is not a JSON object")
    return document
