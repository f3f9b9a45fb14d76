"""
Proving that a delivery comes from someone who knows the project's secret.

Pure functions over bytes; every comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Iterable

import attrs

from brigade_cr.core.values import Delivery


@attrs.frozen
class HmacScheme:
    """
    A sender's signature over the raw body: the hex HMAC with ``algorithm``
    (``sha256``, ``sha1``) keyed by the project's secret, in ``header``,
    after ``prefix`` (``sha256=`` for GitHub, nothing for Nexus).

    ``or_token`` marks a header that may instead carry the secret itself
    (JFrog's ``X-JFrog-Event-Auth``: the two modes cannot be told apart).
    """

    header: str
    algorithm: str
    prefix: str = ""
    or_token: bool = False


# Mechanisms, as logged and counted (never with the credential itself).
URL_TOKEN = "url-token"  # noqa: S105 (a mechanism name, not a credential)
BEARER = "bearer"
BASIC = "basic"
SIGNATURE = "signature"
NONE = "none"


@attrs.frozen
class Verdict:
    """
    The outcome of checking a delivery's credentials.

    ``mechanism`` names what proved the secret (or ``none``); ``reason`` says,
    for the server's log only, why a delivery was refused.
    """

    ok: bool
    mechanism: str = NONE
    reason: str = ""


def _query_bytes(value: str) -> bytes:
    # Query text is UTF-8 (the edge refuses any other), so this is the bytes
    # the sender percent-encoded.
    return value.encode("utf-8")


def _header_bytes(value: str) -> bytes:
    # The edge decodes header values as ISO-8859-1, one character per byte
    # sent: encoding them back gives those bytes. (A Delivery made in code
    # may hold other text; that compares as its UTF-8.)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _same(presented: bytes, secret: bytes) -> bool:
    return hmac.compare_digest(presented, secret)


def _authorization(delivery: Delivery) -> tuple[str, bytes] | None:
    header = delivery.header("authorization")
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    scheme = scheme.lower()
    credential = credential.strip()
    if scheme == "bearer":
        return BEARER, _header_bytes(credential)
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True)
        except (binascii.Error, ValueError):
            return BASIC, b""
        # EventBridge connections can only do Basic: the password is the secret.
        return BASIC, decoded.partition(b":")[2]
    return scheme or "authorization", b""


def _signature_matches(scheme: HmacScheme, value: str, secret: bytes, body: bytes) -> bool:
    presented = value.strip()
    if scheme.or_token and _same(_header_bytes(presented), secret):
        return True
    if scheme.prefix:
        if not presented.lower().startswith(scheme.prefix):
            return False
        presented = presented[len(scheme.prefix) :]
    try:
        digest = bytes.fromhex(presented)
    except ValueError:
        return False
    expected = hmac.new(secret, body, scheme.algorithm).digest()
    return hmac.compare_digest(digest, expected)


def check_credentials(secret: bytes, delivery: Delivery, schemes: Iterable[HmacScheme]) -> Verdict:
    """
    Whether ``delivery`` proves knowledge of ``secret`` by any mechanism it
    presents: ``?token=``, ``Authorization: Bearer`` (or Basic, password
    only), or an HMAC signature header of one of ``schemes`` over the raw
    body. Any one valid proof is enough; comparison is constant-time on bytes.
    """
    presented: list[str] = []
    token = delivery.query_value("token")
    if token is not None:
        presented.append(URL_TOKEN)
        if _same(_query_bytes(token), secret):
            return Verdict(True, URL_TOKEN)
    authorization = _authorization(delivery)
    if authorization is not None:
        mechanism, credential = authorization
        presented.append(mechanism)
        if mechanism in (BEARER, BASIC) and credential and _same(credential, secret):
            return Verdict(True, mechanism)
    for scheme in schemes:
        value = delivery.header(scheme.header)
        if value is None:
            continue
        presented.append(f"{SIGNATURE}:{scheme.header}")
        if _signature_matches(scheme, value, secret, delivery.body):
            return Verdict(True, f"{SIGNATURE}:{scheme.header}")
    if not presented:
        return Verdict(False, NONE, "no credentials presented")
    return Verdict(False, NONE, "wrong credentials (" + ", ".join(presented) + ")")
