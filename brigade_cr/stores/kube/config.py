"""
Where the Kubernetes API is and how to authenticate to it.

Everything here is synchronous and runs once, in ``makeService``, before the
reactor starts: it reads a kubeconfig file (parsed with PyYAML, the official
``kubernetes`` package is not needed) or the in-cluster service-account
files, and produces a frozen ``KubeConfig``. Nothing here talks to the
network or runs a credential plugin; ``credentials.py`` turns the
``credentials`` description into a token source later, on the reactor.

The lookup order is ``resolve_config``'s docstring; the namespace rule is
``namespace_default``'s.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from typing import Any, Mapping, Union
from urllib.parse import urlsplit

import attrs
import yaml

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# The ExecCredential API versions client-go still accepts (v1alpha1 is gone).
EXEC_API_VERSIONS = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
)
_INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")


class KubeConfigError(Exception):
    """
    The configuration names a cluster brigade-cr cannot use: a missing or
    unreadable file, a missing context, cluster or user, a malformed field.

    The message names files, contexts and fields, never a token, a key or
    any other credential value.
    """


@attrs.frozen
class NoCredentials:
    """No bearer token: anonymous, or client-certificate authentication only."""


@attrs.frozen
class BearerToken:
    """A bearer token written into the kubeconfig (``token``)."""

    token: str = attrs.field(repr=False)


@attrs.frozen
class BearerTokenFile:
    """
    A bearer token read from ``path`` and re-read periodically
    (``tokenFile``, and the in-cluster service-account token, which the
    kubelet rotates). ``fallback`` is a static ``token`` given alongside, used
    only while the file cannot be read.
    """

    path: str
    fallback: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ExecPlugin:
    """
    A client-go exec credential plugin (``users[].user.exec``).

    ``command`` is resolved against the kubeconfig's directory when it holds a
    path separator and is relative (as client-go does); a bare name is looked
    up on ``PATH`` when the plugin runs. ``env`` values may be secrets and are
    kept out of ``repr``. ``provide_cluster_info`` passes the server and CA to
    the plugin in ``KUBERNETES_EXEC_INFO``.
    """

    api_version: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    install_hint: str | None = None
    interactive_mode: str = "IfAvailable"
    provide_cluster_info: bool = False


Credentials = Union[NoCredentials, BearerToken, BearerTokenFile, ExecPlugin]


@attrs.frozen
class KubeConfig:
    """
    How to reach one Kubernetes API server.

    ``server`` is the base URL (``https://host:port``, possibly with a path
    prefix). ``ca_pem`` is ``None`` to trust the platform's roots.
    ``tls_server_name`` overrides the name the server certificate is checked
    against (and sent as SNI). ``namespace`` is the kubeconfig context's
    namespace, or the in-cluster namespace file's content; ``in_cluster`` says
    which. ``source`` is one human line for the startup log.
    """

    server: str
    ca_pem: bytes | None = attrs.field(default=None, repr=False)
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    client_cert_pem: bytes | None = attrs.field(default=None, repr=False)
    client_key_pem: bytes | None = attrs.field(default=None, repr=False)
    credentials: Credentials = NoCredentials()
    namespace: str | None = None
    source: str = ""
    in_cluster: bool = False

    @property
    def host(self) -> str:
        """The server's host, without IPv6 brackets: ``127.0.0.1``, ``::1``."""
        return urlsplit(self.server).hostname or ""

    @property
    def verify_name(self) -> str:
        """The name (or IP address) the server's certificate must carry."""
        return self.tls_server_name or self.host


def load_kubeconfig(path: str, context: str | None = None) -> KubeConfig:
    """
    Read the kubeconfig file ``path`` (or a ``KUBECONFIG``-style list of
    paths separated by ``os.pathsep``) and return the configuration of
    ``context``, or of the file's ``current-context`` when ``context`` is
    ``None``.

    A list is merged as kubectl merges it: paths that do not exist are
    skipped; for ``current-context`` and for each named cluster, user and
    context, the first file that sets it wins; relative file names in an
    entry are resolved against the directory of the file that holds that
    entry. Data fields (``certificate-authority-data``, ...) override their
    file forms, as in client-go.

    Raises ``KubeConfigError`` when no file exists, a file cannot be read or
    parsed, or the context, its cluster or its user is missing or unusable.
    """
    paths = [p for p in path.split(os.pathsep) if p]
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        raise KubeConfigError(f"kubeconfig {path} does not exist")
    merged = _merge([(p, _read_document(p)) for p in existing])
    name = context or merged.current_context
    if not name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context; name a context")
    if name not in merged.contexts:
        raise KubeConfigError(f"kubeconfig {path} has no context {name!r}")
    ctx_file, ctx = merged.contexts[name]
    cluster_name = ctx.get("cluster")
    user_name = ctx.get("user")
    if not cluster_name or cluster_name not in merged.clusters:
        raise KubeConfigError(
            f"kubeconfig {path}: context {name!r} names cluster {cluster_name!r}, which is not defined"
        )
    cluster_file, cluster = merged.clusters[cluster_name]
    if user_name and user_name not in merged.users:
        raise KubeConfigError(f"kubeconfig {path}: context {name!r} names user {user_name!r}, which is not defined")
    user_file, user = merged.users[user_name] if user_name else (ctx_file, {})
    where = f"kubeconfig {path} context {name}"
    server, ca_pem, insecure, server_name = _cluster(
        cluster,
        os.path.dirname(os.path.abspath(cluster_file)),
        f"kubeconfig {path} cluster {cluster_name!r}",
    )
    cert, key, credentials = _user(
        user,
        os.path.dirname(os.path.abspath(user_file)),
        f"kubeconfig {path} user {user_name!r}",
    )
    namespace = ctx.get("namespace") or None
    return KubeConfig(
        server=server,
        ca_pem=ca_pem,
        insecure_skip_tls_verify=insecure,
        tls_server_name=server_name,
        client_cert_pem=cert,
        client_key_pem=key,
        credentials=credentials,
        namespace=str(namespace) if namespace else None,
        source=where,
    )


def in_cluster_config(environ: Mapping[str, str], sa_dir: str = DEFAULT_SA_DIR) -> KubeConfig | None:
    """
    The configuration a pod gets from its service account, or ``None`` when
    not running in a cluster: as client-go, that is when
    ``KUBERNETES_SERVICE_HOST`` or ``KUBERNETES_SERVICE_PORT`` is unset or the
    token file ``<sa_dir>/token`` does not exist.

    The token is a ``BearerTokenFile`` (re-read, since the kubelet rotates it).
    ``ca.crt`` is the trust root (the platform's roots if it is missing, as
    client-go falls back). The namespace comes from ``<sa_dir>/namespace``.

    Raises ``KubeConfigError`` when ``ca.crt`` or ``namespace`` exists but
    cannot be read.
    """
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    token_path = os.path.join(sa_dir, "token")
    if not host or not port or not os.path.exists(token_path):
        return None
    if _is_ipv6(host):
        host = f"[{host}]"
    ca_path = os.path.join(sa_dir, "ca.crt")
    ca_pem = _read_file(ca_path, "in-cluster CA") if os.path.exists(ca_path) else None
    namespace_path = os.path.join(sa_dir, "namespace")
    namespace = None
    if os.path.exists(namespace_path):
        text = _read_file(namespace_path, "in-cluster namespace file")
        namespace = text.decode("utf-8", "replace").strip() or None
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_pem=ca_pem,
        credentials=BearerTokenFile(token_path),
        namespace=namespace,
        source="in-cluster",
        in_cluster=True,
    )


def resolve_config(
    kubeconfig: str | None,
    context: str | None,
    environ: Mapping[str, str],
    home: str,
    sa_dir: str = DEFAULT_SA_DIR,
) -> KubeConfig | None:
    """
    Find the cluster the gateway should use, in this order:

    1. ``kubeconfig`` (the ``--kubeconfig`` option): must exist, else
       ``KubeConfigError``;
    2. in-cluster, when ``KUBERNETES_SERVICE_HOST`` is set and the
       service-account token file exists (see ``in_cluster_config``);
    3. ``KUBECONFIG`` from ``environ``, a list merged as kubectl merges it.
       When it is set but none of its files exist this is an error, not a
       fall-through (kubectl does not fall back to ``~/.kube/config`` either,
       and a mistyped path must not silently send builds elsewhere);
    4. ``<home>/.kube/config`` if it exists;
    5. ``None``: no cluster configured (the gateway then uses its local
       directory backend).

    ``context`` selects a kubeconfig context (ignored in-cluster).
    Synchronous; never runs an exec plugin or touches the network. Raises
    ``KubeConfigError`` for a configuration that exists but is unusable.
    """
    if kubeconfig:
        if not os.path.exists(kubeconfig):
            raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
        return load_kubeconfig(kubeconfig, context)
    if environ.get("KUBERNETES_SERVICE_HOST"):
        found = in_cluster_config(environ, sa_dir)
        if found is not None:
            return found
    listed = environ.get("KUBECONFIG", "")
    if listed.strip(os.pathsep).strip():
        paths = [p for p in listed.split(os.pathsep) if p]
        if not any(os.path.exists(p) for p in paths):
            raise KubeConfigError(f"KUBECONFIG is set ({listed}) but none of its files exist")
        return load_kubeconfig(listed, context)
    default = os.path.join(home, ".kube", "config")
    if os.path.exists(default):
        return load_kubeconfig(default, context)
    return None


def namespace_default(option: str | None, environ: Mapping[str, str], config: KubeConfig | None) -> str:
    """
    The Brigade namespace (brigade-v1-contract.md section 3): the
    ``--namespace`` option, else ``BRIGADE_NAMESPACE``, else the in-cluster
    service-account namespace file, else ``default``.

    A kubeconfig context's ``namespace`` is deliberately *not* used: the
    contract does not list it, and a developer's context namespace silently
    redirecting builds away from the namespace the Brigade controller watches
    would lose them. Pass ``--namespace`` instead.
    """
    if option:
        return option
    if environ.get("BRIGADE_NAMESPACE"):
        return environ["BRIGADE_NAMESPACE"]
    if config is not None and config.in_cluster and config.namespace:
        return config.namespace
    return "default"


# -- kubeconfig parsing ------------------------------------------------------


@attrs.define
class _Merged:
    current_context: str | None = None
    clusters: dict[str, tuple[str, Mapping[str, Any]]] = attrs.Factory(dict)
    users: dict[str, tuple[str, Mapping[str, Any]]] = attrs.Factory(dict)
    contexts: dict[str, tuple[str, Mapping[str, Any]]] = attrs.Factory(dict)


def _read_file(path: str, what: str) -> bytes:
    """The bytes of ``path``; ``KubeConfigError`` naming ``what`` if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KubeConfigError(f"{what}: cannot read {path}: {e.strerror or type(e).__name__}") from None


def _read_document(path: str) -> Mapping[str, Any]:
    raw = _read_file(path, "kubeconfig")
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        # The problem mark is a position, never file content.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML{where}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise KubeConfigError(f"kubeconfig {path} is not a YAML mapping")
    return document


def _merge(documents: list[tuple[str, Mapping[str, Any]]]) -> _Merged:
    merged = _Merged()
    for path, document in documents:
        if merged.current_context is None and document.get("current-context"):
            merged.current_context = str(document["current-context"])
        for section, key, into in (
            ("clusters", "cluster", merged.clusters),
            ("users", "user", merged.users),
            ("contexts", "context", merged.contexts),
        ):
            entries = document.get(section) or []
            if not isinstance(entries, list):
                raise KubeConfigError(f"kubeconfig {path}: {section} is not a list")
            for entry in entries:
                if not isinstance(entry, Mapping) or "name" not in entry:
                    raise KubeConfigError(f"kubeconfig {path}: an entry of {section} has no name")
                name = str(entry["name"])
                body = entry.get(key) or {}
                if not isinstance(body, Mapping):
                    raise KubeConfigError(f"kubeconfig {path}: {section} {name!r} is not a mapping")
                into.setdefault(name, (path, body))
    return merged


def _resolve(base: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _bytes_field(entry: Mapping[str, Any], base: str, where: str, file_key: str) -> bytes | None:
    """``<file_key>-data`` (base64) if present, else the file ``<file_key>``."""
    data = entry.get(file_key + "-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{where}: {file_key}-data is not valid base64") from None
    path = entry.get(file_key)
    if path:
        return _read_file(_resolve(base, str(path)), f"{where}: {file_key}")
    return None


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _flag(entry: Mapping[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise KubeConfigError(f"{where}: {key} must be true or false")


def _cluster(cluster: Mapping[str, Any], base: str, where: str) -> tuple[str, bytes | None, bool, str | None]:
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeConfigError(f"{where} has no server")
    parts = urlsplit(server)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise KubeConfigError(f"{where}: server {server!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise KubeConfigError(f"{where}: server URL must not carry credentials")
    if cluster.get("proxy-url"):
        raise KubeConfigError(f"{where}: proxy-url is not supported")
    insecure = _flag(cluster, "insecure-skip-tls-verify", where)
    ca_pem = _bytes_field(cluster, base, where, "certificate-authority")
    if insecure and ca_pem is not None:
        # kubectl refuses this combination too.
        raise KubeConfigError(f"{where}: insecure-skip-tls-verify cannot be combined with a certificate authority")
    server_name = cluster.get("tls-server-name") or None
    return server, ca_pem, insecure, str(server_name) if server_name else None


def _user(user: Mapping[str, Any], base: str, where: str) -> tuple[bytes | None, bytes | None, Credentials]:
    if user.get("auth-provider"):
        raise KubeConfigError(f"{where}: auth-provider is not supported; use an exec plugin")
    if user.get("username") or user.get("password"):
        raise KubeConfigError(f"{where}: basic authentication is not supported")
    cert = _bytes_field(user, base, where, "client-certificate")
    key = _bytes_field(user, base, where, "client-key")
    if (cert is None) != (key is None):
        raise KubeConfigError(f"{where}: client-certificate and client-key must be given together")
    token = user.get("token") or None
    token_file = user.get("tokenFile") or None
    exec_spec = user.get("exec") or None
    credentials: Credentials
    if exec_spec is not None:
        if token or token_file:
            raise KubeConfigError(f"{where}: exec cannot be combined with token or tokenFile")
        credentials = _exec(exec_spec, base, where)
    elif token_file:
        credentials = BearerTokenFile(_resolve(base, str(token_file)), str(token) if token else None)
    elif token:
        credentials = BearerToken(str(token))
    else:
        credentials = NoCredentials()
    return cert, key, credentials


def _exec(spec: Any, base: str, where: str) -> ExecPlugin:
    if not isinstance(spec, Mapping):
        raise KubeConfigError(f"{where}: exec is not a mapping")
    api_version = str(spec.get("apiVersion") or "")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeConfigError(
            f"{where}: exec apiVersion {api_version!r} is not supported (use one of {', '.join(EXEC_API_VERSIONS)})"
        )
    command = str(spec.get("command") or "")
    if not command:
        raise KubeConfigError(f"{where}: exec has no command")
    if os.sep in command and not os.path.isabs(command):
        command = os.path.join(base, command)
    args = spec.get("args") or []
    if not isinstance(args, list):
        raise KubeConfigError(f"{where}: exec args is not a list")
    env_entries = spec.get("env") or []
    if not isinstance(env_entries, list):
        raise KubeConfigError(f"{where}: exec env is not a list")
    env: list[tuple[str, str]] = []
    for entry in env_entries:
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise KubeConfigError(f"{where}: an exec env entry has no name")
        env.append((str(entry["name"]), str(entry.get("value") or "")))
    mode = spec.get("interactiveMode")
    if mode is None:
        if api_version.endswith("/v1"):
            raise KubeConfigError(f"{where}: exec interactiveMode is required for {api_version}")
        mode = "IfAvailable"
    if mode not in _INTERACTIVE_MODES:
        raise KubeConfigError(f"{where}: exec interactiveMode {mode!r} is not valid")
    if mode == "Always":
        raise KubeConfigError(
            f"{where}: exec interactiveMode Always needs a terminal; a daemon has none (use Never or IfAvailable)"
        )
    hint = spec.get("installHint")
    return ExecPlugin(
        api_version=api_version,
        command=command,
        args=tuple(str(a) for a in args),
        env=tuple(env),
        install_hint=str(hint) if hint else None,
        interactive_mode=str(mode),
        provide_cluster_info=_flag(spec, "provideClusterInfo", where),
    )
