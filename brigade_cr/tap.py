"""
The twistd plugin's options and ``makeService``: where the object graph is
built. Nothing below this module touches the global reactor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import attrs
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from .gateway import Gateway
from .interfaces import IBuilds, IProjects
from .local import directory_backend
from .site import make_site
from .web import make_site_resource

DEFAULT_DIRECTORY = "brigade-cr-data"


def port_description(value: str) -> str:
    """An endpoint description; a bare number means ``tcp:N``."""
    return f"tcp:{value}" if value.isdigit() else value


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
    ]

    def postOptions(self) -> None:
        backend = self["backend"]
        if backend is not None and backend != "kube" and not (
            backend.startswith("dir:") and len(backend) > 4
        ):
            raise usage.UsageError("--backend must be 'kube' or 'dir:PATH'")
        if not self["default-ref"]:
            raise usage.UsageError("--default-ref must not be empty")


@attrs.define
class Backend:
    """The stores a gateway uses, and one line describing them for the log."""

    projects: IProjects
    builds: IBuilds
    description: str


class _Announcement(Service):
    """Logs, once the service starts, where builds will go."""

    log = Logger()

    def __init__(self, text: str) -> None:
        self.text = text

    def startService(self) -> None:
        super().startService()
        self.log.info("{text}", text=self.text)


def choose_backend(
    options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str]
) -> Backend:
    """
    The backend named by ``--backend``; without one, Kubernetes when a
    configuration is found, else a local directory.
    """
    choice = options["backend"]
    if choice is not None and choice.startswith("dir:"):
        return _directory(Path(choice[4:]), options, reactor, environ, "")
    # Imported here so that a directory-only run needs no Kubernetes setup.
    from .kube.backend import make_kube_backend
    from .kube.config import KubeConfigError, namespace_default, resolve_config

    try:
        config = resolve_config(
            options["kubeconfig"],
            options["context"],
            environ,
            home=os.path.expanduser("~"),
        )
    except KubeConfigError as e:
        raise usage.UsageError(str(e)) from None
    if config is None:
        if choice == "kube":
            raise usage.UsageError(
                "--backend kube: no Kubernetes configuration found "
                "(no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster service account)"
            )
        return _directory(
            Path(DEFAULT_DIRECTORY),
            options,
            reactor,
            environ,
            "no Kubernetes configuration found; ",
        )
    namespace = namespace_default(options["namespace"], environ, config)
    projects, builds, _client = make_kube_backend(reactor, config, namespace)
    return Backend(
        projects,
        builds,
        f"Creating Brigade builds in Kubernetes namespace {namespace!r} "
        f"at {config.server} ({config.source})",
    )


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
            raise usage.UsageError(f"cannot create {root / sub}: {e.strerror}") from None
    projects, builds = directory_backend(reactor, reactor.getThreadPool(), root, namespace)
    where = root.resolve()
    return Backend(
        projects,
        builds,
        f"{why}using the local directory backend: projects from {where / 'projects'}, "
        f"builds written to {where / 'builds'} (namespace {namespace!r})",
    )


def makeService(options: Options) -> IService:
    """Build the gateway's object graph and its listening service."""
    from twisted.internet import reactor

    backend = choose_backend(options, reactor, os.environ)
    gateway = Gateway(
        projects=backend.projects,
        builds=backend.builds,
        clock=reactor,  # type: ignore[arg-type]
        default_ref=options["default-ref"],
    )
    site = make_site(make_site_resource(gateway, reactor), reactor)  # type: ignore[arg-type]
    top = MultiService()
    _Announcement(backend.description).setServiceParent(top)
    strports.service(options["port"], site, reactor=reactor).setServiceParent(top)
    return top
