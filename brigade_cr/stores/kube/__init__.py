"""
The Kubernetes edge of brigade-cr, on treq and Twisted (no blocking client).

- ``config``: find and read the cluster configuration (kubeconfig,
  in-cluster service account), synchronously, before the reactor runs.
- ``credentials``: bearer-token sources (static, re-read file, exec plugin).
- ``tls``: the ``IPolicyForHTTPS`` for the API server.
- ``client``: ``KubeClient``, the few API calls brigade-cr makes (a
  streaming watch among them).
- ``watch``: ``ProjectWatch``, the list-and-watch of project Secrets that
  keeps the gateway's in-memory ``KnownProjects`` up to date.
- ``backend``: ``KubeProjects`` and ``KubeBuilds``, the ``IProjects`` and
  ``IBuilds`` implementations, and ``make_kube_backend``.

Nothing here imports ``twisted.internet.reactor``: the reactor is passed in.
"""
