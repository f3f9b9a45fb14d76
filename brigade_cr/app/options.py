"""
The twistd plugin's command line: ``Options`` and the parsers of its values.
Parsing only: what the options build is ``compose.make_service``'s business.
"""

from __future__ import annotations

from twisted.python import usage

from brigade_cr.app.service import DEFAULT_DRAIN_DEADLINE
from brigade_cr.web.clientaddr import parse_network
from brigade_cr.web.site import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
)

DEFAULT_DIRECTORY = "brigade-cr-data"


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
            "(one gateway per directory; put it on a persistent volume).",
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["trusted-proxy"] = []

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
        backend = self["backend"]
        if backend is not None and backend != "kube" and not (backend.startswith("dir:") and len(backend) > 4):
            raise usage.UsageError("--backend must be 'kube' or 'dir:PATH'")
        if not self["default-ref"]:
            raise usage.UsageError("--default-ref must not be empty")
        if self["auth"] not in ("required", "optional"):
            raise usage.UsageError("--auth must be 'required' or 'optional'")
