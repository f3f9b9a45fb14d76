"""
The composition root: ``make_service(options, reactor, environ)`` builds
the gateway's object graph and the services that run it. The reactor and
the environment are handed in (``tap.makeService`` passes the global ones;
tests a ``MemoryReactorClock``): nothing here imports the global reactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.web.resource import Resource

from brigade_cr.app.backend import choose_backend
from brigade_cr.app.metrics import CountedBuilds, GatewayMetrics
from brigade_cr.app.service import (
    ClosePool,
    GatewayServices,
    ProjectsService,
    SpoolService,
    StopDeadline,
    StopOnSignal,
    WebhookListener,
)
from brigade_cr.app.startup import bind, check_spool, exit_nonzero_at_end
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.stores.fileio import ThreadedIO
from brigade_cr.stores.projects import KnownProjects
from brigade_cr.stores.retry import NO_SPOOL_BUDGET, THROTTLE_TICK, RetryingBuilds, Throttle, ThrottledBuilds
from brigade_cr.stores.spool import SpooledBuilds
from brigade_cr.web.routes import WebhookSite
from brigade_cr.web.site import BrigadeSite, ScrapeSite


def make_gateway(
    options: Mapping[str, Any],
    projects: IProjects,
    builds: IBuilds,
    clock: IReactorTime,
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


def make_service(
    options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str], metrics: GatewayMetrics | None = None
) -> GatewayServices:
    """
    Build the gateway's object graph from parsed ``options``:

    backend stores (Kubernetes, throttled to the API's pace, or a directory);
    projects known in memory before they are asked for (a watch or a
    rescan keeps them, persisted beside the spool); builds behind the durable
    spool (``--spool``) or, without one, retried within the request's time;
    the use case; the web application and its limited site; the metrics
    (``metrics``, a new ``GatewayMetrics`` by default) that all of them
    count into, served with ``--metrics``.

    Returns a ``GatewayServices`` whose children, in start order, are named
    ``metrics`` (with ``--metrics``), ``pool`` (Kubernetes), ``projects``,
    ``spool`` (with ``--spool``), ``webhook`` and ``signals``; they stop in
    the reverse order, one after another (see ``service.py``).

    ``reactor`` must provide ``IReactorTime``, ``IReactorCore`` and
    ``IReactorThreads`` (checked: ``TypeError`` otherwise) and what the
    endpoints of ``--port`` and ``--metrics`` need (TCP, ``IReactorFDSet``).
    A problem that makes the start fail for good (a port in use, a bad
    endpoint, no Kubernetes configuration, a spool that cannot be created
    or locked) raises ``StartupError`` naming the option to change, before
    the reactor runs.
    """
    # One reactor, seen through each interface it is used as; adapting
    # checks that it provides it.
    clock = IReactorTime(reactor)
    core = IReactorCore(reactor)
    threads = IReactorThreads(reactor)

    if metrics is None:
        metrics = GatewayMetrics()
    backend = choose_backend(options, reactor, environ, kube_metrics=metrics)
    io = ThreadedIO(threads, threads.getThreadPool())
    builds: IBuilds = backend.builds
    if backend.throttled:
        builds = ThrottledBuilds(
            builds,
            Throttle(clock, per_second=options["kube-qps"], burst=options["kube-burst"], tick=THROTTLE_TICK),
            # A spool's drainer can wait out any pause; a waiting sender cannot.
            max_pause_wait=None if options["spool"] else NO_SPOOL_BUDGET,
        )
    # Below the spool and the retries: every build the store creates, by either path.
    builds = CountedBuilds(builds, metrics.build_created)
    spool_dir = options["spool"]
    assert backend.project_source is not None
    projects = KnownProjects(
        backend.project_source,
        clock,
        store=Path(spool_dir) / "projects.json" if spool_dir else None,
        run_blocking=io.run,
    )
    spool: SpooledBuilds | None = None
    accepted: IBuilds
    if spool_dir:
        check_spool(Path(spool_dir))
        spool = SpooledBuilds(
            Path(spool_dir),
            builds,
            clock,
            io,
            max_records=options["spool-max-records"],
            max_bytes=options["spool-max-bytes"],
        )
        accepted = spool
    else:
        accepted = RetryingBuilds(builds, clock)
    if spool is not None:
        metrics.watch_spool(spool.stats)
    gateway = make_gateway(options, projects, accepted, clock, metrics)

    def readiness() -> str | None:
        if spool is not None and not spool.accepting():
            return "the spool cannot accept deliveries"
        return projects.not_ready()

    web = WebhookSite(gateway, clock, readiness=readiness, trusted_proxies=options["trusted-proxy"])
    site = BrigadeSite(
        web.resource(),
        clock,
        max_body=options["max-body"],
        request_timeout=options["request-timeout"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
        log_probes=bool(options["log-probes"]),
        metrics=metrics,
    )

    def give_up() -> None:
        # The start failed after the reactor ran: stop, then exit 1.
        exit_nonzero_at_end()
        core.callWhenRunning(core.stop)

    deadline = StopDeadline(clock, options["shutdown-timeout"])
    root = GatewayServices(
        deadline, _announcements(backend.description, spool_dir, gateway), failed=exit_nonzero_at_end
    )
    # Bound now (--port first, as before), so that a port in use is a
    # start-up error; accepting only once their services start.
    webhook_port = bind("--port", options["port"], site, reactor)
    metrics_listener = (
        metrics_port(options["metrics"], metrics, threads, reactor, bool(options["log-probes"]))
        if options["metrics"]
        else None
    )
    # Added in start order; the graceful stop runs backwards: the webhook
    # listener first, the metrics listener last.
    if metrics_listener is not None:
        named("metrics", metrics_listener).setServiceParent(root)
    if backend.close is not None:
        named("pool", ClosePool(backend.close)).setServiceParent(root)
    named("projects", ProjectsService(projects)).setServiceParent(root)
    if spool is None:
        webhook = WebhookListener(web, webhook_port, deadline)
    else:
        spooling = SpoolService(spool, deadline, failed=give_up)
        named("spool", spooling).setServiceParent(root)
        webhook = WebhookListener(web, webhook_port, deadline, ready=spooling.recovered)
    named("webhook", webhook).setServiceParent(root)
    named("signals", StopOnSignal(core, threads)).setServiceParent(root)
    return root


def named(name: str, service: IService) -> IService:
    """``service``, named ``name`` (children are found by name: ``getServiceNamed``)."""
    service.setName(name)
    return service


def _announcements(description: str, spool_dir: str | None, gateway: Gateway) -> list[str]:
    lines = [description]
    lines.append(
        f"Spool: deliveries are stored in {Path(spool_dir).resolve()} before they are acknowledged"
        if spool_dir
        else "No --spool: a delivery is answered 200 only once its build exists, else 503"
    )
    if not gateway.auth_required:
        lines.append(
            "--auth optional: projects without a crGatewaySecret accept deliveries "
            "from anyone who can reach this gateway"
        )
    return lines


def metrics_port(
    endpoint: str, metrics: GatewayMetrics, threads: IReactorThreads, reactor: Any, log_probes: bool = False
) -> IService:
    """
    The ``--metrics`` listener: ``/metrics`` on ``endpoint``, bound now (a
    port in use is a ``StartupError``), accepting once the service starts.
    """
    root = Resource()
    root.putChild(b"metrics", metrics.resource(threads))
    return bind("--metrics", endpoint, ScrapeSite(root, reactor, log_probes=log_probes), reactor)
