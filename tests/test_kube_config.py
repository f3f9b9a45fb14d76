"""
Tests for ``brigade_cr.stores.kube.config``: reading kubeconfig files and the
in-cluster service account, the lookup order, and the namespace rule.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import KubeConfigMerger, load_kube_config

from brigade_cr.stores.kube.config import (
    BearerToken,
    BearerTokenFile,
    ExecPlugin,
    KubeConfig,
    KubeConfigError,
    NoCredentials,
    in_cluster_config,
    load_kubeconfig,
    namespace_default,
    resolve_config,
)

SECRET_TOKEN = "s3cr3t-token-value-never-logged"
CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nKEY-MATERIAL-NEVER-LOGGED\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    clusters: dict[str, dict[str, Any]],
    users: dict[str, dict[str, Any]],
    contexts: dict[str, dict[str, Any]],
    current: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
    }
    if current is not None:
        document["current-context"] = current
    return document


def write(path: Path, document: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return str(path)


def simple(
    cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None, namespace: str | None = None
) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    return kubeconfig(
        {"c": cluster if cluster is not None else {"server": "https://k8s.example:6443"}},
        {"u": user if user is not None else {}},
        {"ctx": context},
        current="ctx",
    )


# -- clusters -----------------------------------------------------------------


def test_server_and_ca_data(tmp_path: Path) -> None:
    """certificate-authority-data is decoded; the source names file and context."""
    path = write(
        tmp_path / "config",
        simple({"server": "https://10.0.0.1:6443", "certificate-authority-data": b64(CA)}),
    )
    config = load_kubeconfig(path)
    assert config.server == "https://10.0.0.1:6443"
    assert config.ca_pem == CA
    assert config.insecure_skip_tls_verify is False
    assert config.tls_server_name is None
    assert config.source == f"kubeconfig {path} context ctx"
    assert config.in_cluster is False
    assert config.host == "10.0.0.1"
    assert config.verify_name == "10.0.0.1"


def test_ca_file_relative_to_kubeconfig(tmp_path: Path) -> None:
    """A relative certificate-authority is resolved against the kubeconfig's directory."""
    (tmp_path / "kube" / "pki").mkdir(parents=True)
    (tmp_path / "kube" / "pki" / "ca.crt").write_bytes(CA)
    path = write(
        tmp_path / "kube" / "config",
        simple({"server": "https://k:6443", "certificate-authority": "pki/ca.crt"}),
    )
    assert load_kubeconfig(path).ca_pem == CA


def test_ca_file_absolute(tmp_path: Path) -> None:
    """An absolute certificate-authority path is read as is."""
    (tmp_path / "ca.pem").write_bytes(CA)
    path = write(
        tmp_path / "sub" / "config",
        simple({"server": "https://k:6443", "certificate-authority": str(tmp_path / "ca.pem")}),
    )
    assert load_kubeconfig(path).ca_pem == CA


def test_ca_data_overrides_file(tmp_path: Path) -> None:
    """With both forms, the data form wins (client-go behaviour)."""
    path = write(
        tmp_path / "config",
        simple(
            {
                "server": "https://k:6443",
                "certificate-authority": "missing.crt",
                "certificate-authority-data": b64(CA),
            }
        ),
    )
    assert load_kubeconfig(path).ca_pem == CA


def test_missing_ca_file(tmp_path: Path) -> None:
    """An unreadable CA file is a KubeConfigError naming the kubeconfig, context and file (the library's words)."""
    path = write(tmp_path / "config", simple({"server": "https://k:6443", "certificate-authority": "nope.crt"}))
    with pytest.raises(KubeConfigError) as raised:
        load_kubeconfig(path)
    assert str(raised.value) == f"kubeconfig {path} context 'ctx': File does not exist: {tmp_path / 'nope.crt'}"


def test_insecure_and_server_name(tmp_path: Path) -> None:
    """insecure-skip-tls-verify and tls-server-name are read."""
    path = write(
        tmp_path / "config",
        simple(
            {
                "server": "https://127.0.0.1:6443",
                "insecure-skip-tls-verify": True,
                "tls-server-name": "kubernetes.default.svc",
            }
        ),
    )
    config = load_kubeconfig(path)
    assert config.insecure_skip_tls_verify is True
    assert config.ca_pem is None
    assert config.tls_server_name == "kubernetes.default.svc"
    assert config.verify_name == "kubernetes.default.svc"


def test_insecure_with_ca_refused(tmp_path: Path) -> None:
    """insecure-skip-tls-verify with a CA is refused, as kubectl refuses it."""
    path = write(
        tmp_path / "config",
        simple(
            {
                "server": "https://k:6443",
                "insecure-skip-tls-verify": True,
                "certificate-authority-data": b64(CA),
            }
        ),
    )
    with pytest.raises(KubeConfigError, match="insecure-skip-tls-verify"):
        load_kubeconfig(path)


def test_ipv6_server_host(tmp_path: Path) -> None:
    """An IPv6 server URL's host is the bare address."""
    path = write(tmp_path / "config", simple({"server": "https://[fd00::1]:6443"}))
    config = load_kubeconfig(path)
    assert config.server == "https://[fd00::1]:6443"
    assert config.host == "fd00::1"


@pytest.mark.parametrize("server", ["", "k8s.example:6443", "ftp://k8s.example", "https://user:pw@k8s.example"])
def test_bad_server(tmp_path: Path, server: str) -> None:
    """A missing server, or one that is not a plain http(s) URL, is refused."""
    path = write(tmp_path / "config", simple({"server": server}))
    with pytest.raises(KubeConfigError) as raised:
        load_kubeconfig(path)
    assert "pw@" not in str(raised.value)


def test_proxy_url_refused(tmp_path: Path) -> None:
    """proxy-url is not supported and says so rather than being ignored."""
    path = write(tmp_path / "config", simple({"server": "https://k", "proxy-url": "http://p:3128"}))
    with pytest.raises(KubeConfigError, match="proxy-url"):
        load_kubeconfig(path)


# -- users ----------------------------------------------------------------------


def test_client_certificate_data(tmp_path: Path) -> None:
    """client-certificate-data and client-key-data are decoded."""
    path = write(
        tmp_path / "config",
        simple(user={"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}),
    )
    config = load_kubeconfig(path)
    assert config.client_cert_pem == CERT
    assert config.client_key_pem == KEY
    assert config.credentials == NoCredentials()
    assert "KEY-MATERIAL" not in repr(config)


def test_client_certificate_files(tmp_path: Path) -> None:
    """client-certificate and client-key files are read, relative to the kubeconfig."""
    (tmp_path / "u.crt").write_bytes(CERT)
    (tmp_path / "u.key").write_bytes(KEY)
    path = write(tmp_path / "config", simple(user={"client-certificate": "u.crt", "client-key": "u.key"}))
    config = load_kubeconfig(path)
    assert (config.client_cert_pem, config.client_key_pem) == (CERT, KEY)


def test_client_certificate_without_key(tmp_path: Path) -> None:
    """A certificate without its key is refused."""
    path = write(tmp_path / "config", simple(user={"client-certificate-data": b64(CERT)}))
    with pytest.raises(KubeConfigError, match="together"):
        load_kubeconfig(path)


def test_static_token(tmp_path: Path) -> None:
    """A token becomes BearerToken, and never appears in repr."""
    path = write(tmp_path / "config", simple(user={"token": SECRET_TOKEN}))
    config = load_kubeconfig(path)
    assert config.credentials == BearerToken(SECRET_TOKEN)
    assert SECRET_TOKEN not in repr(config)


def test_token_file(tmp_path: Path) -> None:
    """tokenFile becomes BearerTokenFile, resolved against the kubeconfig's directory."""
    path = write(tmp_path / "config", simple(user={"tokenFile": "tok"}))
    assert load_kubeconfig(path).credentials == BearerTokenFile(str(tmp_path / "tok"))


def test_token_file_with_token_fallback(tmp_path: Path) -> None:
    """tokenFile wins over token, which is kept as the fallback (client-go behaviour)."""
    path = write(tmp_path / "config", simple(user={"tokenFile": "/t", "token": SECRET_TOKEN}))
    config = load_kubeconfig(path)
    assert config.credentials == BearerTokenFile("/t", SECRET_TOKEN)
    assert SECRET_TOKEN not in repr(config)


def test_exec_plugin(tmp_path: Path) -> None:
    """
    An exec stanza becomes the library's ExecProvider: command and args, env
    on top of the process environment, the kubeconfig's directory as its
    working directory (so a relative command with a slash resolves there),
    and the cluster for provideClusterInfo; nothing secret in repr.
    """
    path = write(
        tmp_path / "config",
        simple(
            user={
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "./bin/get-token",
                    "args": ["--cluster", "c1"],
                    "env": [{"name": "SECRET_ENV", "value": SECRET_TOKEN}],
                    "installHint": "install get-token",
                    "interactiveMode": "Never",
                    "provideClusterInfo": True,
                }
            }
        ),
    )
    config = load_kubeconfig(path)
    credentials = config.credentials
    assert isinstance(credentials, ExecPlugin)
    assert credentials.command == "./bin/get-token"
    provider = credentials.provider
    assert isinstance(provider, ExecProvider)
    assert provider.api_version == "client.authentication.k8s.io/v1"
    assert provider.args == ["./bin/get-token", "--cluster", "c1"]
    assert provider.cwd == str(tmp_path)
    assert provider.env["SECRET_ENV"] == SECRET_TOKEN
    assert provider.env["PATH"] == os.environ["PATH"]
    assert provider.cluster.value == {"server": "https://k8s.example:6443"}
    assert SECRET_TOKEN not in repr(config)


def test_exec_bare_command_kept(tmp_path: Path) -> None:
    """A bare command name is left for Popen's PATH lookup; without provideClusterInfo no cluster is passed."""
    path = write(
        tmp_path / "config",
        simple(user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws"}}),
    )
    credentials = load_kubeconfig(path).credentials
    assert isinstance(credentials, ExecPlugin)
    assert credentials.command == "aws"
    assert credentials.provider.args == ["aws"]
    assert credentials.provider.cluster is None


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "interactiveMode": "Always"}, "Always"),
        ({"apiVersion": "client.authentication.k8s.io/v1", "command": "x"}, "interactiveMode is required"),
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}, "not supported"),
        ({"apiVersion": "client.authentication.k8s.io/v1beta1"}, "no command"),
    ],
)
def test_exec_refused(tmp_path: Path, spec: dict[str, Any], match: str) -> None:
    """An exec plugin that cannot run in a daemon or is malformed is refused at load time."""
    path = write(tmp_path / "config", simple(user={"exec": spec}))
    with pytest.raises(KubeConfigError, match=match):
        load_kubeconfig(path)


def test_exec_with_token_refused(tmp_path: Path) -> None:
    """exec cannot be combined with a token; the error does not echo the token."""
    path = write(
        tmp_path / "config",
        simple(
            user={
                "token": SECRET_TOKEN,
                "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "x"},
            }
        ),
    )
    with pytest.raises(KubeConfigError) as raised:
        load_kubeconfig(path)
    assert SECRET_TOKEN not in str(raised.value)


@pytest.mark.parametrize(
    "user, match",
    [
        ({"auth-provider": {"name": "gcp"}}, "auth-provider"),
        ({"username": "admin", "password": SECRET_TOKEN}, "basic"),
        (
            {"client-certificate-data": "%%%", "client-key-data": b64(KEY)},
            "client-certificate-data is not valid base64",
        ),
    ],
)
def test_unsupported_user(tmp_path: Path, user: dict[str, Any], match: str) -> None:
    """Unsupported or malformed users are refused without echoing any value."""
    path = write(tmp_path / "config", simple(user=user))
    with pytest.raises(KubeConfigError, match=match) as raised:
        load_kubeconfig(path)
    assert SECRET_TOKEN not in str(raised.value)
    assert "%%%" not in str(raised.value)


# -- contexts and files ---------------------------------------------------------


def two_contexts() -> dict[str, Any]:
    return kubeconfig(
        {"a": {"server": "https://a:6443"}, "b": {"server": "https://b:6443"}},
        {"ua": {"token": "token-a"}, "ub": {"token": "token-b"}},
        {"ctx-a": {"cluster": "a", "user": "ua", "namespace": "ns-a"}, "ctx-b": {"cluster": "b", "user": "ub"}},
        current="ctx-a",
    )


def test_current_context(tmp_path: Path) -> None:
    """Without a context name, current-context is used, with its namespace."""
    config = load_kubeconfig(write(tmp_path / "config", two_contexts()))
    assert config.server == "https://a:6443"
    assert config.credentials == BearerToken("token-a")
    assert config.namespace == "ns-a"


def test_named_context(tmp_path: Path) -> None:
    """A named context overrides current-context."""
    path = write(tmp_path / "config", two_contexts())
    config = load_kubeconfig(path, "ctx-b")
    assert config.server == "https://b:6443"
    assert config.credentials == BearerToken("token-b")
    assert config.namespace is None
    assert config.source == f"kubeconfig {path} context ctx-b"


def test_missing_context(tmp_path: Path) -> None:
    """An unknown context is named in the error."""
    path = write(tmp_path / "config", two_contexts())
    with pytest.raises(KubeConfigError, match="no context 'ctx-c'"):
        load_kubeconfig(path, "ctx-c")


def test_no_current_context(tmp_path: Path) -> None:
    """A file with no current-context needs a context name."""
    document = two_contexts()
    del document["current-context"]
    with pytest.raises(KubeConfigError, match="no current-context"):
        load_kubeconfig(write(tmp_path / "config", document))


def test_missing_cluster_and_user(tmp_path: Path) -> None:
    """A context naming an undefined cluster or user is an error naming it; secrets stay out."""
    document = kubeconfig(
        {"c": {"server": "https://c"}},
        {"u": {"token": SECRET_TOKEN}},
        {"no-cluster": {"cluster": "gone", "user": "u"}, "no-user": {"cluster": "c", "user": "nobody"}},
        current="no-cluster",
    )
    path = write(tmp_path / "config", document)
    with pytest.raises(KubeConfigError, match="cluster 'gone'") as raised:
        load_kubeconfig(path)
    assert SECRET_TOKEN not in str(raised.value)
    with pytest.raises(KubeConfigError, match="user 'nobody'") as raised:
        load_kubeconfig(path, "no-user")
    assert SECRET_TOKEN not in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    """A kubeconfig that does not exist is an error naming it."""
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_kubeconfig(str(tmp_path / "nope"))


def test_unreadable_file(tmp_path: Path) -> None:
    """A kubeconfig that cannot be read (a directory here) is an error naming it."""
    (tmp_path / "dir").mkdir()
    with pytest.raises(KubeConfigError, match="cannot read"):
        load_kubeconfig(str(tmp_path / "dir"))


def test_invalid_yaml(tmp_path: Path) -> None:
    """Invalid YAML is reported with a line number, not the file's content."""
    path = tmp_path / "config"
    path.write_text(f"users:\n- name: u\n  user: {{token: {SECRET_TOKEN}\n")
    with pytest.raises(KubeConfigError, match="not valid YAML") as raised:
        load_kubeconfig(str(path))
    assert SECRET_TOKEN not in str(raised.value)


def test_kubeconfig_list_merge(tmp_path: Path) -> None:
    """
    A KUBECONFIG list is merged: missing files skipped, the first
    current-context and first definition of each name win, and each entry's
    relative paths resolve against its own file.
    """
    (tmp_path / "two" / "ca.crt").parent.mkdir()
    (tmp_path / "two" / "ca.crt").write_bytes(CA)
    first = write(
        tmp_path / "one" / "config",
        kubeconfig({}, {"u": {"token": "first-token"}}, {"ctx": {"cluster": "c", "user": "u"}}, current="ctx"),
    )
    second = write(
        tmp_path / "two" / "config",
        kubeconfig(
            {"c": {"server": "https://second:6443", "certificate-authority": "ca.crt"}},
            {"u": {"token": "second-token"}},
            {"ctx": {"cluster": "other", "user": "u"}},
            current="other",
        ),
    )
    listed = os.pathsep.join([str(tmp_path / "missing"), first, second])
    config = load_kubeconfig(listed)
    assert config.server == "https://second:6443"
    assert config.ca_pem == CA
    assert config.credentials == BearerToken("first-token")
    assert config.source == f"kubeconfig {listed} context ctx"
    # Why the current-context is chosen here: the library's merger keeps the last file's.
    assert KubeConfigMerger(listed).config.value["current-context"] == "other"


def test_kubeconfig_list_user_certificate_relative_to_its_file(tmp_path: Path) -> None:
    """
    A user's relative client-certificate path resolves against the file that
    defines the user, as kubectl resolves it. The library alone resolves it
    against the cluster's file (shown here), hence the hand-written fix-up.
    """
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "client.crt").write_bytes(CERT)
    (tmp_path / "users" / "client.key").write_bytes(KEY)
    users = write(
        tmp_path / "users" / "config",
        kubeconfig({}, {"u": {"client-certificate": "client.crt", "client-key": "client.key"}}, {}),
    )
    clusters = write(
        tmp_path / "clusters" / "config",
        kubeconfig({"c": {"server": "https://k:6443"}}, {}, {"ctx": {"cluster": "c", "user": "u"}}, current="ctx"),
    )
    listed = os.pathsep.join([clusters, users])
    config = load_kubeconfig(listed)
    assert (config.client_cert_pem, config.client_key_pem) == (CERT, KEY)
    with pytest.raises(ConfigException, match="File does not exist"):
        load_kube_config(config_file=listed, client_configuration=Configuration(), persist_config=False)


# -- in-cluster -------------------------------------------------------------------


def service_account(directory: Path, namespace: str | None = "brigade") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(SECRET_TOKEN)
    (directory / "ca.crt").write_bytes(CA)
    if namespace is not None:
        (directory / "namespace").write_text(namespace + "\n")
    return str(directory)


IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster(tmp_path: Path) -> None:
    """The service account gives server, CA, a re-read token file and the namespace."""
    sa_dir = service_account(tmp_path / "sa")
    config = in_cluster_config(IN_CLUSTER_ENV, sa_dir)
    assert config == KubeConfig(
        server="https://10.96.0.1:443",
        ca_pem=CA,
        credentials=BearerTokenFile(os.path.join(sa_dir, "token")),
        namespace="brigade",
        source="in-cluster",
        in_cluster=True,
    )


def test_in_cluster_ipv6(tmp_path: Path) -> None:
    """An IPv6 service host is bracketed in the URL."""
    sa_dir = service_account(tmp_path / "sa")
    config = in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, sa_dir)
    assert config is not None
    assert config.server == "https://[fd00::1]:443"
    assert config.host == "fd00::1"


@pytest.mark.parametrize("environ", [{}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, {"KUBERNETES_SERVICE_PORT": "443"}])
def test_not_in_cluster(tmp_path: Path, environ: dict[str, str]) -> None:
    """Without both service variables there is no in-cluster config."""
    assert in_cluster_config(environ, service_account(tmp_path / "sa")) is None


def test_in_cluster_without_token(tmp_path: Path) -> None:
    """Without the token file there is no in-cluster config."""
    (tmp_path / "sa").mkdir()
    assert in_cluster_config(IN_CLUSTER_ENV, str(tmp_path / "sa")) is None


def test_in_cluster_without_namespace(tmp_path: Path) -> None:
    """A missing namespace file means no namespace."""
    sa_dir = service_account(tmp_path / "sa", namespace=None)
    config = in_cluster_config(IN_CLUSTER_ENV, sa_dir)
    assert config is not None
    assert (config.ca_pem, config.namespace) == (CA, None)


def test_in_cluster_without_ca(tmp_path: Path) -> None:
    """A missing ca.crt is refused, as the library's InClusterConfigLoader refuses it (no silent platform roots)."""
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(SECRET_TOKEN)
    with pytest.raises(KubeConfigError) as raised:
        in_cluster_config(IN_CLUSTER_ENV, str(sa_dir))
    assert str(raised.value) == f"in-cluster service account {sa_dir}: Service certification file does not exist."


def test_in_cluster_empty_token(tmp_path: Path) -> None:
    """An empty token file is refused at start-up with the library's words."""
    sa_dir = service_account(tmp_path / "sa")
    (Path(sa_dir) / "token").write_text("")
    with pytest.raises(KubeConfigError) as raised:
        in_cluster_config(IN_CLUSTER_ENV, sa_dir)
    assert str(raised.value) == f"in-cluster service account {sa_dir}: Token file exists but empty."


def test_library_in_cluster_refresh_cannot_reread_after_401(tmp_path: Path) -> None:
    """
    Why FileToken is hand-written: the library's in-cluster refresh hook
    re-reads the token only once a wall-clock minute has passed since the
    last read, so after a 401 (a rotated projected token) it still hands out
    the old one; FileToken re-reads on invalidate().
    """
    sa_dir = service_account(tmp_path / "sa")
    configuration = Configuration()
    InClusterConfigLoader(
        os.path.join(sa_dir, "token"), os.path.join(sa_dir, "ca.crt"), environ=IN_CLUSTER_ENV
    ).load_and_set(configuration)
    (Path(sa_dir) / "token").write_text("rotated")
    assert configuration.refresh_api_key_hook is not None
    configuration.refresh_api_key_hook(configuration)
    assert configuration.api_key["BearerToken"] == "bearer " + SECRET_TOKEN


def test_library_reads_token_file_once(tmp_path: Path) -> None:
    """
    Why a tokenFile is a FileToken: the library reads tokenFile once at load
    and its refresh hook (without an exec expiry) never reads it again.
    """
    token = tmp_path / "token"
    token.write_text("first")
    path = write(tmp_path / "config", simple(user={"tokenFile": str(token)}))
    configuration = Configuration()
    load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
    token.write_text("second")
    assert configuration.refresh_api_key_hook is not None
    configuration.refresh_api_key_hook(configuration)
    assert configuration.api_key["BearerToken"] == "Bearer first"
    assert load_kubeconfig(path).credentials == BearerTokenFile(str(token))


# -- resolve_config -----------------------------------------------------------------


def test_resolve_explicit_first(tmp_path: Path) -> None:
    """--kubeconfig wins over in-cluster, KUBECONFIG and ~/.kube/config."""
    explicit = write(tmp_path / "explicit", simple({"server": "https://explicit"}))
    env_file = write(tmp_path / "env", simple({"server": "https://env"}))
    home = tmp_path / "home"
    write(home / ".kube" / "config", simple({"server": "https://home"}))
    environ = dict(IN_CLUSTER_ENV, KUBECONFIG=env_file)
    sa_dir = service_account(tmp_path / "sa")
    config = resolve_config(explicit, None, environ, str(home), sa_dir)
    assert config is not None and config.server == "https://explicit"


def test_resolve_explicit_missing(tmp_path: Path) -> None:
    """A --kubeconfig that does not exist is an error, not a fall-through."""
    with pytest.raises(KubeConfigError, match="does not exist"):
        resolve_config(str(tmp_path / "nope"), None, {}, str(tmp_path), str(tmp_path / "sa"))


def test_resolve_in_cluster_second(tmp_path: Path) -> None:
    """In a pod, the service account wins over KUBECONFIG and ~/.kube/config."""
    env_file = write(tmp_path / "env", simple({"server": "https://env"}))
    home = tmp_path / "home"
    write(home / ".kube" / "config", simple({"server": "https://home"}))
    environ = dict(IN_CLUSTER_ENV, KUBECONFIG=env_file)
    config = resolve_config(None, None, environ, str(home), service_account(tmp_path / "sa"))
    assert config is not None and config.in_cluster and config.server == "https://10.96.0.1:443"


def test_resolve_kubeconfig_env_third(tmp_path: Path) -> None:
    """KUBECONFIG wins over ~/.kube/config; service variables without a token are not in-cluster."""
    env_file = write(tmp_path / "env", simple({"server": "https://env"}))
    home = tmp_path / "home"
    write(home / ".kube" / "config", simple({"server": "https://home"}))
    environ = dict(IN_CLUSTER_ENV, KUBECONFIG=env_file)
    config = resolve_config(None, None, environ, str(home), str(tmp_path / "no-sa"))
    assert config is not None and config.server == "https://env"


def test_resolve_kubeconfig_env_none_exist(tmp_path: Path) -> None:
    """A KUBECONFIG whose files are all missing is an error (kubectl does not fall back either)."""
    home = tmp_path / "home"
    write(home / ".kube" / "config", simple({"server": "https://home"}))
    with pytest.raises(KubeConfigError, match="KUBECONFIG"):
        resolve_config(None, None, {"KUBECONFIG": str(tmp_path / "nope")}, str(home), str(tmp_path / "sa"))


def test_resolve_home_fourth(tmp_path: Path) -> None:
    """~/.kube/config is used when nothing else is configured, with the context asked for."""
    home = tmp_path / "home"
    write(home / ".kube" / "config", two_contexts())
    config = resolve_config(None, "ctx-b", {}, str(home), str(tmp_path / "sa"))
    assert config is not None and config.server == "https://b:6443"


def test_resolve_nothing(tmp_path: Path) -> None:
    """With no configuration anywhere, the answer is None (the local backend)."""
    assert resolve_config(None, None, {}, str(tmp_path), str(tmp_path / "sa")) is None


def test_resolve_never_runs_exec(tmp_path: Path) -> None:
    """Resolving a config with an exec plugin does not run it."""
    marker = tmp_path / "ran"
    script = tmp_path / "plugin.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    path = write(
        tmp_path / "config",
        simple(
            user={
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": str(script),
                    "interactiveMode": "Never",
                }
            }
        ),
    )
    config = resolve_config(path, None, {}, str(tmp_path), str(tmp_path / "sa"))
    assert config is not None and isinstance(config.credentials, ExecPlugin)
    assert not marker.exists()


# -- namespace ----------------------------------------------------------------------


IN_CLUSTER = KubeConfig(server="https://10.96.0.1:443", namespace="pod-ns", source="in-cluster", in_cluster=True)
FROM_FILE = KubeConfig(server="https://k", namespace="context-ns", source="kubeconfig x context y")


@pytest.mark.parametrize(
    "option, environ, config, expected",
    [
        ("opt", {"BRIGADE_NAMESPACE": "env"}, IN_CLUSTER, "opt"),
        (None, {"BRIGADE_NAMESPACE": "env"}, IN_CLUSTER, "env"),
        ("", {"BRIGADE_NAMESPACE": "env"}, IN_CLUSTER, "env"),
        (None, {}, IN_CLUSTER, "pod-ns"),
        (None, {"BRIGADE_NAMESPACE": ""}, IN_CLUSTER, "pod-ns"),
        (None, {}, FROM_FILE, "default"),
        (None, {}, None, "default"),
    ],
)
def test_namespace_precedence(
    option: str | None, environ: dict[str, str], config: KubeConfig | None, expected: str
) -> None:
    """--namespace, then BRIGADE_NAMESPACE, then the in-cluster file, then default; never the context's."""
    assert namespace_default(option, environ, config) == expected
