"""The deployment files in etc/ say what the README says they do."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from brigade_cr.tap import Options

ETC = Path(__file__).parent.parent / "etc"


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((ETC / "kubernetes" / name).read_text()) if doc]


def test_rbac_is_least_privilege() -> None:
    """One Role in one namespace: secrets get, list, watch and create, bound to the ServiceAccount, nothing else."""
    documents = {doc["kind"]: doc for doc in _documents("rbac.yaml")}
    assert sorted(documents) == ["Role", "RoleBinding", "ServiceAccount"]
    role = documents["Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create"]}]
    binding = documents["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "brigade-cr"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "brigade-cr", "namespace": "brigade"}]
    assert {doc["metadata"]["namespace"] for doc in documents.values()} == {"brigade"}


def test_deployment_probes_and_spool() -> None:
    """Liveness on /healthz, readiness on /readyz, the spool on a claimed volume, options that parse."""
    documents = {doc["kind"]: doc for doc in _documents("deployment.yaml")}
    assert sorted(documents) == ["Deployment", "PersistentVolumeClaim", "Service"]
    spec = documents["Deployment"]["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    [container] = spec["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    options = Options()
    options.parseOptions(container["args"])
    assert options["spool"] == "/var/lib/brigade-cr/spool"
    assert container["volumeMounts"] == [{"name": "spool", "mountPath": "/var/lib/brigade-cr"}]
    assert documents["Service"]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_systemd_unit_runs_the_plugin() -> None:
    """The unit runs twistd -n --pidfile= brigade-cr with options the plugin accepts."""
    text = (ETC / "systemd" / "brigade-cr.service").read_text()
    exec_start = "".join(
        line.rstrip("\\\n") + " " for line in text[text.index("ExecStart=") :].splitlines(keepends=True)
    )
    exec_start = exec_start[: exec_start.index("Restart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:4] == ["/opt/brigade-cr/bin/twistd", "-n", "--pidfile=", "brigade-cr"]
    options = Options()
    options.parseOptions(argv[4:])
    assert (options["port"], options["backend"], options["spool"]) == (
        "tcp:8000",
        "kube",
        "/var/lib/brigade-cr/spool",
    )


def test_container_image_uses_the_spool() -> None:
    """The container's default command runs the plugin with a spool on its volume."""
    text = (ETC / "Containerfile").read_text()
    entrypoint = json.loads(text[text.index("ENTRYPOINT ") + len("ENTRYPOINT ") :].splitlines()[0])
    command = json.loads(text[text.index("CMD ") + len("CMD ") :].splitlines()[0])
    assert entrypoint == ["twistd", "-n", "--pidfile=", "--logfile=-", "brigade-cr"]
    options = Options()
    options.parseOptions(command)
    assert options["spool"] == "/var/lib/brigade-cr/spool"
    assert "VOLUME /var/lib/brigade-cr" in text
