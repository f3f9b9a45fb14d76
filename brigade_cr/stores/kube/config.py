"""
Where the Kubernetes API is and how to authenticate to it.

(A little over 500 lines because most of it is the refusals and fix-ups
around the ``kubernetes`` loaders, each with its reason, listed in
docs/architecture.md "Why some Kubernetes code is hand-written".)

Everything here is synchronous and runs once, in ``makeService``, before the
reactor starts. The reading is the ``kubernetes`` package's:
``KubeConfigMerger`` merges a ``KUBECONFIG`` list, ``KubeConfigLoader``
resolves a context into a ``kubernetes.client.Configuration`` (server,
``certificate-authority``, client certificate and key, ``-data`` forms,
``insecure-skip-tls-verify``, ``tls-server-name``, a static ``token``), and
``InClusterConfigLoader`` does the same for a pod's service account. This
module turns that ``Configuration`` into a frozen ``KubeConfig`` (which
``tls.py`` makes a TLS policy of, and ``credentials.py`` a token source).

What is hand-written, and why (``docs/architecture.md``, "Why some
Kubernetes code is hand-written"): the checks that refuse what brigade-cr
does not support (``auth-provider``, basic authentication, ``proxy-url``,
an interactive exec plugin); the ``current-context`` of a list, which
the library takes from the *last* file that sets it where kubectl takes the
first; relative client-certificate paths, which the library resolves
against the cluster's file; a ``tokenFile``, which the library reads once
(``credentials.FileToken`` re-reads it); and the exec plugin, whose
``ExecProvider`` is built here and run later in a thread, never at load.
Nothing here talks to the network or runs a credential plugin.

The lookup order is ``resolve_config``'s docstring; the namespace rule is
``namespace_default``'s.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any, Mapping, Union
from urllib.parse import urlsplit

import attrs
import yaml
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import ConfigNode, KubeConfigLoader, KubeConfigMerger

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
    A client-go exec credential plugin (``users[].user.exec``): ``provider``
    is the ``kubernetes`` package's ``ExecProvider`` for it (its ``run()``
    blocks: ``credentials.ExecToken`` calls it in a thread). ``command`` is
    the configured command, for messages.
    """

    command: str
    provider: Any = attrs.field(repr=False, eq=False)


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
    ``context``, or of the ``current-context`` when ``context`` is ``None``.

    A list is merged by the library's ``KubeConfigMerger``, as kubectl
    merges it: paths that do not exist are skipped; for each named cluster,
    user and context the first file that defines it wins; relative file
    names in an entry are resolved against the directory of the file that
    holds it. The ``current-context`` is the first file's that sets one (as
    kubectl; the library would take the last). Data fields
    (``certificate-authority-data``, ...) override their file forms.

    Raises ``KubeConfigError`` when no file exists, a file cannot be read or
    parsed, or the context, its cluster or its user is missing or unusable.
    """
    paths = [p for p in path.split(os.pathsep) if p]
    existing = [p for p in paths if os.path.exists(os.path.expanduser(p))]
    if not existing:
        raise KubeConfigError(f"kubeconfig {path} does not exist")
    merger = _merge(path, existing)
    merged = merger.config
    name = context or _first_current_context(merger)
    if not name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context; name a context")
    try:
        ctx_node = merged["contexts"].get_with_name(name, safe=True)
        if ctx_node is None:
            raise KubeConfigError(f"kubeconfig {path} has no context {name!r}")
        ctx = ctx_node["context"]
        cluster_name = ctx.safe_get("cluster")
        user_name = ctx.safe_get("user")
        cluster_node = merged["clusters"].get_with_name(cluster_name, safe=True) if cluster_name else None
        if cluster_node is None:
            raise KubeConfigError(
                f"kubeconfig {path}: context {name!r} names cluster {cluster_name!r}, which is not defined"
            )
        user_node = merged["users"].get_with_name(user_name, safe=True) if user_name else None
        if user_name and user_node is None:
            raise KubeConfigError(f"kubeconfig {path}: context {name!r} names user {user_name!r}, which is not defined")
    except ConfigException as e:
        raise KubeConfigError(f"kubeconfig {path}: {_library_words(e)}") from None
    cluster = _mapping(cluster_node.value.get("cluster"), f"kubeconfig {path} cluster {cluster_name!r}")
    user = _mapping(user_node.value.get("user") if user_node else {}, f"kubeconfig {path} user {user_name!r}")
    _check_cluster(cluster, f"kubeconfig {path} cluster {cluster_name!r}")
    user_where = f"kubeconfig {path} user {user_name!r}"
    user_dir = os.path.dirname(os.path.abspath(user_node.path)) if user_node is not None and user_node.path else ""
    credentials = _check_user(user, user_dir, user_where)
    loadable = _for_loader(merged, user_name, user, user_dir)
    configuration = Configuration()
    try:
        KubeConfigLoader(config_dict=loadable, active_context=name, config_base_path=None).load_and_set(configuration)
    except ConfigException as e:
        raise KubeConfigError(f"kubeconfig {path} context {name!r}: {_library_words(e)}") from None
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"kubeconfig {path} context {name!r}: a -data field is not valid base64") from None
    except OSError as e:
        raise KubeConfigError(
            f"kubeconfig {path} context {name!r}: cannot read {e.filename}: {e.strerror or type(e).__name__}"
        ) from None
    if isinstance(credentials, NoCredentials):
        token = _bearer(configuration)
        if token:
            credentials = BearerToken(token)
    if isinstance(credentials, _PendingExec):
        credentials = ExecPlugin(
            credentials.command,
            ExecProvider(ConfigNode("exec", credentials.spec), user_dir, cluster_node["cluster"]),
        )
    namespace = ctx.safe_get("namespace") or None
    where = f"kubeconfig {path} context {name}"
    return _from_configuration(
        configuration, credentials, str(namespace) if namespace else None, where, in_cluster=False
    )


def in_cluster_config(environ: Mapping[str, str], sa_dir: str = DEFAULT_SA_DIR) -> KubeConfig | None:
    """
    The configuration a pod gets from its service account, read by the
    library's ``InClusterConfigLoader``, or ``None`` when not running in a
    cluster: as client-go, that is when ``KUBERNETES_SERVICE_HOST`` or
    ``KUBERNETES_SERVICE_PORT`` is unset or empty, or the token file
    ``<sa_dir>/token`` does not exist. An IPv6 service host is bracketed.

    The token is a ``BearerTokenFile`` (re-read, since the kubelet rotates
    it). ``ca.crt`` is the trust root. The namespace comes from
    ``<sa_dir>/namespace``.

    Raises ``KubeConfigError`` when the token or ``ca.crt`` is missing or
    empty, or ``namespace`` exists but cannot be read.
    """
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    token_path = os.path.join(sa_dir, "token")
    if not host or not port or not os.path.exists(token_path):
        return None
    configuration = Configuration()
    loader = InClusterConfigLoader(
        token_filename=token_path,
        cert_filename=os.path.join(sa_dir, "ca.crt"),
        try_refresh_token=False,
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    )
    try:
        loader.load_and_set(configuration)
    except ConfigException as e:
        raise KubeConfigError(f"in-cluster service account {sa_dir}: {_library_words(e)}") from None
    except OSError as e:
        raise KubeConfigError(
            f"in-cluster service account: cannot read {e.filename}: {e.strerror or type(e).__name__}"
        ) from None
    namespace_path = os.path.join(sa_dir, "namespace")
    namespace = None
    if os.path.exists(namespace_path):
        try:
            with open(namespace_path, "rb") as f:
                namespace = f.read().decode("utf-8", "replace").strip() or None
        except OSError as e:
            raise KubeConfigError(
                f"in-cluster namespace file: cannot read {namespace_path}: {e.strerror or type(e).__name__}"
            ) from None
    return _from_configuration(configuration, BearerTokenFile(token_path), namespace, "in-cluster", in_cluster=True)


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
    The Brigade namespace (docs/brigade-v1.md, section 5): the
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


# -- around the library -------------------------------------------------------


@attrs.frozen
class _PendingExec:
    """An exec plugin checked, its ``ExecProvider`` built once the cluster is known."""

    command: str
    spec: Mapping[str, Any] = attrs.field(repr=False)


def _library_words(error: ConfigException) -> str:
    # The library's messages name keys, files and contexts, never values.
    return " ".join(str(error).split()) or "invalid kubeconfig"


def _merge(path: str, existing: list[str]) -> Any:
    try:
        return KubeConfigMerger(os.pathsep.join(existing))
    except yaml.YAMLError as e:
        # The problem mark is a position, never file content.
        mark = getattr(e, "problem_mark", None)
        where = f" {mark.name}" if mark is not None and mark.name else f" {path}"
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeConfigError(f"kubeconfig{where} is not valid YAML{line}") from None
    except ConfigException as e:
        raise KubeConfigError(f"kubeconfig {path}: {_library_words(e)}") from None
    except OSError as e:
        raise KubeConfigError(f"kubeconfig: cannot read {e.filename}: {e.strerror or type(e).__name__}") from None
    except (AttributeError, TypeError, KeyError):
        raise KubeConfigError(f"kubeconfig {path} is not a kubeconfig (a YAML mapping of named entries)") from None


def _first_current_context(merger: Any) -> str | None:
    for file_path in merger.paths:
        document = merger.config_files.get(file_path)
        if isinstance(document, Mapping) and document.get("current-context"):
            return str(document["current-context"])
    return None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KubeConfigError(f"{where} is not a mapping")
    return value


def _flag(entry: Mapping[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise KubeConfigError(f"{where}: {key} must be true or false")


def _check_data(entry: Mapping[str, Any], key: str, where: str) -> None:
    # The library decodes leniently (dropping what is not base64): a typo
    # would surface later as "not a PEM"; say which field at load instead.
    data = entry.get(key)
    if data:
        try:
            base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{where}: {key} is not valid base64") from None


def _check_cluster(cluster: Mapping[str, Any], where: str) -> None:
    _check_data(cluster, "certificate-authority-data", where)
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
    if insecure and (cluster.get("certificate-authority") or cluster.get("certificate-authority-data")):
        # kubectl refuses this combination too.
        raise KubeConfigError(f"{where}: insecure-skip-tls-verify cannot be combined with a certificate authority")


def _check_user(user: Mapping[str, Any], base: str, where: str) -> Credentials | _PendingExec:
    """Refuse what brigade-cr does not support; the credentials the library leaves to us."""
    if user.get("auth-provider"):
        raise KubeConfigError(f"{where}: auth-provider is not supported; use an exec plugin")
    if user.get("username") or user.get("password"):
        raise KubeConfigError(f"{where}: basic authentication is not supported")
    _check_data(user, "client-certificate-data", where)
    _check_data(user, "client-key-data", where)
    has_cert = bool(user.get("client-certificate") or user.get("client-certificate-data"))
    has_key = bool(user.get("client-key") or user.get("client-key-data"))
    if has_cert != has_key:
        raise KubeConfigError(f"{where}: client-certificate and client-key must be given together")
    token = user.get("token") or None
    token_file = user.get("tokenFile") or None
    exec_spec = user.get("exec") or None
    if exec_spec is not None:
        if token or token_file:
            raise KubeConfigError(f"{where}: exec cannot be combined with token or tokenFile")
        return _check_exec(exec_spec, where)
    if token_file:
        path = str(token_file)
        return BearerTokenFile(path if os.path.isabs(path) else os.path.join(base, path), str(token) if token else None)
    return NoCredentials()


def _check_exec(spec: Any, where: str) -> _PendingExec:
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
    if not isinstance(spec.get("args") or [], list):
        raise KubeConfigError(f"{where}: exec args is not a list")
    env_entries = spec.get("env") or []
    if not isinstance(env_entries, list):
        raise KubeConfigError(f"{where}: exec env is not a list")
    for entry in env_entries:
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise KubeConfigError(f"{where}: an exec env entry has no name")
    mode = spec.get("interactiveMode")
    if mode is None and api_version.endswith("/v1"):
        raise KubeConfigError(f"{where}: exec interactiveMode is required for {api_version}")
    if mode is not None and mode not in _INTERACTIVE_MODES:
        raise KubeConfigError(f"{where}: exec interactiveMode {mode!r} is not valid")
    if mode == "Always":
        raise KubeConfigError(
            f"{where}: exec interactiveMode Always needs a terminal; a daemon has none (use Never or IfAvailable)"
        )
    _flag(spec, "provideClusterInfo", where)
    # ExecProvider requires a value for every env entry.
    fixed = dict(spec)
    fixed["env"] = [{"name": str(e["name"]), "value": str(e.get("value") or "")} for e in env_entries]
    return _PendingExec(command, fixed)


_USER_FILES = ("client-certificate", "client-key")


def _for_loader(merged: Any, user_name: str | None, user: Mapping[str, Any], base: str) -> Any:
    """
    The merged configuration as the library should load it: the selected
    user without the parts brigade-cr handles itself (``exec``, ``tokenFile``
    and the ``token`` that falls back behind it), and with its relative
    client-certificate paths made absolute against the user's own file.
    """
    if user_name is None:
        return merged
    trimmed = {k: v for k, v in user.items() if k not in ("exec", "tokenFile")}
    if user.get("tokenFile"):
        trimmed.pop("token", None)
    for key in _USER_FILES:
        value = trimmed.get(key)
        if value and not os.path.isabs(str(value)):
            trimmed[key] = os.path.join(base, str(value))
    users = []
    for node in merged.value["users"]:
        entry = node.value if isinstance(node, ConfigNode) else node
        if entry.get("name") == user_name:
            users.append(
                ConfigNode(
                    getattr(node, "name", "user"), {"name": user_name, "user": trimmed}, getattr(node, "path", None)
                )
            )
        else:
            users.append(node)
    return ConfigNode(merged.name, {**merged.value, "users": users}, merged.path)


def _bearer(configuration: Any) -> str | None:
    value = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    if not value:
        return None
    text = str(value)
    scheme, _, rest = text.partition(" ")
    return rest if scheme.lower() == "bearer" and rest else text


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KubeConfigError(f"{what}: cannot read {path}: {e.strerror or type(e).__name__}") from None


def _from_configuration(
    configuration: Any, credentials: Credentials, namespace: str | None, source: str, in_cluster: bool
) -> KubeConfig:
    """A ``KubeConfig`` from the library's ``Configuration``."""
    return KubeConfig(
        server=str(configuration.host).rstrip("/"),
        ca_pem=_read(configuration.ssl_ca_cert, f"{source}: certificate-authority"),
        insecure_skip_tls_verify=not configuration.verify_ssl,
        tls_server_name=configuration.tls_server_name or None,
        client_cert_pem=_read(configuration.cert_file, f"{source}: client-certificate"),
        client_key_pem=_read(configuration.key_file, f"{source}: client-key"),
        credentials=credentials,
        namespace=namespace,
        source=source,
        in_cluster=in_cluster,
    )
