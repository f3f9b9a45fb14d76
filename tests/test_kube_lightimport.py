"""``stores/kube/lightimport.py``: the loaders without the package's API client, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import write_minimal_kubeconfig

REPO_ROOT = Path(__file__).resolve().parent.parent

PROGRAM = textwrap.dedent(
    """
    import json, sys
    from brigade_cr.stores.kube.config import load_kubeconfig
    from brigade_cr.stores.kube import lightimport
    config = load_kubeconfig(sys.argv[1])
    loaded = sorted(name for name in sys.modules if name.startswith("kubernetes"))
    light = lightimport.is_light()
    # The whole package is still there for whoever asks for it.
    import kubernetes
    import kubernetes.client
    from kubernetes import watch
    print(json.dumps({
        "server": config.server,
        "light": light,
        "loaded": loaded,
        "core": kubernetes.client.CoreV1Api.__name__,
        "api_client": kubernetes.client.ApiClient.__module__,
        "watch": watch.Watch.__name__,
        "version": kubernetes.__version__,
    }))
    """
)


@pytest.mark.slow
def test_the_loaders_come_without_the_api_client(tmp_path: Path) -> None:
    """
    Loading a kubeconfig imports the config loaders and the client's
    Configuration only (no API classes, models, dynamic client, watch or
    stream); asking for anything else then loads the real package.
    """
    kubeconfig = tmp_path / "kubeconfig"
    write_minimal_kubeconfig(kubeconfig)
    finished = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(kubeconfig)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(finished.stdout)
    assert report["server"] == "https://127.0.0.1:6443"
    assert report["light"] is True
    loaded = set(report["loaded"])
    assert {"kubernetes", "kubernetes.client", "kubernetes.client.configuration", "kubernetes.config"} <= loaded
    heavy = {"kubernetes.client.api_client", "kubernetes.client.models", "kubernetes.dynamic", "kubernetes.watch"}
    assert loaded & heavy == set()
    assert not any(name.startswith(("kubernetes.client.api.", "kubernetes.stream")) for name in loaded)
    assert (report["core"], report["api_client"], report["watch"]) == (
        "CoreV1Api",
        "kubernetes.client.api_client",
        "Watch",
    )
    assert report["version"].split(".")[0].isdigit()
