"""
A fake Kubernetes API server for core/v1 Secrets, written as a Klein app.

L{FakeKube} speaks the Kubernetes wire protocol (JSON only) for the subset
of the API that brigade-cr and the Brigade v1 controller use: discovery,
namespaces (read-only), and Secrets with create/get/list/update/patch/
delete/deletecollection/watch, label and field selectors, optimistic
concurrency through C{resourceVersion}, bounded watch history (410
Expired like a real watch cache), watch bookmarks (C{allowWatchBookmarks}:
one as a watch times out, and on demand with L{FakeKube.send_bookmarks}),
bearer-token auth, optional TLS
client-certificate auth, the real apiserver's validation of Secrets and
its Status error bodies.

It is verified against the official Kubernetes client and kubectl by
C{tests/test_kubeapi.py}, and by the same suite against a real cluster when
one is configured (see C{tests/kubetarget.py}).

Use it in memory with C{treq.testing.StubTreq(fake.resource())}, in a
reactor with L{serve_tls} or L{serve_http}, or as a process with::

    python -m tests.kubeapi --port 0 --token T --cert-dir DIR

which prints one line of JSON (C{url}, C{ca}, C{kubeconfig},
C{control_url}, ...) once it listens and runs until SIGTERM.

Fault modes (API down, error storms, 429, latency, 500 after commit,
resets mid-response, hangs) are composable objects in L{FakeKube.faults}
(see L{InjectedFault}) plus L{ServedKube.stop_listening}; a process is
driven through its control endpoint (L{FakeKubeControl}, a second,
plain-HTTP loopback port).

Known differences from a real apiserver are listed in L{FakeKube}'s
docstring.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import errno
import itertools
import json
import os
import random
import re
import sys
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from attrs import Factory, define, field, frozen
from attrs import fields as attrs_fields
from attrs import validators as attrs_validators
from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

__all__ = [
    "FAULT_KINDS",
    "FIELD_SELECTABLE_SECRET_FIELDS",
    "MAX_SECRET_SIZE",
    "APICall",
    "CommitThenRespond",
    "DelayAction",
    "ErrorStorm",
    "FailAfterCommit",
    "FailWith",
    "FakeKube",
    "FakeKubeControl",
    "Fault",
    "FaultAction",
    "FaultResponse",
    "Hang",
    "HangAction",
    "InjectedFault",
    "KubeError",
    "LabelSelector",
    "Latency",
    "ResetAction",
    "ResetMidResponse",
    "SelectorError",
    "ServedKube",
    "TooManyRequests",
    "describe_fault",
    "main",
    "make_fault",
    "parse_field_selector",
    "parse_label_selector",
    "serve_control",
    "serve_http",
    "serve_tls",
    "status_failure",
    "write_kubeconfig",
]

JSON = dict[str, Any]
# A handler's answer: (code, body) or (code, body, headers).
_Reply = tuple[Any, ...]

MAX_SECRET_SIZE = 1048576
MAX_ANNOTATIONS_SIZE = 262144
FIELD_SELECTABLE_SECRET_FIELDS = ("metadata.name", "metadata.namespace", "type")
FIELD_SELECTABLE_NAMESPACE_FIELDS = ("metadata.name", "status.phase")

VERSION_INFO: JSON = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T17:27:03Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# Verbs listed in discovery are exactly those implemented below.
SECRET_VERBS = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
]
NAMESPACE_VERBS = ["get", "list"]

_log = Logger()

_OPENAPI_HASH = "0fa6e4ad2c5e1f1a7f9ba4f1f3a8a4f0e0d0c0b0a090807060504030201000ff"


def _openapi_v3_core() -> JSON:
    """
    A minimal OpenAPI v3 document for C{/api/v1}: just enough for kubectl
    to see that Secret writes accept the C{fieldValidation} parameter, so it
    validates on the server (C{fieldValidation=Strict}) instead of
    downloading schemas.  No schemas are served.
    """
    gvk = {"group": "", "version": "v1", "kind": "Secret"}
    param = {
        "name": "fieldValidation",
        "in": "query",
        "description": "fieldValidation instructs the server on how to "
        "handle objects in the request containing unknown or duplicate "
        "fields. Valid values are: Ignore, Warn, Strict.",
        "schema": {"type": "string", "uniqueItems": True},
    }

    def op(action: str, op_id: str) -> JSON:
        return {
            "operationId": op_id,
            "parameters": [param],
            "responses": {},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }

    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": {
            "/api/v1/namespaces/{namespace}/secrets": {
                "post": op("post", "createCoreV1NamespacedSecret"),
            },
            "/api/v1/namespaces/{namespace}/secrets/{name}": {
                "put": op("put", "replaceCoreV1NamespacedSecret"),
                "patch": op("patch", "patchCoreV1NamespacedSecret"),
            },
        },
        "components": {"schemas": {}},
    }


# ---------------------------------------------------------------------------
# Status bodies and errors
# ---------------------------------------------------------------------------

_REASONS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: (
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    ),
    409: ("Conflict", "the server reported a conflict"),
    410: ("Expired", "the resource version is too old"),
    415: ("UnsupportedMediaType", "the media type is not supported"),
    422: ("Invalid", "the server rejected our request due to an error"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: (
        "ServiceUnavailable",
        "the server is currently unable to handle the request",
    ),
    504: ("Timeout", "the server was unable to return a response in time"),
}


def status_failure(
    code: int,
    reason: str | None,
    message: str,
    details: JSON | None = None,
) -> JSON:
    """
    Build a C{Status} object with C{status: Failure}, in the field order a
    real apiserver uses.  C{reason} C{None} leaves the field out (the
    apiserver's "Unknown" reason); C{details} C{None} leaves out C{details}.
    """
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class KubeError(Exception):
    """
    An API error, rendered as a C{Status} body with HTTP status C{code}.
    """

    def __init__(
        self,
        code: int,
        reason: str | None,
        message: str,
        details: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_failure(code, reason, message, details)
        self.headers = dict(headers or {})

    @classmethod
    def bad_request(cls, message: str) -> KubeError:
        """400 BadRequest without details, as C{errors.NewBadRequest}."""
        return cls(400, "BadRequest", message)

    @classmethod
    def not_found(cls, resource: str, name: str) -> KubeError:
        """404 NotFound for C{resource} (plural) named C{name}."""
        return cls(
            404,
            "NotFound",
            f'{resource} "{name}" not found',
            {"name": name, "kind": resource},
        )

    @classmethod
    def conflict(cls, resource: str, name: str, why: str) -> KubeError:
        """409 Conflict, as C{errors.NewConflict}."""
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource} "{name}": {why}',
            {"name": name, "kind": resource},
        )


@frozen
class FieldError:
    """
    One validation error, as Kubernetes' C{field.Error}.

    @ivar kind: C{Invalid}, C{Required}, C{Forbidden} or C{TooLong}.
    """

    kind: str
    field: str
    value: Any = None
    detail: str = ""

    _CAUSES: ClassVar[dict[str, str]] = {
        "Invalid": "FieldValueInvalid",
        "Required": "FieldValueRequired",
        "Forbidden": "FieldValueForbidden",
        "TooLong": "FieldValueTooLong",
    }

    def body(self) -> str:
        """The error without its field path (a cause's C{message})."""
        if self.kind == "Invalid":
            text = f"Invalid value: {_go_quote(self.value)}"
        elif self.kind == "Required":
            text = "Required value"
        elif self.kind == "Forbidden":
            text = "Forbidden"
        else:
            text = "Too long"
        return f"{text}: {self.detail}" if self.detail else text

    def cause(self) -> JSON:
        """A C{StatusCause}."""
        return {
            "reason": self._CAUSES[self.kind],
            "message": self.body(),
            "field": self.field,
        }

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _go_quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def invalid(kind: str, name: str, errors: Sequence[FieldError]) -> KubeError:
    """422 Invalid for object C{kind} C{name}, as C{errors.NewInvalid}."""
    if len(errors) == 1:
        summary = str(errors[0])
    else:
        summary = "[" + ", ".join(str(e) for e in errors) + "]"
    return KubeError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        {"name": name, "kind": kind, "causes": [e.cause() for e in errors]},
    )


# ---------------------------------------------------------------------------
# Name and key validation (k8s.io/apimachinery/pkg/util/validation)
# ---------------------------------------------------------------------------

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN)
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME)
_LABEL_VALUE = r"(" + _QUALIFIED_NAME + r")?"
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE)
_CONFIG_KEY = r"[-._a-zA-Z0-9]+"
_CONFIG_KEY_RE = re.compile(_CONFIG_KEY)


def _examples(*examples: str) -> str:
    return ",  or ".join(f"'{e}'" for e in examples)


def _regex_error(what: str, regex: str, *examples: str) -> str:
    return f"{what} (e.g. {_examples(*examples)}, regex used for validation is '{regex}')"


_DNS1123_SUBDOMAIN_MSG = _regex_error(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric "
    "character",
    _DNS1123_SUBDOMAIN,
    "example.com",
)
_QUALIFIED_NAME_MSG = _regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
    _QUALIFIED_NAME,
    "MyName",
    "my.name",
    "123-abc",
)
_LABEL_VALUE_MSG = _regex_error(
    "a valid label must be an empty string or consist of alphanumeric "
    "characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character",
    _LABEL_VALUE,
    "MyValue",
    "my_value",
    "12345",
)
_CONFIG_KEY_MSG = _regex_error(
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
    _CONFIG_KEY,
    "key.name",
    "KEY_NAME",
    "key-name",
)


def dns1123_subdomain_errors(value: str) -> list[str]:
    """Messages of C{IsDNS1123Subdomain}: empty if C{value} is valid."""
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errors.append(_DNS1123_SUBDOMAIN_MSG)
    return errors


def qualified_name_errors(value: str) -> list[str]:
    """Messages of C{IsQualifiedName} (label and annotation keys)."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend("prefix part " + m for m in dns1123_subdomain_errors(prefix))
    else:
        return [
            "a qualified name " + _QUALIFIED_NAME_MSG + " with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if name and not _QUALIFIED_NAME_RE.fullmatch(name):
        errors.append("name part " + _QUALIFIED_NAME_MSG)
    return errors


def label_value_errors(value: str) -> list[str]:
    """Messages of C{IsValidLabelValue}."""
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _LABEL_VALUE_RE.fullmatch(value):
        errors.append(_LABEL_VALUE_MSG)
    return errors


def config_key_errors(key: str) -> list[str]:
    """Messages of C{IsConfigMapKey} (Secret and ConfigMap data keys)."""
    errors = []
    if len(key) > 253:
        errors.append("must be no more than 253 characters")
    if not _CONFIG_KEY_RE.fullmatch(key):
        errors.append(_CONFIG_KEY_MSG)
    if key == ".":
        errors.append("must not be '.'")
    elif key == "..":
        errors.append("must not be '..'")
    elif key.startswith(".."):
        errors.append("must not start with '..'")
    return errors


# ---------------------------------------------------------------------------
# Label selectors (k8s.io/apimachinery/pkg/labels/selector.go)
# ---------------------------------------------------------------------------


class SelectorError(ValueError):
    """A label or field selector could not be parsed."""


_OPERATORS = ("!=", "==", "=", "!", "(", ")", ",", "<", ">")
_SPECIAL = set("!=(),<>")


def _lex(selector: str) -> list[tuple[str, str]]:
    """
    Split a label selector into (token type, literal) pairs: token type is
    the operator itself, C{"id"} for identifiers or C{"in"}/C{"notin"}; the
    list ends with C{("eos", "")}.
    """
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(selector):
        ch = selector[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _SPECIAL:
            for op in _OPERATORS:
                if selector.startswith(op, i):
                    tokens.append((op, op))
                    i += len(op)
                    break
            continue
        j = i
        while j < len(selector) and not selector[j].isspace() and selector[j] not in _SPECIAL:
            j += 1
        word = selector[i:j]
        tokens.append((word if word in ("in", "notin") else "id", word))
        i = j
    tokens.append(("eos", ""))
    return tokens


@frozen
class Requirement:
    """
    One label requirement.  C{op} is one of C{in}, C{notin}, C{=}, C{==},
    C{!=}, C{exists}, C{!}, C{gt}, C{lt}.
    """

    key: str
    op: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether C{labels} satisfy this requirement."""
        present = self.key in labels
        if self.op in ("in", "=", "=="):
            return present and labels[self.key] in self.values
        if self.op in ("notin", "!="):
            return not present or labels[self.key] not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present:
            return False
        try:
            have = int(labels[self.key])
        except ValueError:
            return False
        (want,) = (int(v) for v in self.values)
        return have > want if self.op == "gt" else have < want


@frozen
class LabelSelector:
    """A parsed label selector: all requirements must match."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether C{labels} satisfy every requirement."""
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def parse_label_selector(selector: str) -> LabelSelector:
    """
    Parse a label selector with the grammar and error messages of
    C{labels.Parse}: C{key}, C{!key}, C{key=v}, C{key==v}, C{key!=v},
    C{key in (a,b)}, C{key notin (a,b)}, C{key>1}, C{key<1}, joined by
    commas.  Keys and values are validated like label keys and values.

    @raise SelectorError: for malformed selectors.
    """
    tokens = _lex(selector)
    pos = 0

    def lookahead(values: bool = True) -> tuple[str, str]:
        tok, lit = tokens[pos]
        if values and tok in ("in", "notin"):
            tok = "id"
        return tok, lit

    def consume(values: bool = True) -> tuple[str, str]:
        nonlocal pos
        tok, lit = lookahead(values)
        pos = min(pos + 1, len(tokens) - 1)
        return tok, lit

    def parse_values() -> set[str]:
        tok, lit = consume()
        if tok != "(":
            raise SelectorError(f"found '{lit}', expected: '('")
        tok, lit = lookahead()
        if tok == ")":
            consume()
            return {""}
        if tok not in ("id", ","):
            raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:
            tok, lit = consume()
            if tok == "id":
                values.add(lit)
                tok2, lit2 = lookahead()
                if tok2 == ",":
                    consume()
                    continue
                if tok2 == ")":
                    break
                raise SelectorError(f"found '{lit2}', expected: ',' or ')'")
            elif tok == ",":
                values.add("")
                tok2, _ = lookahead()
                if tok2 == ")":
                    break
            else:
                raise SelectorError(f"found '{lit}', expected: ',', or identifier")
        tok, lit = consume()
        if tok != ")":
            raise SelectorError(f"found '{lit}', expected: ')'")
        return values

    def parse_requirement() -> Requirement:
        op = None
        if lookahead(False)[0] == "!":
            consume(False)
            op = "!"
        tok, lit = consume(False)
        if tok != "id":
            raise SelectorError(f"found '{lit}', expected: identifier")
        key = lit
        for msg in qualified_name_errors(key):
            raise SelectorError(f"unable to parse requirement: <nil>: Invalid value: {_go_quote(key)}: {msg}")
        if lookahead()[0] in ("eos", ","):
            return Requirement(key, op or "exists", frozenset())
        if op == "!":
            raise SelectorError(f"found '{lookahead()[1]}', expected: ',' or 'end of string'")
        tok, lit = consume(False)
        ops = {
            "in": "in",
            "notin": "notin",
            "=": "=",
            "==": "==",
            "!=": "!=",
            ">": "gt",
            "<": "lt",
        }
        if tok not in ops:
            raise SelectorError(f"found '{lit}', expected: in, notin, =, ==, !=, gt, lt")
        op = ops[tok]
        if op in ("in", "notin"):
            values = parse_values()
        else:
            tok, lit = lookahead()
            if tok in ("eos", ","):
                values = {""}
            else:
                tok, lit = consume()
                if tok != "id":
                    raise SelectorError(f"found '{lit}', expected: identifier")
                values = {lit}
        if op in ("gt", "lt"):
            (value,) = values
            try:
                int(value)
            except ValueError:
                raise SelectorError(
                    "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                ) from None
        else:
            for value in sorted(values):
                for msg in label_value_errors(value):
                    raise SelectorError(
                        "unable to parse requirement: values[0][" + key + f"]: Invalid value: {_go_quote(value)}: {msg}"
                    )
        return Requirement(key, op, frozenset(values))

    requirements: list[Requirement] = []
    while True:
        tok, lit = lookahead()
        if tok == "eos":
            break
        if tok not in ("id", "!"):
            raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")
        requirements.append(parse_requirement())
        tok, lit = consume()
        if tok == "eos":
            break
        if tok != ",":
            raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
        if lookahead()[0] not in ("id", "!"):
            raise SelectorError(f"found '{lookahead()[1]}', expected: identifier after ','")
    return LabelSelector(tuple(requirements))


# ---------------------------------------------------------------------------
# Field selectors (k8s.io/apimachinery/pkg/fields/selector.go)
# ---------------------------------------------------------------------------


@frozen
class FieldTerm:
    """One field requirement: C{op} is C{=} (also for C{==}) or C{!=}."""

    field: str
    op: str
    value: str


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape_field_value(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence in {value!r}")
            out.append(value[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_field_selector(selector: str) -> tuple[FieldTerm, ...]:
    """
    Parse a field selector: comma-separated C{field=value},
    C{field==value} or C{field!=value} terms, with C{\\,}, C{\\=} and
    C{\\\\} escapes in values.  Empty terms are ignored.

    @raise SelectorError: for a term without an operator.
    """
    terms = []
    for term in _split_unescaped(selector, ","):
        if not term:
            continue
        for i in range(len(term)):
            if term[i] == "\\":
                continue
            op = next((o for o in ("!=", "==", "=") if term.startswith(o, i)), None)
            if op is not None and (i == 0 or term[i - 1] != "\\"):
                terms.append(
                    FieldTerm(
                        term[:i],
                        "!=" if op == "!=" else "=",
                        _unescape_field_value(term[i + len(op) :]),
                    )
                )
                break
        else:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{term}'")
    return tuple(terms)


def _field_value(obj: JSON, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value if isinstance(value, str) else ""


def _field_matches(terms: Iterable[FieldTerm], obj: JSON) -> bool:
    for term in terms:
        have = _field_value(obj, term.field)
        if (have == term.value) != (term.op == "="):
            return False
    return True


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def rfc3339(seconds: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC timestamp, second precision."""
    moment = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """The C{AGE} column format of kubectl (C{duration.HumanDuration})."""
    if seconds < -1:
        return "<invalid>"
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 8760}y"
    return f"{hours // 24 // 365}y"


def parse_bool(text: str) -> bool:
    """Go's C{strconv.ParseBool}; raises C{ValueError} otherwise."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _base64_error(value: str) -> str | None:
    """
    C{None} if C{value} is standard padded base64 (as Go decodes C{[]byte}
    in JSON), else Go's C{illegal base64 data at input byte N} message.
    """
    stripped = value.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(stripped, validate=True)
        return None
    except (binascii.Error, ValueError):
        pass
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, ch in enumerate(stripped):
        if ch == "=":
            break
        if ch not in alphabet:
            return f"illegal base64 data at input byte {i}"
    return f"illegal base64 data at input byte {len(stripped) // 4 * 4}"


_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"

_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
)
_SECRET_FIELDS = ("kind", "apiVersion", "metadata", "immutable", "data", "stringData", "type")
_META_DROPPED = ("selfLink", "managedFields")


def _ordered_meta(meta: Mapping[str, Any]) -> JSON:
    out = {}
    for key in _META_ORDER:
        value = meta.get(key)
        if value in (None, "", {}, []) or (key == "generation" and not value):
            continue
        out[key] = value
    return out


def _secret_object(
    meta: Mapping[str, Any],
    data: Mapping[str, str],
    type_: str,
    immutable: bool | None,
) -> JSON:
    obj: JSON = {"kind": "Secret", "apiVersion": "v1"}
    obj["metadata"] = _ordered_meta(meta)
    if immutable is not None:
        obj["immutable"] = immutable
    if data:
        obj["data"] = dict(sorted(data.items()))
    obj["type"] = type_
    return obj


def _json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _json_merge_patch(result.get(key), value)
    return result


def _json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; raises C{ValueError} on failure."""
    if not isinstance(ops, list):
        raise ValueError("json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def split(pointer: Any) -> list[str]:
        if not isinstance(pointer, str) or (pointer and pointer[0] != "/"):
            raise ValueError(f"invalid JSON pointer {pointer!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]

    def parent(root: Any, parts: list[str]) -> tuple[Any, str]:
        node = root
        for part in parts[:-1]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ValueError(f"path {'/'.join(parts)!r} does not exist")
        return node, parts[-1]

    def get(root: Any, parts: list[str]) -> Any:
        if not parts:
            return root
        node, last = parent(root, parts)
        if isinstance(node, dict) and last in node:
            return node[last]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            return node[int(last)]
        raise ValueError(f"path {'/'.join(parts)!r} does not exist")

    def remove(root: Any, parts: list[str]) -> Any:
        node, last = parent(root, parts)
        value = get(root, parts)
        if isinstance(node, dict):
            del node[last]
        else:
            del node[int(last)]
        return value

    def add(root: Any, parts: list[str], value: Any) -> Any:
        if not parts:
            return value
        node, last = parent(root, parts)
        if isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if index > len(node):
                raise ValueError("index out of range")
            node.insert(index, value)
        else:
            raise ValueError(f"cannot add to {'/'.join(parts)!r}")
        return root

    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise ValueError("invalid operation")
        kind, parts = op["op"], split(op.get("path"))
        if kind == "add":
            doc = add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            remove(doc, parts)
        elif kind == "replace":
            get(doc, parts)
            if parts:
                remove(doc, parts)
            doc = add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "move":
            value = remove(doc, split(op.get("from")))
            doc = add(doc, parts, value)
        elif kind == "copy":
            value = copy.deepcopy(get(doc, split(op.get("from"))))
            doc = add(doc, parts, value)
        elif kind == "test":
            if get(doc, parts) != op.get("value"):
                raise ValueError(f"testing value {op.get('path')} failed")
        else:
            raise ValueError(f"Unexpected kind: {kind}")
    return doc


# ---------------------------------------------------------------------------
# Faults and request accounting
# ---------------------------------------------------------------------------


@frozen
class APICall:
    """
    One request as the fake saw it (recorded before auth and faults).

    @ivar method: HTTP method, e.g. C{"POST"}.
    @ivar path: the request path.
    @ivar kind: what the path names: C{discovery}, C{namespaces},
        C{namespace}, C{secrets} (a collection, namespaced or not),
        C{secret} (one object) or C{unknown}.
    @ivar verb: the Kubernetes verb: C{get}, C{list}, C{watch}, C{create},
        C{update}, C{patch}, C{delete}, C{deletecollection}, or C{None}
        for discovery and unknown requests.
    @ivar namespace: the namespace in the path, if any.
    @ivar name: the object name in the path, if any.
    @ivar authenticated: whether auth succeeded (C{True} if auth is off).
    @ivar query: the decoded query parameters (the last value of each).
    """

    method: str
    path: str
    kind: str
    verb: str | None = None
    namespace: str | None = None
    name: str | None = None
    authenticated: bool = True
    query: Mapping[str, str] = Factory(dict)


@frozen
class FaultResponse:
    """
    What a fault answers instead of the real handler: C{body} is sent as
    JSON, or as-is if it is C{bytes} (then give a C{Content-Type} header).
    """

    code: int
    body: JSON | bytes
    headers: Mapping[str, str] = Factory(dict)


class Fault(Protocol):
    """
    A fault is consulted for every authenticated API request, in the order
    of L{FakeKube.faults}.  It returns C{None} (not concerned), a
    L{DelayAction} (wait, then go on consulting the next faults), or a
    terminal action, which decides the request: a L{FaultResponse} answers
    instead of the real handler, L{CommitThenRespond}, L{ResetAction} and
    L{HangAction} are described there.  Faults may keep state; the
    composable ones are the L{InjectedFault} subclasses.
    """

    def __call__(self, call: APICall) -> FaultAction | None: ...


@frozen
class FailWith:
    """
    A fault answering C{code} with the matching C{Status} to every request
    (or those whose verb is in C{verbs}), with C{Retry-After} and
    C{details.retryAfterSeconds} when C{retry_after} is given.
    """

    code: int
    retry_after: int | None = None
    verbs: frozenset[str] | None = None

    def __call__(self, call: APICall) -> FaultResponse | None:
        if self.verbs is not None and call.verb not in self.verbs:
            return None
        reason, message = _REASONS.get(self.code, ("InternalError", f"injected fault {self.code}"))
        details: JSON | None = None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            details = {"retryAfterSeconds": self.retry_after}
            headers["Retry-After"] = str(self.retry_after)
        return FaultResponse(self.code, status_failure(self.code, reason, message, details), headers)


# -- composable fault objects ------------------------------------------------
#
# A fault returns None (not concerned), or one of these actions:
#   FaultResponse      answer this instead of the real handler;
#   DelayAction        wait (on the fake's clock), then go on: later faults
#                      and the handler still apply (not terminal); or
#                      go on at once and delay only the answer;
#   CommitThenRespond  run the real handler (the write IS committed), then
#                      answer this instead of its answer;
#   ResetAction        start a response, then abort the TCP connection;
#   HangAction         never answer.


@frozen
class DelayAction:
    """
    Delay the rest of the request's processing by C{seconds} (fake's
    clock), or, if C{answer_only}, process it at once and hold back only
    the answer.
    """

    seconds: float
    answer_only: bool = False


@frozen
class CommitThenRespond:
    """
    Run the real handler, then answer C{response} instead of its answer,
    if it succeeded (2xx; C{on_commit} is then called).  A failing handler
    (nothing committed) answers its own error.
    """

    response: FaultResponse
    on_commit: Callable[[], None] | None = None


@frozen
class ResetAction:
    """
    Start a response and abort the connection mid-body.

    @ivar commit: run the real handler first (its status code and body are
        the ones started), else start a C{200} with a made-up object.
    @ivar fraction: the share of the body sent before the abort.
    @ivar code: the status code to start, overriding the above.
    @ivar send_headers: C{False} aborts before sending anything at all.
    """

    commit: bool = False
    fraction: float = 0.5
    code: int | None = None
    send_headers: bool = True


@frozen
class HangAction:
    """Never answer (after running the real handler, if C{commit})."""

    commit: bool = False


FaultAction = FaultResponse | DelayAction | CommitThenRespond | ResetAction | HangAction
_F = TypeVar("_F", bound=Fault)

_RESOURCE_OF_KIND = {
    "secrets": "secrets",
    "secret": "secrets",
    "namespaces": "namespaces",
    "namespace": "namespaces",
}


def _name_set(values: str | Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return frozenset([values])
    return frozenset(values)


def _non_negative(instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _a_fraction(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value!r}")


def _http_error_code(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and not 100 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP status code, not {value!r}")


_fault_ids = itertools.count(1)


@define(eq=False, kw_only=True)
class InjectedFault:
    """
    Base of the composable fault modes: who is hit, how often, and a count.

    A fault is concerned with an authenticated request when it is still
    active and every given selector matches; it then I{fires} with
    probability C{probability} (drawn from its own C{random.Random(seed)},
    so a run is reproducible) and returns its action.

    @ivar verbs: Kubernetes verbs hit (C{create}, C{get}, ...; see
        L{APICall.verb}); C{None} hits all, including discovery.
    @ivar kinds: path kinds hit (L{APICall.kind}: C{secrets} is a
        collection, C{secret} one object, C{discovery}, ...).
    @ivar resources: resources hit: C{secrets} (both kinds C{secret} and
        C{secrets}) or C{namespaces}.
    @ivar namespaces: namespaces hit (requests naming no namespace are not).
    @ivar times: fire at most this many times, then deactivate (C{None}:
        forever).
    @ivar probability: the share of concerned requests it fires on.
    @ivar seed: seed of the random draws.
    @ivar fired: how many times it fired.
    @ivar id: a process-wide unique number (for the control endpoint).
    """

    kind: ClassVar[str] = ""

    verbs: frozenset[str] | None = field(default=None, converter=_name_set)
    kinds: frozenset[str] | None = field(default=None, converter=_name_set)
    resources: frozenset[str] | None = field(default=None, converter=_name_set)
    namespaces: frozenset[str] | None = field(default=None, converter=_name_set)
    times: int | None = field(default=None, validator=_non_negative)
    probability: float = field(default=1.0, validator=_a_fraction)
    seed: int = 0
    fired: int = field(init=False, default=0)
    id: int = field(init=False, factory=lambda: next(_fault_ids))
    _rng: random.Random = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        """Whether it may still fire (C{times} not used up)."""
        return self.times is None or self.fired < self.times

    def matches(self, call: APICall) -> bool:
        """Whether the selectors hit C{call} (ignoring C{times} and chance)."""
        if self.verbs is not None and call.verb not in self.verbs:
            return False
        if self.kinds is not None and call.kind not in self.kinds:
            return False
        if self.resources is not None and _RESOURCE_OF_KIND.get(call.kind) not in self.resources:
            return False
        return self.namespaces is None or call.namespace in self.namespaces

    def __call__(self, call: APICall) -> FaultAction | None:
        if not self.active or not self.matches(call):
            return None
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return None
        self.fired += 1
        return self.action(call)

    def action(self, call: APICall) -> FaultAction:
        """What to do with a request this fault fires on."""
        raise NotImplementedError

    def describe(self) -> JSON:
        """
        This fault as JSON: C{kind}, C{id}, C{fired}, C{active} and every
        constructor parameter (sets as sorted lists), plus fault-specific
        counters.
        """
        out: JSON = {"kind": self.kind, "id": self.id, "fired": self.fired, "active": self.active}
        for attribute in attrs_fields(type(self)):
            if not attribute.init or attribute.name.startswith("_"):
                continue
            value = getattr(self, attribute.name)
            out[attribute.name] = sorted(value) if isinstance(value, frozenset) else value
        return out


def _failure_body(code: int, message: str | None, details: JSON | None = None) -> JSON:
    reason, default = _REASONS.get(code, ("InternalError", f"injected fault {code}"))
    return status_failure(code, reason, message or default, details)


@define(eq=False, kw_only=True)
class ErrorStorm(InjectedFault):
    """
    Answer C{code} (default 503) with the matching C{Status}, e.g. an
    apiserver whose etcd is unreachable; with C{Retry-After} and
    C{details.retryAfterSeconds} when C{retry_after} is given.  Combine
    with C{times} (the next N requests) or C{probability} (a share).
    """

    kind: ClassVar[str] = "error_storm"

    code: int = field(default=503, validator=_http_error_code)
    retry_after: int | None = field(default=None, validator=_non_negative)
    message: str | None = None

    def action(self, call: APICall) -> FaultAction:
        details: JSON | None = None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            details = {"retryAfterSeconds": self.retry_after}
            headers["Retry-After"] = str(self.retry_after)
        return FaultResponse(self.code, _failure_body(self.code, self.message, details), headers)


_LIMITER_MESSAGE = "Too many requests, please try again later."


@define(eq=False, kw_only=True)
class TooManyRequests(InjectedFault):
    """
    Answer 429 with C{Retry-After: <retry_after>}.

    C{style="status"} (default) sends a C{Status} with reason
    C{TooManyRequests} and C{details.retryAfterSeconds}, as the apiserver
    does for C{errors.NewTooManyRequests} (and as client-go reports every
    429).  C{style="limiter"} sends exactly what the max-in-flight and
    priority-and-fairness filters send: Go's C{http.Error}, i.e.
    C{text/plain} C{"Too many requests, please try again later.\\n"} and
    C{Retry-After}, no C{Status}: a client must take the delay from the
    header.
    """

    kind: ClassVar[str] = "too_many_requests"

    retry_after: int = field(default=1, validator=_non_negative)
    style: str = field(default="status", validator=attrs_validators.in_(("status", "limiter")))
    message: str = _LIMITER_MESSAGE

    def action(self, call: APICall) -> FaultAction:
        headers = {"Retry-After": str(self.retry_after)}
        if self.style == "limiter":
            headers["Content-Type"] = "text/plain; charset=utf-8"
            headers["X-Content-Type-Options"] = "nosniff"
            return FaultResponse(429, (self.message + "\n").encode("utf-8"), headers)
        details = {"retryAfterSeconds": self.retry_after}
        return FaultResponse(429, status_failure(429, "TooManyRequests", self.message, details), headers)


@define(eq=False, kw_only=True)
class Latency(InjectedFault):
    """
    Delay requests by C{seconds} on the fake's clock (a C{Clock} in tests:
    nothing happens until it is advanced); the request is then handled
    (and later faults applied) as usual.  A client that gives up first
    cancels it: nothing is handled.

    With C{answer_only}, the request is handled at once (a create IS
    stored) and only its answer waits: a client that gives up first has
    timed out on a write that succeeded.  (Streaming answers, i.e.
    watches, are not held back.)
    """

    kind: ClassVar[str] = "latency"

    seconds: float = field(default=1.0, validator=_non_negative)
    answer_only: bool = False

    def action(self, call: APICall) -> FaultAction:
        return DelayAction(self.seconds, self.answer_only)


@define(eq=False, kw_only=True)
class FailAfterCommit(InjectedFault):
    """
    Perform the request (a create IS stored), then answer C{code} (default
    500 InternalError; 504 is the apiserver's C{Timeout}) instead: "a
    create answered 500 may have succeeded".  A request the real handler
    refuses (409, 422, ...) gets its real answer.  Usually with
    C{verbs=["create"]}.

    @ivar committed: how many requests were performed and then failed.
    """

    kind: ClassVar[str] = "fail_after_commit"

    code: int = field(default=500, validator=_http_error_code)
    retry_after: int | None = field(default=None, validator=_non_negative)
    message: str | None = None
    committed: int = field(init=False, default=0)

    def action(self, call: APICall) -> FaultAction:
        details = None
        headers = {}
        if self.retry_after is not None:
            details = {"retryAfterSeconds": self.retry_after}
            headers["Retry-After"] = str(self.retry_after)
        response = FaultResponse(self.code, _failure_body(self.code, self.message, details), headers)
        return CommitThenRespond(response, self._commit)

    def _commit(self) -> None:
        self.committed += 1

    def describe(self) -> JSON:
        out = super().describe()
        out["committed"] = self.committed
        return out


@define(eq=False, kw_only=True)
class ResetMidResponse(InjectedFault):
    """
    Start a response (status line, headers with the full
    C{Content-Length}, C{fraction} of the body), then abort the TCP
    connection (a RST once the bytes are on the wire): the client sees a
    connection error, not an HTTP answer.

    @ivar commit: perform the request first (a create IS stored, and its
        real status and body are the ones started), or not (a C{200} with a
        made-up object is started and nothing is stored).
    @ivar code: start this status code instead.
    @ivar send_headers: C{False} aborts before sending a single byte.
    """

    kind: ClassVar[str] = "reset"

    commit: bool = False
    fraction: float = field(default=0.5, validator=_a_fraction)
    code: int | None = field(default=None, validator=_http_error_code)
    send_headers: bool = True

    def action(self, call: APICall) -> FaultAction:
        return ResetAction(self.commit, self.fraction, self.code, self.send_headers)


@define(eq=False, kw_only=True)
class Hang(InjectedFault):
    """
    Never answer: the request stays open until the client gives up (or
    the server stops).  With C{commit}, the request is performed first (a
    create IS stored).  L{FakeKube.hanging} counts requests left hanging.
    """

    kind: ClassVar[str] = "hang"

    commit: bool = False

    def action(self, call: APICall) -> FaultAction:
        return HangAction(self.commit)


FAULT_KINDS: dict[str, type[InjectedFault]] = {
    cls.kind: cls for cls in (ErrorStorm, TooManyRequests, Latency, FailAfterCommit, ResetMidResponse, Hang)
}


def make_fault(kind: str, **params: Any) -> InjectedFault:
    """
    Build a fault from its C{kind} name (see L{FAULT_KINDS}) and
    constructor parameters, as the control endpoint does.

    @raise ValueError: for an unknown kind or bad parameters.
    """
    cls = FAULT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for {kind}: {e}") from None


# ---------------------------------------------------------------------------
# Watches
# ---------------------------------------------------------------------------


@frozen
class _Event:
    rv: int
    type: str
    obj: JSON
    prev: JSON | None


@define(eq=False)
class _Watch:
    request: IRequest
    namespace: str | None
    labels: LabelSelector
    fields: tuple[FieldTerm, ...]
    done: Deferred[None] | None = None
    timer: IDelayedCall | None = None
    bookmarks: bool = False

    def _matches(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and _field_matches(self.fields, obj)

    def deliver(self, event: _Event) -> None:
        """Send C{event} as this watcher sees it (selector transitions)."""
        now, before = self._matches(event.obj), self._matches(event.prev)
        if event.type == "ADDED":
            kind = "ADDED" if now else None
        elif event.type == "DELETED":
            kind = "DELETED" if before else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        if kind is not None:
            self.send(kind, event.obj)

    def bookmark(self, rv: int) -> None:
        """Send a C{BOOKMARK} at C{rv} if the watcher asked for bookmarks."""
        if self.bookmarks:
            self.send(
                "BOOKMARK",
                {
                    "kind": "Secret",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(rv), "creationTimestamp": None},
                },
            )

    def send(self, kind: str, obj: JSON) -> None:
        line = json.dumps({"type": kind, "object": obj}, separators=(",", ":"))
        self.request.write(line.encode("utf-8") + b"\n")


# ---------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------

_CONTENT_JSON = "application/json"


def _token_set(tokens: Iterable[str]) -> frozenset[str]:
    return frozenset(tokens)


@define(eq=False, slots=False)
class FakeKube:
    """
    An in-memory Kubernetes API server for core/v1 Secrets.

    State: a set of namespaces (read-only through the API), Secrets keyed
    by (namespace, name), a global integer resource version incremented by
    every write, and a bounded history of watch events.

    Requests are authenticated with a bearer token from C{tokens}, or a
    TLS client certificate verified by the listener (see L{serve_tls}); an
    empty C{tokens} turns auth off.  Every request is recorded in
    L{calls} first; authenticated ones then go through L{faults}.

    Known differences from a real apiserver: JSON (and YAML request
    bodies) only, no protobuf; no C{managedFields}, server-side apply,
    finalizer-driven deletion or admission; strategic merge patch is
    treated as a JSON merge patch (right for Secrets except merge-keyed
    lists such as C{ownerReferences}); C{continue} tokens page through the
    current state rather than a snapshot; a watch from a future resource
    version waits instead of failing.

    @ivar clock: the time source (creation timestamps, watch timeouts).
    @ivar tokens: accepted bearer tokens; empty means no authentication.
    @ivar initial_namespaces: the namespaces that exist.
    @ivar history_limit: how many watch events are kept for watches that
        resume from a C{resourceVersion}; older ones get C{410 Expired}.
    @ivar default_watch_timeout: seconds after which a watch without
        C{timeoutSeconds} is closed.
    @ivar faults: consulted in order for every authenticated request (see
        L{Fault}; L{add_fault} with an L{InjectedFault} for the ready-made
        modes, L{fail_with} for the simplest).
    @ivar calls: every request received, oldest first.
    """

    clock: IReactorTime
    tokens: frozenset[str] = field(default=frozenset(), converter=_token_set)
    initial_namespaces: Sequence[str] = ("default",)
    history_limit: int = 1000
    default_watch_timeout: float = 1800.0
    faults: list[Fault] = Factory(list)
    calls: list[APICall] = Factory(list)
    _namespaces: dict[str, JSON] = Factory(dict)
    _secrets: dict[tuple[str, str], JSON] = Factory(dict)
    _rv: int = 0
    _history: deque[_Event] = Factory(deque)
    _history_floor: int = 0
    _watches: set[_Watch] = Factory(set)
    _random: random.Random = Factory(random.Random)
    _hung: set[Deferred[Any]] = Factory(set)

    app: ClassVar[Klein] = Klein()

    def __attrs_post_init__(self) -> None:
        for namespace in self.initial_namespaces:
            self.add_namespace(namespace)

    # -- test-side API -----------------------------------------------------

    def resource(self) -> Any:
        """The Klein resource serving this fake."""
        return self.app.resource()

    @property
    def resource_version(self) -> int:
        """The current global resource version."""
        return self._rv

    @property
    def active_watches(self) -> int:
        """How many watch streams are open."""
        return len(self._watches)

    def add_namespace(self, name: str) -> JSON:
        """Make namespace C{name} exist (idempotent); return it."""
        if name not in self._namespaces:
            self._namespaces[name] = {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._next_rv()),
                    "creationTimestamp": rfc3339(self.clock.seconds()),
                    "labels": {"kubernetes.io/metadata.name": name},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
        return copy.deepcopy(self._namespaces[name])

    def namespaces(self) -> list[str]:
        """The names of existing namespaces, sorted."""
        return sorted(self._namespaces)

    def secrets(self, namespace: str | None = None) -> list[JSON]:
        """Copies of the Secrets in C{namespace} (all if C{None}), sorted."""
        return [
            copy.deepcopy(obj) for (ns, _), obj in sorted(self._secrets.items()) if namespace is None or ns == namespace
        ]

    def get_secret(self, namespace: str, name: str) -> JSON | None:
        """A copy of one Secret, or C{None}."""
        obj = self._secrets.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def put_secret(self, namespace: str, obj: Mapping[str, Any]) -> JSON:
        """
        Store C{obj} as a Secret in C{namespace} directly (creating the
        namespace if needed, replacing any Secret of the same name), with
        the same normalisation and validation as a create; watchers see
        ADDED or MODIFIED.  Returns the stored copy.

        @raise KubeError: if the object is invalid.
        """
        self.add_namespace(namespace)
        meta = dict(obj.get("metadata") or {})
        meta["namespace"] = namespace
        meta.pop("resourceVersion", None)
        new = self._decode_secret(dict(obj, metadata=meta))
        self._validate(new, None)
        key = (namespace, new["metadata"]["name"])
        old = self._secrets.get(key)
        if old is not None:
            new["metadata"]["uid"] = old["metadata"]["uid"]
        self._stamp(new)
        self._commit(key, new, old)
        return copy.deepcopy(new)

    def delete_secret(self, namespace: str, name: str) -> bool:
        """Delete a Secret directly (watchers see DELETED); C{False} if absent."""
        key = (namespace, name)
        if key not in self._secrets:
            return False
        self._commit(key, None, self._secrets[key])
        return True

    def fail_with(
        self,
        code: int | None,
        retry_after: int | None = None,
        verbs: Iterable[str] | None = None,
    ) -> None:
        """
        Make every authenticated request (or those with a verb in
        C{verbs}) answer C{code} with a proper Status, replacing an earlier
        C{fail_with}; C{None} removes it.  Other faults are kept.
        """
        self.faults[:] = [f for f in self.faults if not isinstance(f, FailWith)]
        if code is not None:
            self.faults.insert(
                0,
                FailWith(code, retry_after, frozenset(verbs) if verbs else None),
            )

    def add_fault(self, fault: _F, first: bool = False) -> _F:
        """
        Add C{fault} after the existing ones (before them if C{first});
        return it, e.g. to read its C{fired} count later::

            storm = fake.add_fault(ErrorStorm(code=503, times=3, verbs=["create"]))
        """
        if first:
            self.faults.insert(0, fault)
        else:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> int:
        """Remove every fault (C{fail_with} included); return how many."""
        removed = len(self.faults)
        self.faults.clear()
        return removed

    @property
    def hanging(self) -> int:
        """How many requests a L{Hang} or L{ResetMidResponse} holds open."""
        return len(self._hung)

    def count(
        self,
        method: str | None = None,
        kind: str | None = None,
        verb: str | None = None,
        namespace: str | None = None,
    ) -> int:
        """How many recorded requests match every given criterion."""
        return sum(
            1
            for c in self.calls
            if (method is None or c.method == method)
            and (kind is None or c.kind == kind)
            and (verb is None or c.verb == verb)
            and (namespace is None or c.namespace == namespace)
        )

    @property
    def request_counts(self) -> Counter[tuple[str, str]]:
        """Requests received, by (method, path kind)."""
        return Counter((c.method, c.kind) for c in self.calls)

    def close_watches(self) -> None:
        """End every open watch stream cleanly."""
        for watch in list(self._watches):
            self._end_watch(watch)

    # -- storage -----------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _stamp(self, obj: JSON) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        if not meta.get("uid"):
            meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = meta.get("creationTimestamp") or rfc3339(self.clock.seconds())
        obj["metadata"] = _ordered_meta(meta)

    def _commit(self, key: tuple[str, str], new: JSON | None, old: JSON | None) -> JSON:
        """Write (or delete, if C{new} is C{None}) with a new resource version."""
        rv = str(self._next_rv())
        if new is None:
            assert old is not None
            del self._secrets[key]
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = rv
            self._record(_Event(int(rv), "DELETED", gone, old))
            return gone
        new["metadata"]["resourceVersion"] = rv
        new["metadata"] = _ordered_meta(new["metadata"])
        self._secrets[key] = new
        self._record(
            _Event(
                int(rv),
                "ADDED" if old is None else "MODIFIED",
                copy.deepcopy(new),
                old,
            )
        )
        return new

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        while len(self._history) > self.history_limit:
            self._history_floor = self._history.popleft().rv
        for watch in list(self._watches):
            watch.deliver(event)

    # -- request plumbing --------------------------------------------------

    def _authenticated(self, request: IRequest) -> bool:
        if not self.tokens:
            return True
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, token = header.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip() in self.tokens:
                return True
        transport = getattr(getattr(request, "channel", None), "transport", None)
        get_peer = getattr(transport, "getPeerCertificate", None)
        if get_peer is not None:
            # Only a listener that asked for client certificates and verified
            # them against its CA (see serve_tls) ever sees one here.
            try:
                return get_peer() is not None
            except Exception:
                return False
        return False

    def _respond(
        self,
        request: IRequest,
        code: int,
        body: JSON | bytes,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", _CONTENT_JSON.encode())
        request.setHeader(b"cache-control", b"no-cache, private")
        request.setHeader(b"audit-id", str(uuid.uuid4()).encode())
        for name, value in (headers or {}).items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"
        request.setHeader(b"content-length", str(len(payload)).encode("ascii"))
        return payload

    def _serve(
        self,
        request: IRequest,
        kind: str,
        verb: str | None,
        handler: Callable[[], Any],
        namespace: str | None = None,
        name: str | None = None,
    ) -> Any:
        """
        Record the call, authenticate, consult faults, then run C{handler}:
        it returns (code, body) or (code, body, headers), a Deferred (watch),
        or raises L{KubeError}.  Delays of every firing L{DelayAction} add
        up (those holding back only the answer apart); the first terminal
        action decides what happens after them.
        """
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        authenticated = self._authenticated(request)
        query = {
            k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in (request.args or {}).items() if v
        }
        call = APICall(method, path, kind, verb, namespace, name, authenticated, query)
        self.calls.append(call)
        _log.debug("{method} {uri}", method=method, uri=request.uri)
        if not authenticated:
            return self._respond(request, 401, status_failure(401, "Unauthorized", "Unauthorized"))
        before = after = 0.0
        action: FaultAction | None = None
        for fault in list(self.faults):
            outcome = fault(call)
            if isinstance(outcome, DelayAction):
                if outcome.answer_only:
                    after += outcome.seconds
                else:
                    before += outcome.seconds
            elif outcome is not None:
                action = outcome
                break

        def act() -> Any:
            answer = self._act(request, call, action, handler)
            if after > 0 and isinstance(answer, bytes):
                return deferLater(self.clock, after, lambda: answer)
            return answer

        if before > 0:
            return deferLater(self.clock, before, act)
        return act()

    @staticmethod
    def _outcome(handler: Callable[[], Any]) -> _Reply | Deferred[Any]:
        """Run C{handler}: (code, body, headers), or its Deferred."""
        try:
            result = handler()
        except KubeError as e:
            return e.code, e.body, e.headers
        if isinstance(result, Deferred):
            return result
        code, body, *rest = result
        return code, body, rest[0] if rest else {}

    def _act(
        self,
        request: IRequest,
        call: APICall,
        action: FaultAction | None,
        handler: Callable[[], Any],
    ) -> Any:
        """Answer C{request} as the terminal C{action} says (C{None}: normally)."""
        if isinstance(action, FaultResponse):
            return self._respond(request, action.code, action.body, action.headers)
        if isinstance(action, HangAction):
            if action.commit and call.verb != "watch":
                self._outcome(handler)
            return self._hang()
        if isinstance(action, ResetAction):
            return self._reset(request, call, action, handler)
        outcome = self._outcome(handler)
        if isinstance(outcome, Deferred):
            return outcome
        if isinstance(action, CommitThenRespond) and 200 <= outcome[0] < 300:
            if action.on_commit is not None:
                action.on_commit()
            response = action.response
            return self._respond(request, response.code, response.body, response.headers)
        return self._respond(request, *outcome)

    def _hang(self) -> Deferred[Any]:
        """A Deferred that never fires; cancelled when the client goes away."""

        def cancel(d: Deferred[Any]) -> None:
            self._hung.discard(d)

        d: Deferred[Any] = Deferred(cancel)
        self._hung.add(d)
        return d

    def _reset(
        self,
        request: IRequest,
        call: APICall,
        action: ResetAction,
        handler: Callable[[], Any],
    ) -> Deferred[Any]:
        """Start a response as C{action} says, then abort the connection."""
        outcome = self._outcome(handler) if action.commit and call.verb != "watch" else None
        if isinstance(outcome, tuple):
            code, body, headers = outcome
        else:
            code, headers = 200, {}
            body = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": {"name": call.name or "", "namespace": call.namespace or ""},
                "type": "Opaque",
            }
        if action.code is not None:
            code = action.code
        transport = request.channel.transport  # type: ignore[attr-defined]
        if action.send_headers:
            payload = self._respond(request, code, body, headers)
            keep = min(int(len(payload) * action.fraction), len(payload) - 1)
            if action.fraction > 0:
                keep = max(keep, 1)
            request.write(payload[:keep])
        _abort_when_flushed(transport)
        return self._hang()

    @staticmethod
    def _arg(request: IRequest, name: str, default: str = "") -> str:
        values = request.args.get(name.encode("ascii"))
        if not values:
            return default
        return str(values[0].decode("utf-8", "replace"))

    def _flag(self, request: IRequest, name: str) -> bool:
        text = self._arg(request, name)
        if not text:
            return False
        try:
            return parse_bool(text)
        except ValueError as e:
            raise KubeError.bad_request(str(e)) from None

    def _dry_run(self, request: IRequest) -> bool:
        values = [v.decode() for v in request.args.get(b"dryRun", [])]
        for value in values:
            if value != "All":
                raise KubeError.bad_request(f'Invalid dry run value "{value}": dryRun must be "All"')
        return bool(values)

    def _read_body(self, request: IRequest) -> Any:
        raw = request.content.read() if request.content is not None else b""
        ctype = request.getHeader(b"content-type") or b"application/json"
        ctype_s = ctype.decode("latin-1").split(";")[0].strip().lower()
        try:
            if ctype_s in ("application/yaml", "application/x-yaml"):
                import yaml

                return yaml.safe_load(raw.decode("utf-8"))
            return json.loads(raw.decode("utf-8"))
        except Exception as e:
            raise KubeError.bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    # -- secrets: decoding and validation ----------------------------------

    def _decode_secret(self, body: Any, warnings: list[str] | None = None) -> JSON:
        """
        Turn a request body into a normalised Secret (without uid,
        resourceVersion or timestamps unless given), raising 400 like the
        apiserver's decoder for malformed input.
        """

        def cannot(detail: str) -> KubeError:
            return KubeError.bad_request(f'Secret in version "v1" cannot be handled as a Secret: {detail}')

        if not isinstance(body, dict):
            raise KubeError.bad_request("the object provided is unrecognized (must be of type Secret)")
        kind = body.get("kind") or "Secret"
        api_version = body.get("apiVersion") or "v1"
        if api_version != "v1":
            raise KubeError.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version (v1)"
            )
        if kind != "Secret":
            raise KubeError.bad_request(
                f"the object provided is unrecognized (must be of type Secret): kind {kind!r} is not Secret"
            )
        for key in body:
            if key not in _SECRET_FIELDS and warnings is not None:
                warnings.append(f'unknown field "{key}"')
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise cannot("metadata: expected an object")
        meta = dict(meta)
        for key in list(meta):
            if key not in _META_ORDER:
                if key not in _META_DROPPED and warnings is not None:
                    warnings.append(f'unknown field "metadata.{key}"')
                del meta[key]
        for key in ("labels", "annotations"):
            value = meta.get(key)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise cannot(f"metadata.{key}: expected map of strings")
        for key in ("name", "generateName", "namespace", "resourceVersion", "uid"):
            if key in meta and not isinstance(meta[key], (str, type(None))):
                raise cannot(f"metadata.{key}: expected a string")
        data: dict[str, str] = {}
        raw_data = body.get("data") or {}
        if not isinstance(raw_data, dict):
            raise cannot("data: expected a map")
        for key, value in raw_data.items():
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise cannot(f"data[{key}]: expected a base64 string")
            problem = _base64_error(value)
            if problem is not None:
                raise cannot(problem)
            data[key] = base64.b64encode(base64.b64decode(value.replace("\r", "").replace("\n", ""))).decode("ascii")
        string_data = body.get("stringData") or {}
        if not isinstance(string_data, dict) or not all(isinstance(v, str) for v in string_data.values()):
            raise cannot("stringData: expected map of strings")
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode("utf-8")).decode("ascii")
        type_ = body.get("type") or "Opaque"
        if not isinstance(type_, str):
            raise cannot("type: expected a string")
        immutable = body.get("immutable")
        if immutable is not None and not isinstance(immutable, bool):
            raise cannot("immutable: expected a boolean")
        return _secret_object(meta, data, type_, immutable)

    def _validate(self, new: JSON, old: JSON | None) -> None:
        """Raise 422 Invalid unless C{new} (replacing C{old}) is valid."""
        meta = new["metadata"]
        name = meta.get("name", "")
        errors: list[FieldError] = []
        if not name:
            errors.append(
                FieldError(
                    "Required",
                    "metadata.name",
                    detail="name or generateName is required",
                )
            )
        else:
            errors.extend(FieldError("Invalid", "metadata.name", name, msg) for msg in dns1123_subdomain_errors(name))
        for key, value in (meta.get("labels") or {}).items():
            errors.extend(FieldError("Invalid", "metadata.labels", key, msg) for msg in qualified_name_errors(key))
            errors.extend(FieldError("Invalid", "metadata.labels", value, msg) for msg in label_value_errors(value))
        annotations = meta.get("annotations") or {}
        for key in annotations:
            errors.extend(
                FieldError("Invalid", "metadata.annotations", key.lower(), msg)
                for msg in qualified_name_errors(key.lower())
            )
        if sum(len(k) + len(v) for k, v in annotations.items()) > MAX_ANNOTATIONS_SIZE:
            errors.append(
                FieldError(
                    "TooLong",
                    "metadata.annotations",
                    detail=f"must have at most {MAX_ANNOTATIONS_SIZE} bytes",
                )
            )
        data = new.get("data") or {}
        total = 0
        for key, value in data.items():
            errors.extend(FieldError("Invalid", f"data[{key}]", key, msg) for msg in config_key_errors(key))
            total += len(base64.b64decode(value))
        required = {
            "kubernetes.io/dockercfg": [".dockercfg"],
            "kubernetes.io/dockerconfigjson": [".dockerconfigjson"],
            "kubernetes.io/ssh-auth": ["ssh-privatekey"],
            "kubernetes.io/tls": ["tls.crt", "tls.key"],
        }.get(new["type"], [])
        for key in required:
            if key not in data:
                errors.append(FieldError("Required", f"data[{key}]"))
        if new["type"] == "kubernetes.io/service-account-token" and not (
            annotations.get("kubernetes.io/service-account.name")
        ):
            errors.append(
                FieldError(
                    "Required",
                    "metadata.annotations[kubernetes.io/service-account.name]",
                )
            )
        if total > MAX_SECRET_SIZE:
            errors.append(
                FieldError(
                    "TooLong",
                    "data",
                    detail=f"must have at most {MAX_SECRET_SIZE} bytes",
                )
            )
        if old is not None:
            if new["type"] != old["type"]:
                errors.append(FieldError("Invalid", "type", new["type"], "field is immutable"))
            if old.get("immutable"):
                if not new.get("immutable"):
                    errors.append(
                        FieldError(
                            "Forbidden",
                            "immutable",
                            detail="field is immutable when `immutable` is set",
                        )
                    )
                if new.get("data") != old.get("data"):
                    errors.append(
                        FieldError(
                            "Forbidden",
                            "data",
                            detail="field is immutable when `immutable` is set",
                        )
                    )
        if errors:
            raise invalid("Secret", name, errors)

    def _check_fields(self, warnings: list[str], request: IRequest) -> None:
        mode = self._arg(request, "fieldValidation", "Warn")
        if mode not in ("Ignore", "Warn", "Strict"):
            raise KubeError.bad_request(f"fieldValidation parameter unsupported: {mode}")
        if mode == "Strict" and warnings:
            raise KubeError.bad_request("strict decoding error: " + ", ".join(warnings))
        if mode == "Ignore":
            warnings.clear()

    @staticmethod
    def _warning_headers(warnings: list[str]) -> dict[str, str]:
        if not warnings:
            return {}
        return {"Warning": ", ".join("299 - " + json.dumps(w) for w in warnings)}

    # -- secrets: verbs ----------------------------------------------------

    def _selectors(self, request: IRequest, allowed: Sequence[str]) -> tuple[LabelSelector, tuple[FieldTerm, ...]]:
        try:
            labels = parse_label_selector(self._arg(request, "labelSelector"))
            fields = parse_field_selector(self._arg(request, "fieldSelector"))
        except SelectorError as e:
            raise KubeError.bad_request(str(e)) from None
        for term in fields:
            if term.field not in allowed:
                raise KubeError.bad_request(f"field label not supported: {term.field}")
        return labels, fields

    def _matching(self, request: IRequest, namespace: str | None) -> list[JSON]:
        labels, fields = self._selectors(request, FIELD_SELECTABLE_SECRET_FIELDS)
        return [
            obj
            for (ns, _), obj in sorted(self._secrets.items())
            if (namespace is None or ns == namespace)
            and labels.matches(obj["metadata"].get("labels"))
            and _field_matches(fields, obj)
        ]

    def _list(self, request: IRequest, namespace: str | None) -> tuple[int, JSON]:
        items = self._matching(request, namespace)
        meta: JSON = {"resourceVersion": str(self._rv)}
        token = self._arg(request, "continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = tuple(state["start"])
            except Exception:
                raise KubeError.bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
                ) from None
            items = [o for o in items if (o["metadata"]["namespace"], o["metadata"]["name"]) > after]
        limit_text = self._arg(request, "limit")
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                raise KubeError.bad_request(f'strconv.ParseInt: parsing "{limit_text}": invalid syntax') from None
            if 0 < limit < len(items):
                last = items[limit - 1]["metadata"]
                start = [last["namespace"], last["name"]]
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"v": "meta.k8s.io/v1", "rv": self._rv, "start": start}).encode()
                ).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
        if "as=Table" in (request.getHeader(b"accept") or b"").decode("latin-1"):
            return 200, self._table(request, items, meta)
        return 200, {
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": meta,
            "items": copy.deepcopy(items),
        }

    def _table(self, request: IRequest, items: list[JSON], meta: JSON) -> JSON:
        include = self._arg(request, "includeObject", "Metadata")
        now = self.clock.seconds()
        rows = []
        for obj in items:
            created = datetime.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc
            )
            row: JSON = {
                "cells": [
                    obj["metadata"]["name"],
                    obj["type"],
                    len(obj.get("data") or {}),
                    human_duration(now - created.timestamp()),
                ]
            }
            if include == "Object":
                row["object"] = copy.deepcopy(obj)
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": copy.deepcopy(obj["metadata"]),
                }
            rows.append(row)
        columns = [
            ("Name", "string", "name", "Name must be unique within a namespace."),
            ("Type", "string", "", "Used to facilitate programmatic handling of secret data."),
            ("Data", "string", "", "Data contains the secret data."),
            (
                "Age",
                "string",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "columnDefinitions": [
                {"name": n, "type": t, "format": f, "description": d, "priority": 0} for n, t, f, d in columns
            ],
            "rows": rows,
        }

    def _watch(self, request: IRequest, namespace: str | None) -> Deferred[None]:
        labels, fields = self._selectors(request, FIELD_SELECTABLE_SECRET_FIELDS)
        rv_text = self._arg(request, "resourceVersion")
        timeout_text = self._arg(request, "timeoutSeconds")
        try:
            timeout = float(int(timeout_text)) if timeout_text else None
        except ValueError:
            raise KubeError.bad_request(f'strconv.ParseInt: parsing "{timeout_text}": invalid syntax') from None
        try:
            since = int(rv_text) if rv_text else None
        except ValueError:
            raise KubeError.bad_request(
                f'resourceVersion: Invalid value: "{rv_text}": strconv.ParseUint: invalid syntax'
            ) from None
        if timeout is None or timeout <= 0:
            timeout = self.default_watch_timeout
        watch = _Watch(request, namespace, labels, fields, bookmarks=self._flag(request, "allowWatchBookmarks"))
        request.setResponseCode(200)
        request.setHeader(b"content-type", _CONTENT_JSON.encode())
        request.setHeader(b"cache-control", b"no-cache, private")
        request.write(b"")  # send headers now, like the apiserver's flush

        def cancel(_: Deferred[None]) -> None:
            self._drop_watch(watch)

        watch.done = Deferred(cancel)
        if since is not None and since != 0 and since < self._history_floor:
            watch.send(
                "ERROR",
                status_failure(
                    410,
                    "Expired",
                    f"too old resource version: {since} ({self._history_floor})",
                ),
            )
            done = watch.done
            done.callback(None)
            return done
        if not since:
            for obj in self._matching_objects(watch):
                watch.send("ADDED", copy.deepcopy(obj))
        else:
            for event in self._history:
                if event.rv > since:
                    watch.deliver(event)
        self._watches.add(watch)
        watch.timer = self.clock.callLater(timeout, self._time_out_watch, watch)
        return watch.done

    def _time_out_watch(self, watch: _Watch) -> None:
        # Like the apiserver, a watch that asked for bookmarks gets one at
        # the current resourceVersion as it times out, so the watcher can
        # resume from there even if nothing it selects changed.
        watch.bookmark(self._rv)
        self._end_watch(watch)

    def send_bookmarks(self) -> int:
        """
        Send a C{BOOKMARK} at the current resourceVersion to every open
        watch that asked for bookmarks (the apiserver does so about once a
        minute); return how many were sent.
        """
        sent = 0
        for watch in list(self._watches):
            if watch.bookmarks:
                watch.bookmark(self._rv)
                sent += 1
        return sent

    def _matching_objects(self, watch: _Watch) -> list[JSON]:
        return [obj for _, obj in sorted(self._secrets.items()) if watch._matches(obj)]

    def _drop_watch(self, watch: _Watch) -> None:
        self._watches.discard(watch)
        if watch.timer is not None and watch.timer.active():
            watch.timer.cancel()
        watch.timer = None

    def _end_watch(self, watch: _Watch) -> None:
        self._drop_watch(watch)
        if watch.done is not None and not watch.done.called:
            watch.done.callback(None)

    def _create(self, request: IRequest, namespace: str) -> _Reply:
        body = self._read_body(request)
        warnings: list[str] = []
        new = self._decode_secret(body, warnings)
        self._check_fields(warnings, request)
        dry_run = self._dry_run(request)
        meta = new["metadata"]
        if meta.get("namespace") not in (None, namespace):
            raise KubeError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if namespace not in self._namespaces:
            raise KubeError.not_found("namespaces", namespace)
        if meta.get("resourceVersion"):
            raise KubeError(
                500,
                None,
                "resourceVersion should not be set on objects to be created",
            )
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            prefix = meta["generateName"]
            for msg in dns1123_subdomain_errors(prefix.rstrip("-") or "a"):
                raise invalid(
                    "Secret",
                    "",
                    [FieldError("Invalid", "metadata.generateName", prefix, msg)],
                )
            meta["name"] = prefix[:58] + "".join(self._random.choice(_GENERATE_CHARS) for _ in range(5))
        meta.pop("uid", None)
        meta.pop("creationTimestamp", None)
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        self._validate(new, None)
        key = (namespace, meta["name"])
        if key in self._secrets:
            raise KubeError(
                409,
                "AlreadyExists",
                f'secrets "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": "secrets"},
            )
        self._stamp(new)
        if dry_run:
            return 201, new, self._warning_headers(warnings)
        return 201, copy.deepcopy(self._commit(key, new, None)), self._warning_headers(warnings)

    def _existing(self, namespace: str, name: str) -> JSON:
        obj = self._secrets.get((namespace, name))
        if obj is None:
            raise KubeError.not_found("secrets", name)
        return obj

    def _update(
        self,
        request: IRequest,
        namespace: str,
        name: str,
        body: Any,
        warnings: list[str],
    ) -> _Reply:
        old = self._existing(namespace, name)
        new = self._decode_secret(body, warnings)
        self._check_fields(warnings, request)
        dry_run = self._dry_run(request)
        meta = new["metadata"]
        if meta.get("namespace") not in (None, namespace):
            raise KubeError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if meta.get("name", "") != name:
            raise KubeError.bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({name})"
            )
        old_meta = old["metadata"]
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise KubeError.conflict(
                "secrets",
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
            )
        if meta.get("resourceVersion") and (meta["resourceVersion"] != old_meta["resourceVersion"]):
            raise KubeError.conflict(
                "secrets",
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        meta["namespace"] = namespace
        meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        if "deletionTimestamp" in old_meta:
            meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        else:
            meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new["metadata"] = _ordered_meta(meta)
        self._validate(new, old)
        headers = self._warning_headers(warnings)
        if new == old or dry_run:
            return 200, copy.deepcopy(new), headers
        return 200, copy.deepcopy(self._commit((namespace, name), new, old)), headers

    def _patch(self, request: IRequest, namespace: str, name: str) -> _Reply:
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
        ctype = ctype.split(";")[0].strip().lower()
        kinds = (
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        )
        if ctype not in kinds:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: {', '.join(kinds)}",
            )
        old = self._existing(namespace, name)
        raw = request.content.read() if request.content is not None else b""
        try:
            patch = json.loads(raw.decode("utf-8"))
        except Exception as e:
            raise KubeError.bad_request(f"error decoding patch: {e}") from None
        try:
            if ctype == "application/json-patch+json":
                patched = _json_patch(old, patch)
            else:
                if not isinstance(patch, dict):
                    raise ValueError("patch must be a JSON object")
                patched = _json_merge_patch(old, patch)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise KubeError(422, "Invalid", str(e), {}) from None
        return self._update(request, namespace, name, patched, [])

    def _delete_options(self, request: IRequest) -> JSON:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            return {}
        try:
            options = json.loads(raw.decode("utf-8"))
        except Exception as e:
            raise KubeError.bad_request(f"couldn't get version/kind; json parse error: {e}") from None
        if not isinstance(options, dict):
            raise KubeError.bad_request("DeleteOptions must be an object")
        return options

    def _delete(self, request: IRequest, namespace: str, name: str) -> _Reply:
        options = self._delete_options(request)
        dry_run = self._dry_run(request)
        old = self._existing(namespace, name)
        meta = old["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise KubeError.conflict(
                "secrets",
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
            )
        if pre.get("resourceVersion") and (pre["resourceVersion"] != meta["resourceVersion"]):
            raise KubeError.conflict(
                "secrets",
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        uid = meta["uid"]
        if not dry_run:
            self._commit((namespace, name), None, old)
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": "secrets", "uid": uid},
        }

    def _delete_collection(self, request: IRequest, namespace: str) -> _Reply:
        self._delete_options(request)
        dry_run = self._dry_run(request)
        doomed = self._matching(request, namespace)
        gone = []
        for obj in doomed:
            key = (namespace, obj["metadata"]["name"])
            gone.append(obj if dry_run else self._commit(key, None, obj))
        return 200, {
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": copy.deepcopy(gone),
        }

    # -- routes: discovery -------------------------------------------------

    @app.route("/version", methods=["GET"])
    def _route_version(self, request: IRequest) -> Any:
        return self._serve(request, "discovery", None, lambda: (200, dict(VERSION_INFO)))

    @app.route("/api", methods=["GET"])
    def _route_api(self, request: IRequest) -> Any:
        host = request.getHost()
        address = f"{getattr(host, 'host', '127.0.0.1')}:{getattr(host, 'port', 443)}"
        return self._serve(
            request,
            "discovery",
            None,
            lambda: (
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
                },
            ),
        )

    @app.route("/api/v1", methods=["GET"])
    def _route_api_v1(self, request: IRequest) -> Any:
        resources = [
            {
                "name": "namespaces",
                "singularName": "namespace",
                "namespaced": False,
                "kind": "Namespace",
                "verbs": NAMESPACE_VERBS,
                "shortNames": ["ns"],
            },
            {
                "name": "secrets",
                "singularName": "secret",
                "namespaced": True,
                "kind": "Secret",
                "verbs": SECRET_VERBS,
            },
        ]
        return self._serve(
            request,
            "discovery",
            None,
            lambda: (
                200,
                {
                    "kind": "APIResourceList",
                    "groupVersion": "v1",
                    "resources": resources,
                },
            ),
        )

    @app.route("/apis", methods=["GET"])
    def _route_apis(self, request: IRequest) -> Any:
        return self._serve(
            request,
            "discovery",
            None,
            lambda: (
                200,
                {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
            ),
        )

    @app.route("/healthz", methods=["GET"])
    @app.route("/livez", methods=["GET"])
    @app.route("/readyz", methods=["GET"])
    def _route_health(self, request: IRequest) -> Any:
        """C{ok} as text/plain, like the apiserver's health checks."""

        def handler() -> Any:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"x-content-type-options", b"nosniff")
            return succeed(b"ok")

        return self._serve(request, "discovery", None, handler)

    @app.route("/openapi/v3", methods=["GET"])
    def _route_openapi_v3(self, request: IRequest) -> Any:
        return self._serve(
            request,
            "discovery",
            None,
            lambda: (
                200,
                {"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=" + _OPENAPI_HASH}}},
            ),
        )

    @app.route("/openapi/v3/api/v1", methods=["GET"])
    def _route_openapi_v3_core(self, request: IRequest) -> Any:
        return self._serve(request, "discovery", None, lambda: (200, _openapi_v3_core()))

    # -- routes: namespaces ------------------------------------------------

    @app.route("/api/v1/namespaces", methods=["GET"])
    def _route_namespaces(self, request: IRequest) -> Any:
        def handler() -> _Reply:
            if self._flag(request, "watch"):
                raise KubeError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    {},
                )
            labels, fields = self._selectors(request, FIELD_SELECTABLE_NAMESPACE_FIELDS)
            items = [
                copy.deepcopy(ns)
                for _, ns in sorted(self._namespaces.items())
                if labels.matches(ns["metadata"].get("labels")) and _field_matches(fields, ns)
            ]
            return 200, {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

        return self._serve(request, "namespaces", "list", handler)

    @app.route("/api/v1/namespaces/<namespace>", methods=["GET"])
    def _route_namespace(self, request: IRequest, namespace: str) -> Any:
        def handler() -> _Reply:
            if namespace not in self._namespaces:
                raise KubeError.not_found("namespaces", namespace)
            return 200, copy.deepcopy(self._namespaces[namespace])

        return self._serve(request, "namespace", "get", handler, namespace, namespace)

    # -- routes: secrets ---------------------------------------------------

    @app.route(
        "/api/v1/namespaces/<namespace>/secrets",
        methods=["GET", "POST", "DELETE"],
    )
    def _route_secrets(self, request: IRequest, namespace: str) -> Any:
        method = request.method
        if method == b"POST":
            return self._serve(
                request,
                "secrets",
                "create",
                lambda: self._create(request, namespace),
                namespace,
            )
        if method == b"DELETE":
            return self._serve(
                request,
                "secrets",
                "deletecollection",
                lambda: self._delete_collection(request, namespace),
                namespace,
            )
        return self._list_or_watch(request, namespace)

    @app.route("/api/v1/secrets", methods=["GET"])
    def _route_all_secrets(self, request: IRequest) -> Any:
        return self._list_or_watch(request, None)

    @app.route("/api/v1/watch/namespaces/<namespace>/secrets", methods=["GET"])
    def _route_watch_secrets(self, request: IRequest, namespace: str) -> Any:
        return self._list_or_watch(request, namespace, force_watch=True)

    @app.route("/api/v1/watch/secrets", methods=["GET"])
    def _route_watch_all_secrets(self, request: IRequest) -> Any:
        return self._list_or_watch(request, None, force_watch=True)

    def _list_or_watch(self, request: IRequest, namespace: str | None, force_watch: bool = False) -> Any:
        try:
            watching = force_watch or self._flag(request, "watch")
        except KubeError:
            watching = False  # reported by the handler below
        if watching:
            return self._serve(
                request,
                "secrets",
                "watch",
                lambda: self._watch(request, namespace),
                namespace,
            )

        def handler() -> _Reply:
            self._flag(request, "watch")
            return self._list(request, namespace)

        return self._serve(request, "secrets", "list", handler, namespace)

    @app.route(
        "/api/v1/namespaces/<namespace>/secrets/<name>",
        methods=["GET", "PUT", "PATCH", "DELETE"],
    )
    def _route_secret(self, request: IRequest, namespace: str, name: str) -> Any:
        method = request.method
        if method == b"PUT":

            def update() -> _Reply:
                warnings: list[str] = []
                return self._update(request, namespace, name, self._read_body(request), warnings)

            return self._serve(request, "secret", "update", update, namespace, name)
        if method == b"PATCH":
            return self._serve(
                request,
                "secret",
                "patch",
                lambda: self._patch(request, namespace, name),
                namespace,
                name,
            )
        if method == b"DELETE":
            return self._serve(
                request,
                "secret",
                "delete",
                lambda: self._delete(request, namespace, name),
                namespace,
                name,
            )
        return self._serve(
            request,
            "secret",
            "get",
            lambda: (200, copy.deepcopy(self._existing(namespace, name))),
            namespace,
            name,
        )

    # -- errors ------------------------------------------------------------

    @app.handle_errors(NotFound)
    def _route_not_found(self, request: IRequest, failure: Failure) -> Any:
        def handler() -> _Reply:
            return 404, status_failure(
                404,
                "NotFound",
                "the server could not find the requested resource",
                {},
            )

        return self._serve(request, "unknown", None, handler)

    @app.handle_errors(MethodNotAllowed)
    def _route_not_allowed(self, request: IRequest, failure: Failure) -> Any:
        def handler() -> _Reply:
            return 405, status_failure(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                {},
            )

        return self._serve(request, "unknown", None, handler)


# ---------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------

_FLUSH_POLL = 0.002  # seconds between checks that a reset's bytes left
_FLUSH_POLLS = 500  # checks at most (about one second), then abort anyway


def _unsent(transport: Any) -> int:
    """
    Bytes written to C{transport} (a TCP transport, or a TLS wrapper
    around one) that the kernel has not taken yet.  Small writes that
    Twisted's TLS transport holds back for the next reactor iteration are
    pushed down first (as its C{loseConnection} does).
    """
    from twisted.internet.abstract import FileDescriptor

    layer = transport
    for _ in range(4):
        if layer is None:
            break
        attributes = getattr(layer, "__dict__", {})
        aggregator = attributes.get("_aggregator")
        if aggregator is not None:
            aggregator.flush()
        if isinstance(layer, FileDescriptor):
            buffered = len(getattr(layer, "dataBuffer", b"")) - getattr(layer, "offset", 0)
            return max(buffered, 0) + int(getattr(layer, "_tempDataLen", 0))
        if getattr(layer, "_appSendBuffer", None):
            return sum(len(chunk) for chunk in layer._appSendBuffer)
        layer = attributes.get("transport")
    return 0


def _abort_when_flushed(transport: Any, polls: int = _FLUSH_POLLS) -> None:
    """
    Abort C{transport} (Twisted then closes the socket with a RST) once
    what was written to it is on the wire: C{abortConnection} drops
    buffered bytes, and a reset mid-response must send the start of the
    response first.  Polls the running reactor (real time) at most
    C{polls} times; an in-memory transport is aborted at once (it keeps
    its bytes).
    """
    try:
        if _unsent(transport) and polls > 0:
            from twisted.internet import reactor

            reactor.callLater(_FLUSH_POLL, _abort_when_flushed, transport, polls - 1)  # type: ignore[attr-defined]
            return
        transport.abortConnection()
    except Exception:  # the client went away first: nothing left to cut
        _log.debug("connection already closed: {transport!r}", transport=transport)


def _transport_of(protocol: Any) -> Any:
    """
    The transport of an HTTP channel built by a L{Site}: Twisted hands out
    a proxy (C{_GenericHTTPChannelProtocol}) whose C{_channel} holds it.
    """
    channel = getattr(protocol, "_channel", protocol)
    return getattr(channel, "transport", None)


class _TrackingSite(Site):
    """A quiet L{Site} that remembers its connections so they can be cut."""

    noisy = False

    def __init__(self, resource: Any) -> None:
        super().__init__(resource)
        self.connections: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.connections = [p for p in self.connections if not getattr(_transport_of(p), "disconnected", False)]
        self.connections.append(protocol)
        return protocol

    def abort_connections(self) -> None:
        """Abort every open connection (a RST, like a server that died)."""
        for protocol in self.connections:
            transport = _transport_of(protocol)
            if transport is None:
                continue
            abort = getattr(transport, "abortConnection", None)
            try:
                (abort or transport.loseConnection)()
            except Exception:  # already closed: TLS forgot its state
                _log.debug("connection already closed: {transport!r}", transport=transport)
        self.connections = []


@define(eq=False)
class ServedKube:
    """
    A L{FakeKube} listening on loopback.

    @ivar url: the base URL, e.g. C{https://127.0.0.1:PORT}.
    @ivar ca_path: PEM file of the CA that signed the server certificate
        (C{None} for plain HTTP).
    @ivar port: the listening port (replaced by L{start_listening}).
    @ivar fake: the fake being served.
    @ivar pki: the generated certificates (C{tests.certs.TestPKI}) or C{None}.
    @ivar listen: listens on a given port number again (for
        L{start_listening}); set by L{serve_tls} and L{serve_http}.
    @ivar reactor: waits between attempts to listen again.
    @ivar listening: whether the port is open (see L{stop_listening}).
    """

    url: str
    ca_path: str | None
    port: IListeningPort
    fake: FakeKube
    site: _TrackingSite
    pki: Any = None
    listen: Callable[[int], Deferred[IListeningPort]] | None = None
    reactor: Any = None
    listening: bool = True

    @property
    def port_number(self) -> int:
        """The TCP port number of the API (kept across stop/start)."""
        return int(self.url.rsplit(":", 1)[1])

    def stop_listening(self, cut_connections: bool = True) -> Deferred[None]:
        """
        Simulate an API server that is down: close the listening port, so
        new connections are refused, and (if C{cut_connections}) abort the
        open ones, so clients holding pooled connections see resets too.
        Fires once the port is closed.  Idempotent.
        """
        if cut_connections:
            self.site.abort_connections()
        if not self.listening:
            return succeed(None)
        self.listening = False
        d = self.port.stopListening()
        return d if isinstance(d, Deferred) else succeed(None)

    def start_listening(self, attempts: int = 50, interval: float = 0.1) -> Deferred[None]:
        """
        Listen again on the same port number (so clients' configuration
        stays valid).  If that port is taken (C{EADDRINUSE}, e.g. by a
        lingering socket) try again every C{interval} seconds, at most
        C{attempts} times, then fail with the last
        C{CannotListenError}.  Idempotent.
        """
        if self.listening:
            return succeed(None)
        if self.listen is None:
            raise RuntimeError("this ServedKube cannot listen again (no listen function)")
        listen = self.listen

        async def run() -> None:
            from twisted.internet.error import CannotListenError

            for attempt in range(max(attempts, 1)):
                try:
                    self.port = await listen(self.port_number)
                except CannotListenError as e:
                    in_use = getattr(e.socketError, "errno", None) == errno.EADDRINUSE
                    if not in_use or attempt + 1 >= attempts or self.reactor is None:
                        raise
                    await deferLater(self.reactor, interval, lambda: None)
                else:
                    self.listening = True
                    return

        return ensureDeferred(run())

    def write_kubeconfig(
        self,
        path: str,
        token: str | None = None,
        namespace: str = "default",
        context: str = "fake",
        client_cert: bool = False,
    ) -> str:
        """
        Write a kubeconfig for this server.  C{token} defaults to one of
        the fake's tokens; C{client_cert} uses the generated client
        certificate instead of (or with) a token.
        """
        if token is None and self.fake.tokens and not client_cert:
            token = sorted(self.fake.tokens)[0]
        return write_kubeconfig(
            path,
            self.url,
            self.ca_path,
            token,
            namespace=namespace,
            context=context,
            client_cert=self.pki.client_cert if client_cert else None,
            client_key=self.pki.client_key if client_cert else None,
        )

    def stop(self) -> Deferred[None]:
        """Close watches, stop listening and cut open connections."""
        self.fake.close_watches()
        return self.stop_listening(cut_connections=True)


def write_kubeconfig(
    path: str,
    server: str,
    ca_path: str | None,
    token: str | None,
    namespace: str = "default",
    context: str = "fake",
    client_cert: str | None = None,
    client_key: str | None = None,
) -> str:
    """
    Write a kubeconfig (as JSON, which is valid YAML) with one cluster,
    user and context named C{context}, selected as the current context.
    Returns C{path}.
    """
    cluster: JSON = {"server": server}
    if ca_path is not None:
        cluster["certificate-authority"] = os.path.abspath(ca_path)
    user: JSON = {}
    if token is not None:
        user["token"] = token
    if client_cert is not None:
        user["client-certificate"] = os.path.abspath(client_cert)
        user["client-key"] = os.path.abspath(client_key or "")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": user}],
        "contexts": [
            {
                "name": context,
                "context": {
                    "cluster": context,
                    "user": context,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": context,
        "preferences": {},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def _tls_options(pki: Any) -> Any:
    """
    Server TLS options: our certificate, and client certificates requested
    (not required) and verified against the test CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL.crypto import X509
    from twisted.internet import ssl

    with open(pki.server_cert, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    with open(pki.server_key, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    with open(pki.ca_cert, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    # pyOpenSSL takes cryptography objects for the server's own certificate
    # and key (its X509/PKey wrappers are deprecated there), but its
    # X509Store still wants an X509 for the CA.
    return ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certificate,  # type: ignore[arg-type]
        verify=True,
        caCerts=[X509.from_cryptography(ca)],
        requireCertificate=False,
    )


def serve_tls(
    reactor: IReactorTCP,
    fake: FakeKube,
    cert_dir: str,
    port: int = 0,
) -> Deferred[ServedKube]:
    """
    Generate a throwaway PKI into C{cert_dir} (see C{tests.certs}) and
    serve C{fake} over TLS on C{127.0.0.1:port} (0 picks a free port).
    Client certificates signed by that CA are accepted as authentication;
    connections without one are accepted too and need a token.
    """
    from twisted.internet.endpoints import SSL4ServerEndpoint

    from tests.certs import write_test_pki

    pki = write_test_pki(cert_dir)
    site = _TrackingSite(fake.resource())
    options = _tls_options(pki)

    def listen(number: int) -> Deferred[IListeningPort]:
        endpoint = SSL4ServerEndpoint(reactor, number, options, interface="127.0.0.1")
        return endpoint.listen(site)  # type: ignore[no-any-return]

    def listening(listening_port: IListeningPort) -> ServedKube:
        address: Any = listening_port.getHost()
        return ServedKube(
            url=f"https://127.0.0.1:{address.port}",
            ca_path=pki.ca_cert,
            port=listening_port,
            fake=fake,
            site=site,
            pki=pki,
            listen=listen,
            reactor=reactor,
        )

    return listen(port).addCallback(listening)


def serve_http(reactor: IReactorTCP, fake: FakeKube, port: int = 0) -> Deferred[ServedKube]:
    """Serve C{fake} over plain HTTP on C{127.0.0.1:port}."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    site = _TrackingSite(fake.resource())

    def listen(number: int) -> Deferred[IListeningPort]:
        endpoint = TCP4ServerEndpoint(reactor, number, interface="127.0.0.1")
        return endpoint.listen(site)  # type: ignore[no-any-return]

    def listening(listening_port: IListeningPort) -> ServedKube:
        address: Any = listening_port.getHost()
        return ServedKube(
            url=f"http://127.0.0.1:{address.port}",
            ca_path=None,
            port=listening_port,
            fake=fake,
            site=site,
            listen=listen,
            reactor=reactor,
        )

    return listen(port).addCallback(listening)


# ---------------------------------------------------------------------------
# Control endpoint (a separate plain-HTTP listener, never the API port)
# ---------------------------------------------------------------------------


def _call_json(call: APICall) -> JSON:
    return {
        "method": call.method,
        "path": call.path,
        "kind": call.kind,
        "verb": call.verb,
        "namespace": call.namespace,
        "name": call.name,
        "authenticated": call.authenticated,
        "query": dict(call.query),
    }


def describe_fault(fault: Fault) -> JSON:
    """A fault as JSON: L{InjectedFault.describe}, or a summary of others."""
    if isinstance(fault, InjectedFault):
        return fault.describe()
    if isinstance(fault, FailWith):
        return {
            "kind": "fail_with",
            "code": fault.code,
            "retry_after": fault.retry_after,
            "verbs": sorted(fault.verbs) if fault.verbs is not None else None,
        }
    return {"kind": "custom", "repr": repr(fault)}


class _ControlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@define(eq=False, slots=False)
class FakeKubeControl:
    """
    The test-side API of a served fake, over HTTP (for a fake running as a
    process).  Served by L{serve_control} on its own loopback port, plain
    HTTP and without authentication: the Kubernetes API port never answers
    these paths (they are 404 there, as on a real apiserver).

    Every answer is JSON; errors are C{{"error": "<message>"}} with 400
    (bad request body or fault parameters) or 404.

      - C{GET /faults}: C{{"faults": [<fault>, ...], "hanging": N}}, in
        consultation order; a C{<fault>} is L{InjectedFault.describe}:
        C{{"kind", "id", "fired", "active", <parameters>}} (plus
        C{"committed"} for C{fail_after_commit}).  C{hanging} counts
        requests held open by C{hang}/C{reset}.
      - C{POST /faults} C{{"kind": K, <parameters>..., "first": false}}:
        add a fault (L{make_fault}: K is one of L{FAULT_KINDS}, parameters
        are the constructor's, sets as lists), after the others (before
        them with C{"first": true}); answers 201 with the C{<fault>}.
        E.g. C{{"kind": "error_storm", "code": 503, "times": 5,
        "verbs": ["create"], "resources": ["secrets"]}}.
      - C{DELETE /faults}: remove all; C{{"removed": N}}.
      - C{DELETE /faults/<id>}: remove one; C{{"removed": 1}} (404 if none).
      - C{GET /listening}: C{{"listening": bool, "port": N}}.
      - C{POST /listening} C{{"listening": bool, "cut_connections": true}}:
        stop listening on the API port (new connections are refused; open
        ones are aborted unless C{cut_connections} is false) or listen again
        on the same port number; answers C{{"listening": bool, "port": N}}
        once done.
      - C{GET /secrets[?namespace=NS]}: C{{"items": [<Secret>, ...]}}, the
        stored Secrets (all namespaces without C{namespace}), sorted.
      - C{GET /calls}: C{{"count": N, "by_verb": {"create": N, ...},
        "calls": [<call>, ...]}}, every request the API port received
        (C{by_verb} counts those with a verb), oldest first; a C{<call>} is
        C{{"method", "path", "kind", "verb", "namespace", "name",
        "authenticated", "query"}} (see L{APICall}).
      - C{DELETE /calls}: forget them; C{{"removed": N}}.
    """

    served: ServedKube

    app: ClassVar[Klein] = Klein()

    @property
    def fake(self) -> FakeKube:
        return self.served.fake

    def resource(self) -> Any:
        """The Klein resource serving this control API."""
        return self.app.resource()

    @staticmethod
    def _answer(request: IRequest, code: int, body: JSON) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"

    @staticmethod
    def _body(request: IRequest) -> JSON:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError) as e:
            raise _ControlError(400, f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise _ControlError(400, "body must be a JSON object")
        return body

    @app.handle_errors(_ControlError)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        error: _ControlError = failure.value  # type: ignore[assignment]
        return self._answer(request, error.code, {"error": str(error)})

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._answer(request, 404, {"error": "no such control path"})

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return self._answer(request, 405, {"error": "method not allowed"})

    @app.route("/faults", methods=["GET", "POST", "DELETE"])
    def _faults(self, request: IRequest) -> bytes:
        if request.method == b"POST":
            body = self._body(request)
            kind = body.pop("kind", None)
            first = bool(body.pop("first", False))
            if not isinstance(kind, str):
                raise _ControlError(400, f"'kind' must be one of {', '.join(sorted(FAULT_KINDS))}")
            try:
                fault = make_fault(kind, **body)
            except ValueError as e:
                raise _ControlError(400, str(e)) from None
            self.fake.add_fault(fault, first=first)
            return self._answer(request, 201, fault.describe())
        if request.method == b"DELETE":
            return self._answer(request, 200, {"removed": self.fake.clear_faults()})
        return self._answer(
            request,
            200,
            {"faults": [describe_fault(f) for f in self.fake.faults], "hanging": self.fake.hanging},
        )

    @app.route("/faults/<int:fault_id>", methods=["DELETE"])
    def _fault(self, request: IRequest, fault_id: int) -> bytes:
        for fault in list(self.fake.faults):
            if isinstance(fault, InjectedFault) and fault.id == fault_id:
                self.fake.faults.remove(fault)
                return self._answer(request, 200, {"removed": 1})
        raise _ControlError(404, f"no fault with id {fault_id}")

    def _listening_state(self) -> JSON:
        return {"listening": self.served.listening, "port": self.served.port_number}

    @app.route("/listening", methods=["GET", "POST"])
    def _listening(self, request: IRequest) -> Any:
        if request.method == b"GET":
            return self._answer(request, 200, self._listening_state())
        body = self._body(request)
        wanted = body.get("listening")
        cut = body.get("cut_connections", True)
        if not isinstance(wanted, bool) or not isinstance(cut, bool):
            raise _ControlError(400, "'listening' (and 'cut_connections') must be true or false")
        if wanted:
            d = self.served.start_listening()
        else:
            d = self.served.stop_listening(cut_connections=cut)

        def done(_: object) -> bytes:
            return self._answer(request, 200, self._listening_state())

        def failed(failure: Failure) -> bytes:
            return self._answer(request, 500, {"error": failure.getErrorMessage(), **self._listening_state()})

        return d.addCallbacks(done, failed)

    @app.route("/secrets", methods=["GET"])
    def _secrets(self, request: IRequest) -> bytes:
        values = request.args.get(b"namespace")
        namespace = values[0].decode("utf-8", "replace") if values else None
        return self._answer(request, 200, {"items": self.fake.secrets(namespace)})

    @app.route("/calls", methods=["GET", "DELETE"])
    def _calls(self, request: IRequest) -> bytes:
        if request.method == b"DELETE":
            removed = len(self.fake.calls)
            self.fake.calls.clear()
            return self._answer(request, 200, {"removed": removed})
        calls = [_call_json(c) for c in self.fake.calls]
        by_verb = Counter(c.verb for c in self.fake.calls if c.verb is not None)
        return self._answer(request, 200, {"count": len(calls), "by_verb": dict(by_verb), "calls": calls})


def serve_control(reactor: IReactorTCP, served: ServedKube, port: int = 0) -> Deferred[IListeningPort]:
    """
    Serve L{FakeKubeControl} for C{served} over plain HTTP on
    C{127.0.0.1:port} (0 picks a free port); its URL is
    C{http://127.0.0.1:<getHost().port>}.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    site = Site(FakeKubeControl(served).resource())
    site.noisy = False
    return TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _load_seed(path: str) -> list[JSON]:
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        return list(data["items"])
    if isinstance(data, list):
        return data
    return [data]


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the fake as a process: serve over TLS (or plain HTTP with
    C{--plain-http}) on 127.0.0.1, write C{kubeconfig} into C{--cert-dir},
    serve the control API (L{FakeKubeControl}) over plain HTTP on another
    loopback port (C{--control-port}), print one line of JSON (C{url},
    C{ca}, C{kubeconfig}, C{port}, C{control_url}, C{client_cert},
    C{client_key}, C{pid}) to stdout once both listen, and run until
    SIGTERM/SIGINT (or until stdin closes, with C{--exit-on-stdin-eof}).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.kubeapi",
        description="Fake Kubernetes API server (core/v1 Secrets) for tests.",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], help="accepted bearer token (repeatable)")
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument(
        "--namespace", action="append", default=[], help="namespace that exists (repeatable; default: default)"
    )
    parser.add_argument(
        "--seed",
        action="append",
        default=[],
        help="JSON file with a Secret, a list of Secrets or a SecretList to store at start (repeatable)",
    )
    parser.add_argument("--plain-http", action="store_true")
    parser.add_argument(
        "--control-port", type=int, default=0, help="port of the plain-HTTP control API on 127.0.0.1 (default: any)"
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed (parent died)")
    parser.add_argument("--history-limit", type=int, default=1000)
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(LogLevel.debug if args.verbose else LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    fake = FakeKube(
        clock=reactor,
        tokens=args.token,
        initial_namespaces=args.namespace or ["default"],
        history_limit=args.history_limit,
    )
    for seed in args.seed:
        for obj in _load_seed(seed):
            namespace = (obj.get("metadata") or {}).get("namespace") or (fake.namespaces()[0])
            fake.put_secret(namespace, obj)

    os.makedirs(args.cert_dir, exist_ok=True)
    exit_code = [0]

    def control(served: ServedKube) -> Deferred[None]:
        def listening(control_port: IListeningPort) -> None:
            ready(served, control_port.getHost().port)  # type: ignore[attr-defined]

        return serve_control(reactor, served, args.control_port).addCallback(listening)

    def ready(served: ServedKube, control_port: int) -> None:
        kubeconfig = served.write_kubeconfig(
            os.path.join(os.path.abspath(args.cert_dir), "kubeconfig"),
            namespace=fake.namespaces()[0] if "default" not in fake.namespaces() else "default",
        )
        line = {
            "url": served.url,
            "ca": served.ca_path,
            "kubeconfig": kubeconfig,
            "port": served.port_number,
            "control_url": f"http://127.0.0.1:{control_port}",
            "client_cert": served.pki.client_cert if served.pki else None,
            "client_key": served.pki.client_key if served.pki else None,
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def failed(failure: Failure) -> None:
        sys.stderr.write(f"kubeapi: cannot serve: {failure.getErrorMessage()}\n")
        exit_code[0] = 1
        reactor.stop()

    if args.plain_http:
        d = serve_http(reactor, fake, args.port)
    else:
        d = serve_tls(reactor, fake, args.cert_dir, args.port)
    d.addCallback(control).addErrback(failed)

    if args.exit_on_stdin_eof:
        from twisted.internet.protocol import Protocol
        from twisted.internet.stdio import StandardIO

        class _StdinWatcher(Protocol):
            def connectionLost(self, reason: Failure | None = None) -> None:
                if reactor.running:
                    reactor.stop()

        StandardIO(_StdinWatcher(), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]

    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
