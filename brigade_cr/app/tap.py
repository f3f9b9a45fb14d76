"""
The twistd plugin's options and ``makeService``: where the object graph is
built. Nothing below this module touches the global reactor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
from twisted.application.service import IService
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.app.service import DEFAULT_DRAIN_DEADLINE, GatewayService
from brigade_cr.app.startup import StartupError, bind, check_spool, exit_nonzero_at_end, fails_clearly
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.stores.directory import DirectoryScan, directory_backend, read_projects
from brigade_cr.stores.fileio import ThreadedIO
from brigade_cr.stores.projects import KnownProjects, ProjectSource
from brigade_cr.stores.retry import RetryingBuilds, Throttle, ThrottledBuilds
from brigade_cr.stores.spool import SpooledBuilds
from brigade_cr.stores.spool.spooled import MAX_IN_FLIGHT
from brigade_cr.web.clientaddr import parse_network
from brigade_cr.web.routes import WebhookSite
from brigade_cr.web.site import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
    BrigadeSite,
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
        ["kube-qps", None, 5.0, "Build creations per second at most (client-side rate limit).", positive_number],
        ["kube-burst", None, 10, "Build creations in a burst at most.", positive_int],
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


@attrs.define
class Backend:
    """
    The stores a gateway uses, one line describing them for the log, and
    what to call on shutdown (to close pooled connections).
    """

    projects: IProjects
    builds: IBuilds
    description: str
    close: Callable[[], Any] | None = None
    # What keeps the in-memory project set up to date (a watch, a rescan).
    project_source: ProjectSource | None = None
    # The client-side rate limit protects an API server, not a directory.
    throttled: bool = False


def choose_backend(options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str]) -> Backend:
    """
    The backend named by ``--backend``; without one, Kubernetes when a
    configuration is found, else a local directory.
    """
    choice = options["backend"]
    if choice is not None and choice.startswith("dir:"):
        return _directory(Path(choice[4:]), options, reactor, environ, "")
    # Imported here so that a directory-only run needs no Kubernetes setup.
    from brigade_cr.stores.kube.backend import make_kube_backend
    from brigade_cr.stores.kube.client import DEFAULT_MAX_PERSISTENT
    from brigade_cr.stores.kube.config import KubeConfigError, namespace_default, resolve_config

    try:
        config = resolve_config(
            options["kubeconfig"],
            options["context"],
            environ,
            home=os.path.expanduser("~"),
        )
    except KubeConfigError as e:
        raise StartupError(_kubeconfig_problem(str(e))) from None
    if config is None:
        if choice == "kube":
            raise StartupError(
                "--backend kube: no Kubernetes configuration found "
                "(no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster service account); "
                "give --kubeconfig, or use --backend dir:PATH"
            )
        return _directory(
            Path(DEFAULT_DIRECTORY),
            options,
            reactor,
            environ,
            "no Kubernetes configuration found; ",
        )
    namespace = namespace_default(options["namespace"], environ, config)
    try:
        # The pool keeps a connection per build in flight plus the watch's.
        pool = MAX_IN_FLIGHT + 2 if options["spool"] else DEFAULT_MAX_PERSISTENT
        projects, builds, client = make_kube_backend(reactor, config, namespace, max_persistent=pool)
    except KubeConfigError as e:
        raise StartupError(_kubeconfig_problem(str(e))) from None
    return Backend(
        projects,
        builds,
        f"Creating Brigade builds in Kubernetes namespace {namespace!r} at {config.server} ({config.source})",
        close=client.close,
        throttled=True,
        project_source=_project_watch(client, namespace, reactor, options),
    )


def _kubeconfig_problem(problem: str) -> str:
    # One line: the configuration's own words, and what to change.
    return f"{' '.join(problem.split())}; fix or give --kubeconfig (and --context), or use --backend dir:PATH"


def _directory(
    root: Path,
    options: Mapping[str, Any],
    reactor: Any,
    environ: Mapping[str, str],
    why: str,
) -> Backend:
    namespace = options["namespace"] or environ.get("BRIGADE_NAMESPACE") or "default"
    for sub in ("projects", "builds"):
        try:
            (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(
                f"--backend dir:{root}: cannot create {root / sub}: {e.strerror}; change --backend"
            ) from None
    projects, builds = directory_backend(reactor, reactor.getThreadPool(), root, namespace)
    where = root.resolve()
    return Backend(
        projects,
        builds,
        f"{why}using the local directory backend: projects from {where / 'projects'}, "
        f"builds written to {where / 'builds'} (namespace {namespace!r})",
        project_source=DirectoryScan(
            root / "projects",
            ThreadedIO(reactor, reactor.getThreadPool()),
            reactor,
            initial=_read_projects(root / "projects"),
        ),
    )


def _read_projects(projects_dir: Path) -> Any:
    # Before the reactor runs (as the kubeconfig is read), so the gateway
    # knows its projects, and is ready, before it listens.
    try:
        return read_projects(projects_dir)
    except OSError:
        return None


def _project_watch(client: Any, namespace: str, reactor: Any, options: Mapping[str, Any]) -> ProjectSource:
    from brigade_cr.stores.kube.watch import ProjectWatch

    return ProjectWatch(client, namespace, reactor, resync=options.get("project-resync", 300.0))


def make_gateway(
    options: Mapping[str, Any],
    projects: IProjects,
    builds: IBuilds,
    clock: Any,
    metrics: GatewayMetrics | None = None,
) -> Gateway:
    """The gateway use case, configured by ``options``."""
    per_project = options["project-rate"]
    return Gateway(
        projects=projects,
        builds=builds,
        clock=clock,
        default_ref=options["default-ref"],
        auth_required=options["auth"] == "required",
        auth_failures=RateLimiter(
            clock, per_second=options["auth-failure-rate"] / 60.0, burst=options["auth-failure-burst"]
        ),
        project_rate=RateLimiter(clock, per_second=per_project / 60.0, burst=per_project) if per_project else None,
        metrics=metrics,
    )


@fails_clearly
def makeService(options: Options) -> IService:
    """
    Build the gateway's object graph:

    backend stores (Kubernetes, throttled to the API's pace, or a directory);
    projects known in memory before they are asked for (a watch or a
    rescan keeps them, persisted beside the spool); builds behind the durable
    spool (``--spool``) or, without one, retried within the request's time;
    the use case; the web application and its limited site; and the service
    that starts and stops them in order.

    A problem that makes the start fail for good (a port in use, a bad
    endpoint, no Kubernetes configuration, a spool that cannot be created
    or locked) is found here, before the reactor runs, and raised as
    ``SystemExit`` with one line naming it and the option to change.
    """
    from twisted.internet import reactor

    backend = choose_backend(options, reactor, os.environ)
    io = ThreadedIO(reactor, reactor.getThreadPool())  # type: ignore[arg-type,attr-defined]
    builds: IBuilds = backend.builds
    if backend.throttled:
        builds = ThrottledBuilds(
            builds,
            Throttle(reactor, per_second=options["kube-qps"], burst=options["kube-burst"]),  # type: ignore[arg-type]
        )
    spool_dir = options["spool"]
    assert backend.project_source is not None
    projects = KnownProjects(
        backend.project_source,
        reactor,  # type: ignore[arg-type]
        store=Path(spool_dir) / "projects.json" if spool_dir else None,
        run_blocking=io.run,
    )
    spool: SpooledBuilds | None = None
    if spool_dir:
        check_spool(Path(spool_dir))
        spool = SpooledBuilds(
            Path(spool_dir),
            builds,
            reactor,  # type: ignore[arg-type]
            io,
            max_records=options["spool-max-records"],
            max_bytes=options["spool-max-bytes"],
        )
        accepted: IBuilds = spool
    else:
        accepted = RetryingBuilds(builds, reactor)  # type: ignore[arg-type]
    metrics = GatewayMetrics()
    if spool is not None:
        metrics.watch_spool(spool.stats)
    gateway = make_gateway(options, projects, accepted, reactor, metrics)

    def readiness() -> str | None:
        if spool is not None and not spool.accepting():
            return "the spool cannot accept deliveries"
        return projects.not_ready()

    web = WebhookSite(gateway, reactor, readiness=readiness, trusted_proxies=options["trusted-proxy"])  # type: ignore[arg-type]
    site = BrigadeSite(
        web.resource(),
        reactor,  # type: ignore[arg-type]
        max_body=options["max-body"],
        request_timeout=options["request-timeout"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
    )
    announcements = [backend.description]
    announcements.append(
        f"Spool: deliveries are stored in {Path(spool_dir).resolve()} before they are acknowledged"
        if spool_dir
        else "No --spool: a delivery is answered 200 only once its build exists, else 503"
    )
    if not gateway.auth_required:
        announcements.append(
            "--auth optional: projects without a crGatewaySecret accept deliveries "
            "from anyone who can reach this gateway"
        )
    return GatewayService(
        site=web,
        listening=bind("--port", options["port"], site, reactor),
        clock=reactor,  # type: ignore[arg-type]
        spool=spool,
        background=[projects],
        close=backend.close,
        announcements=announcements,
        drain_deadline=options["shutdown-timeout"],
        stop_reactor=reactor.stop,  # type: ignore[attr-defined]
        stopped_cleanly=lambda: _forget_exit_signal(reactor),
        failed=exit_nonzero_at_end,
        side_listening=[_metrics_service(options["metrics"], metrics, reactor)] if options["metrics"] else [],
    )


def _metrics_service(endpoint: str, metrics: GatewayMetrics, reactor: Any) -> IService:
    root = Resource()
    root.putChild(b"metrics", metrics.resource())
    return bind("--metrics", endpoint, Site(root, reactor=reactor), reactor)


def _forget_exit_signal(reactor: Any) -> None:
    # twistd re-raises the signal that stopped the reactor so that the exit
    # status shows it (143 for SIGTERM). A SIGTERM that led to a complete
    # graceful stop is a success: exit 0, as Kubernetes and systemd expect.
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = None
