"""
The seams of brigade-cr.

The use case (``gateway.py``) is written against these interfaces only. Each
store interface has a Kubernetes implementation, a directory implementation
and an in-memory one, all checked by one shared contract suite;
``IGatewayMetrics`` is implemented by ``app/metrics.py``, so that core never
imports the application's wiring; so are ``IRequestMetrics`` (observed by
``web/site.py``) and ``IKubeRequestMetrics`` (by ``stores/kube/client.py``),
so that neither web nor stores imports app.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import Attribute, Interface


class IProjects(Interface):
    """Where Brigade projects are looked up."""

    def get(project_id: str) -> Any:
        """
        Look up the project whose ID (``brigade-...``) is ``project_id``.

        Returns a Deferred that fires with a ``Project``. It fails with
        ``ProjectNotFound`` when there is no such project, or when the Secret
        of that name is not of type ``brigade.sh/project``; with
        ``BackendUnavailable`` when the store could not answer.
        """


class IBuilds(Interface):
    """Where builds are submitted."""

    def submit(build: Any) -> Any:
        """
        Store ``build`` (a ``Build``) as a Brigade v1 build Secret.

        Returns a Deferred that fires with a ``Receipt`` once the build
        exists. A build's Secret name is its idempotency key: if a Secret of
        that name already holds the same build, the Receipt says
        ``duplicate=True``. Fails with ``BackendUnavailable`` for failures
        that may pass (the caller may retry) and ``BackendRejected`` for
        permanent ones (including the name being taken by a different build).
        """


class IPacedBuilds(IBuilds):
    """A store whose submits may first wait their turn (a client-side rate limit)."""

    def would_wait() -> bool:
        """
        True when a submit made now would first wait (no token to spare,
        others waiting, or paused); False when it would go at once.
        Takes nothing: asking does not change what the next submit does.
        """


class IPayloadFormat(Interface):
    """
    One registry's webhook format: how to recognise it and what it means.

    Implementations are pure: no I/O, no clock (the receive time comes with
    the delivery).
    """

    name = Attribute(
        "The format's name, also the build's ``event_provider`` and a metric "
        "label: ``dockerhub``, ``acr``, ``generic``, ..."
    )

    signatures = Attribute(
        "The ``HmacScheme`` values this sender signs the raw body with (empty "
        "for senders that cannot sign: they authenticate with a token)."
    )

    def recognise(headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        """
        True when a delivery with these headers (lower-cased names) and this
        parsed JSON object is in this format.
        """

    def parse(delivery: Any, document: Mapping[str, Any]) -> Sequence[Any]:
        """
        The ``RegistryEvent`` values a recognised delivery reports, in order.

        Events that must not become builds (pings, untagged pushes, ...) are
        returned with action ``ping`` or ``ignored`` and a ``reason``, so the
        delivery is answered 2xx without a build. Raises ``BadRequest`` when a
        document this format recognised is missing what it requires.
        """


class IGatewayMetrics(Interface):
    """Where the gateway counts deliveries and builds."""

    def delivered(payload_format: str, outcome: str) -> None:
        """
        Count one delivery of ``payload_format`` (a format's ``name``, or
        ``none`` when it was refused before its body was read) that ended
        as ``outcome``, one of ``core.answers.OUTCOMES``. Raises
        ``ValueError`` for any other outcome.
        """

    def built(project_id: str, event_type: str) -> None:
        """Count one build (not a duplicate) accepted for an authenticated project."""


# The closed label sets of the two observers below (promise P10,
# docs/guarantees.md: no label value comes from what a sender wrote).
ROUTES = ("webhook", "healthz", "readyz", "other")
KUBE_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "other")


class IRequestMetrics(Interface):
    """Where the webhook listener times each answer it sends."""

    def answered(route: str, code: int, seconds: float) -> None:
        """
        Observe one answer with HTTP status ``code`` to a request for
        ``route``, one of ``ROUTES`` (the request's path, never the path
        itself), ``seconds`` after the request began to arrive. Raises
        ``ValueError`` for any other route.
        """


class IKubeRequestMetrics(Interface):
    """Where the Kubernetes API client counts and times its requests."""

    def kube_request(verb: str, code: int | None, seconds: float) -> None:
        """
        Observe one request sent to the API server: ``verb`` one of
        ``KUBE_VERBS``; ``code`` the HTTP status it was answered with, or
        None when it got no usable answer (connection failure, TLS,
        timeout, an unreadable body); ``seconds`` from sending it to that
        outcome (for a watch, to its answer's headers). Raises
        ``ValueError`` for any other verb.
        """
