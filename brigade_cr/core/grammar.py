"""
The grammars text must keep to before it becomes data (pure, no I/O).

- Text: every string that comes from a request (path segments, query names
  and values, header values that are read, JSON strings) must be valid
  Unicode that UTF-8 can encode. Python decodes ``%ff`` with
  ``surrogateescape`` and JSON's ``"\\udc80"`` escape into lone surrogates,
  which no UTF-8 encoder (and no Kubernetes API) accepts: such text is
  refused at the edge, and the values refuse it when they are made.
- Tags and repositories keep to the OCI distribution specification's
  grammar: a tag is ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; a repository is
  one or more lower-case path components separated by ``/``, each
  ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or runs of ``-``.
"""

from __future__ import annotations

import re

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# Registries cap a repository name (without the host) at 255 characters.
MAX_REPOSITORY = 255


def is_text(value: str) -> bool:
    """True when ``value`` is valid Unicode that UTF-8 can encode (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_tag(value: str) -> bool:
    """True when ``value`` is a tag in the OCI distribution grammar."""
    return TAG.fullmatch(value) is not None


def is_repository(value: str) -> bool:
    """True when ``value`` is a repository name in the OCI distribution grammar."""
    return len(value) <= MAX_REPOSITORY and REPOSITORY.fullmatch(value) is not None
