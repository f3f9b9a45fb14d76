"""
Decoding a webhook body into a JSON object, defensively.

Every refusal is a ``BadRequest`` with a fixed reason that never echoes the
body back.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadRequest

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
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadRequest("body has a duplicated object key")
        result[key] = value
    return result


def _depth_exceeds(text: str, limit: int) -> bool:
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def decode_document(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """
    The JSON object in ``body``.

    Raises ``BadRequest`` when the body is empty, not UTF-8, not JSON, nested
    deeper than ``max_depth``, has duplicated keys or NaN/Infinity, or is not
    an object.
    """
    if not body.strip():
        raise BadRequest("body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise BadRequest("body starts with a byte-order mark")
    if _depth_exceeds(text, max_depth):
        raise BadRequest("body is nested too deeply")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("body is not a JSON object")
    return document
