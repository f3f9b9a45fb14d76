"""
Choosing the stores: Kubernetes (``--backend kube``, or a configuration
found) or a local directory (``--backend dir:PATH``, or nothing found).

Every call into ``brigade_cr.stores.kube`` is in ``choose_backend``; the
configuration is read here, synchronously, before the reactor runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from brigade_cr.app.options import DEFAULT_DIRECTORY
from brigade_cr.app.startup import StartupError
from brigade_cr.core.interfaces import IBuilds, IKubeRequestMetrics, IProjects
from brigade_cr.stores.directory import DirectoryScan, directory_backend, read_projects
from brigade_cr.stores.fileio import ThreadedIO
from brigade_cr.stores.projects import ProjectSource
from brigade_cr.stores.spool.spooled import MAX_IN_FLIGHT


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


def choose_backend(
    options: Mapping[str, Any],
    reactor: Any,
    environ: Mapping[str, str],
    kube_metrics: IKubeRequestMetrics | None = None,
) -> Backend:
    """
    The backend named by ``--backend``; without one, Kubernetes when a
    configuration is found, else a local directory. A Kubernetes client
    observes its requests in ``kube_metrics``.
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
        projects, builds, client = make_kube_backend(
            reactor, config, namespace, max_persistent=pool, metrics=kube_metrics
        )
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
