"""
The twistd plugin's command line: ``Options`` and the parsers of its values.
Parsing only: what the options build is ``compose.make_service``'s business.
"""

from __future__ import annotations

import getopt
import re
from typing import Any, Callable, Mapping

from twisted.python import usage

import brigade_cr
import twisted
from brigade_cr.app.logs import FORMATS, LEVELS, log_format, log_level
from brigade_cr.app.service import DEFAULT_DRAIN_DEADLINE
from brigade_cr.web.clientaddr import parse_network
from brigade_cr.web.site import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
)

DEFAULT_DIRECTORY = "brigade-cr-data"
# The spool is on unless --no-spool: a 2xx means the delivery is on disk.
# Relative to the working directory, beside the directory backend's data;
# the container image and the deployment files name their own.
DEFAULT_SPOOL = f"{DEFAULT_DIRECTORY}/spool"

# Every option can also come from the environment, as BRIGADE_CR_<FLAG>.
ENVIRONMENT_PREFIX = "BRIGADE_CR_"
# Options that may be given more than once: their variable holds a list.
REPEATABLE = frozenset({"trusted-proxy"})
# Options that are actions, not configuration.
NOT_FROM_ENVIRONMENT = frozenset({"help", "version"})
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no"})


def environment_variable(option: str) -> str:
    """The variable an option may come from: ``kube-qps`` -> ``BRIGADE_CR_KUBE_QPS``."""
    return ENVIRONMENT_PREFIX + option.upper().replace("-", "_")


def port_description(value: str) -> str:
    """An endpoint description; a bare number means ``tcp:N``."""
    return f"tcp:{value}" if value.isdigit() else value


def byte_size(value: str) -> int:
    """A byte count: ``262144``, ``256K`` or ``1M`` (binary units)."""
    units = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"not a positive byte count: {value!r}")
    return int(number) * factor


def positive_number(value: str) -> float:
    """A positive number of seconds."""
    number = float(value)
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"not a positive number: {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """A count that may be zero (meaning off)."""
    number = int(value)
    if number < 0:
        raise ValueError(f"not a count: {value!r}")
    return number


def positive_int(value: str) -> int:
    """A count of at least one."""
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1: {value!r}")
    return number


class Options(usage.Options):
    """Command-line options of ``twistd brigade-cr``."""

    synopsis = "[options]"
    longdesc = (
        "Receive container-registry webhooks and create Brigade v1 builds. "
        "With no --backend and no Kubernetes configuration found, builds are "
        "written to a local directory."
    )
    optParameters = [
        ["port", "p", "tcp:8000", "Endpoint to listen on (a bare number means tcp:N).", port_description],
        [
            "namespace",
            "n",
            None,
            "Brigade namespace (else $BRIGADE_NAMESPACE, the in-cluster namespace, or default).",
        ],
        [
            "kubeconfig",
            None,
            None,
            "Kubeconfig file (else $KUBECONFIG, else ~/.kube/config; in-cluster in a pod).",
        ],
        ["context", None, None, "Kubeconfig context (else the current context)."],
        [
            "backend",
            None,
            None,
            f"kube, or dir:PATH (default: kube when configured, else dir:{DEFAULT_DIRECTORY}).",
        ],
        ["default-ref", None, "master", "Commit ref for builds whose URL names none."],
        [
            "auth",
            None,
            "required",
            "required: every project needs a crGatewaySecret; optional: projects without one "
            "accept unauthenticated deliveries (for migrating from brigade-cr-gateway).",
        ],
        ["max-body", None, DEFAULT_MAX_BODY, "Largest request body accepted (bytes, or 256K, 1M).", byte_size],
        [
            "request-timeout",
            None,
            DEFAULT_REQUEST_TIMEOUT,
            "Seconds a request's headers and body may take to arrive.",
            positive_number,
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds an idle keep-alive connection stays open.",
            positive_number,
        ],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Open connections at most; more are closed on accept.",
            positive_int,
        ],
        [
            "auth-failure-burst",
            None,
            10,
            "Failed authentications a source address may make on one project at once before getting 429.",
            positive_int,
        ],
        [
            "auth-failure-rate",
            None,
            10,
            "Failed authentications a source address may make on one project per minute, after the burst.",
            positive_int,
        ],
        [
            "project-rate",
            None,
            0,
            "Accepted deliveries per project per minute, with an equal burst (0: no limit).",
            non_negative_int,
        ],
        [
            "spool",
            None,
            None,
            "Directory of the durable spool: deliveries are stored there before they are acknowledged "
            f"(one gateway per directory; put it on a persistent volume; default: {DEFAULT_SPOOL}).",
        ],
        ["spool-max-records", None, 10_000, "Deliveries the spool holds at most.", positive_int],
        ["spool-max-bytes", None, 256 * 1024 * 1024, "Bytes the spool holds at most (or 64M, 1G...).", byte_size],
        [
            "project-resync",
            None,
            300.0,
            "Seconds between full re-lists of the watched project Secrets (Kubernetes backend).",
            positive_number,
        ],
        # Sized for a registry's burst, not client-go's 5/10: API Priority and
        # Fairness on the server is the real protection (a 429's Retry-After
        # pauses every caller); see docs/performance.md, "Client-side limit".
        [
            "kube-qps",
            None,
            50.0,
            "Build creations per second at most, after the burst (client-side rate limit).",
            positive_number,
        ],
        ["kube-burst", None, 500, "Build creations at once at most (client-side rate limit).", positive_int],
        [
            "metrics",
            None,
            None,
            "Endpoint serving Prometheus metrics at /metrics, e.g. tcp:9100:interface=127.0.0.1 "
            "(default: none; keep it off the public webhook port).",
            port_description,
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_DRAIN_DEADLINE,
            "Seconds a graceful shutdown (SIGTERM) may take.",
            positive_number,
        ],
        ["log-format", None, "text", f"Log format: {' or '.join(FORMATS)} (one JSON object per line).", log_format],
        [
            "log-level",
            None,
            LEVELS["info"],
            f"Least severe events logged: {', '.join(LEVELS)} (brigade-cr's and Twisted's).",
            log_level,
        ],
    ]
    optFlags = [
        ["log-probes", None, "Log /healthz, /readyz and metrics scrapes in the access log too."],
        [
            "no-spool",
            None,
            "No spool: acknowledge a delivery only once its build exists (a 2xx is then not kept "
            "across a restart if the API was slow; see the README).",
        ],
        [
            "drain-only",
            None,
            "Drain the spool directory (--spool, or its default) into the backend and exit (0 once it "
            "is empty); no webhook listener (--port is ignored).",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self["trusted-proxy"] = []
        # Read only here: the process environment is tap.py's to pass in.
        self._environ: Mapping[str, str] = {} if environ is None else environ
        # option -> the variable it was taken from (for error messages).
        self.from_environment: dict[str, str] = {}

    def source(self, option: str) -> str:
        """How the operator set ``option``: its variable's name, or ``--option``."""
        return self.from_environment.get(option, f"--{option}")

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line ``options`` over the environment: an option
        given on the command line wins over its ``BRIGADE_CR_<FLAG>``
        variable. Raises ``usage.UsageError`` for a bad flag or variable
        (naming the variable).
        """
        if options is None:
            import sys

            options = sys.argv[1:]
        self._apply_environment(self._given(options))
        super().parseOptions(options)

    def _given(self, argv: list[str]) -> set[str]:
        try:
            opts, _ = getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error:
            return set()  # the command line's own parse reports it
        given = set()
        for opt, _value in opts:
            name = opt[2:] if opt.startswith("--") else opt[1:]
            given.add(self.synonyms.get(name, name))
        return given

    def _apply_environment(self, given: set[str]) -> None:
        parameters: dict[str, Callable[[str], Any] | None] = {}
        for entry in self.optParameters:
            row: list[Any] = list(entry)  # type: ignore[call-overload]
            parameters[row[0]] = row[4] if len(row) > 4 else None
        flags = {entry[0] for entry in getattr(self, "optFlags", [])}
        names = {long.rstrip("=") for long in self.longOpt}
        for name in sorted(names - NOT_FROM_ENVIRONMENT - given):
            variable = environment_variable(name)
            if variable not in self._environ:
                continue
            value = self._environ[variable]
            self.from_environment[name] = variable
            if name in flags:
                word = value.strip().lower()
                if word not in TRUE_WORDS | FALSE_WORDS:
                    raise usage.UsageError(f"{variable}: not a boolean (1/true/yes or 0/false/no): {value!r}")
                self[name] = 1 if word in TRUE_WORDS else 0
            elif name in parameters:
                coerce = parameters[name]
                try:
                    self[name] = value if coerce is None else coerce(value)
                except ValueError as e:
                    raise usage.UsageError(f"{variable}: {e}") from None
            elif name in REPEATABLE:
                method = getattr(self, "opt_" + name.replace("-", "_"))
                for item in re.split(r"[\s,]+", value.strip()):
                    if item:
                        try:
                            method(item)
                        except usage.UsageError as e:
                            raise usage.UsageError(f"{variable}: {str(e).split(': ', 1)[-1]}") from None
            else:
                getattr(self, "opt_" + name.replace("-", "_"))(value)

    def _resolve_spool(self) -> None:
        """
        ``spool`` ends as the directory to use, or None with ``--no-spool``.
        Of ``--spool`` and ``--no-spool`` the command line wins over the
        environment (the image sets ``BRIGADE_CR_SPOOL``); both in the same
        place contradict each other.
        """
        if self["no-spool"] and self["spool"] is not None:
            spool_from_environment = "spool" in self.from_environment
            if spool_from_environment == ("no-spool" in self.from_environment):
                raise usage.UsageError(f"{self.source('no-spool')} and {self.source('spool')} contradict each other")
            if not spool_from_environment:
                self["no-spool"] = 0
        if self["no-spool"]:
            self["spool"] = None
        elif self["spool"] is None:
            self["spool"] = DEFAULT_SPOOL
        elif not self["spool"]:
            raise usage.UsageError(f"{self.source('spool')} must name a directory (or use --no-spool)")

    def opt_version(self) -> None:
        """Print brigade-cr's version and Twisted's, and exit."""
        print(f"brigade-cr {brigade_cr.__version__}")
        print(f"Twisted {twisted.__version__}")
        raise SystemExit(0)

    def opt_trusted_proxy(self, value: str) -> None:
        """
        A network (CIDR) or address of a proxy whose X-Forwarded-For / Forwarded headers name the
        client (repeatable; e.g. the pod network behind an ingress).
        """
        try:
            self["trusted-proxy"].append(parse_network(value))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {e}") from None

    def postOptions(self) -> None:
        self._resolve_spool()
        backend = self["backend"]
        if backend is not None and backend != "kube" and not (backend.startswith("dir:") and len(backend) > 4):
            raise usage.UsageError(f"{self.source('backend')} must be 'kube' or 'dir:PATH'")
        if not self["default-ref"]:
            raise usage.UsageError(f"{self.source('default-ref')} must not be empty")
        if self["auth"] not in ("required", "optional"):
            raise usage.UsageError(f"{self.source('auth')} must be 'required' or 'optional'")
