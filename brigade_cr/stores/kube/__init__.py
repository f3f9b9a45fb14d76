"""
The Kubernetes edge of brigade-cr, on treq and Twisted (no blocking client).

- ``config``: find and read the cluster configuration (kubeconfig,
  in-cluster service account) with the ``kubernetes`` package's loaders,
  synchronously, before the reactor runs.
- ``credentials``: bearer-token sources (static, re-read file, exec plugin
  run by the library in a thread).
- ``tls``: the ``IPolicyForHTTPS`` for the API server.
- ``client``: ``KubeClient``, the few API calls brigade-cr makes (a
  streaming watch among them), all through treq's ``HTTPClient``.
- ``watch``: ``ProjectWatch``, the list-and-watch of project Secrets that
  keeps the gateway's in-memory ``KnownProjects`` up to date.
- ``backend``: ``KubeProjects`` and ``KubeBuilds``, the ``IProjects`` and
  ``IBuilds`` implementations, and ``make_kube_backend``.

Nothing here imports ``twisted.internet.reactor``: the reactor is passed in.

``lightimport`` is installed first, so that the ``kubernetes`` package's
loaders come without its generated API client (about 20 MB resident).
"""

from brigade_cr.stores.kube import lightimport

lightimport.install()
