"""The directory backend meets the backend contract and writes usable manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from brigade_cr.errors import BackendUnavailable, ProjectNotFound
from brigade_cr.local import directory_backend, read_project, write_build
from brigade_cr.values import Receipt
from tests.backend_contract import BackendContract, BackendUnderTest, a_build, project_secret


@pytest.fixture
def backend(tmp_path: Path) -> BackendUnderTest:
    from twisted.internet import reactor

    projects, builds = directory_backend(reactor, reactor.getThreadPool(), tmp_path, "brigade")
    (tmp_path / "projects").mkdir()

    async def seed(secret: dict[str, Any]) -> None:
        name = secret["metadata"]["name"]
        (tmp_path / "projects" / f"{name}.yaml").write_text(yaml.safe_dump(secret))

    async def stored(name: str) -> dict[str, Any] | None:
        path = tmp_path / "builds" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    return BackendUnderTest(projects, builds, "brigade", seed, stored)


class TestDirectoryBackend(BackendContract):
    """The contract, on a temporary directory."""


def test_project_in_multi_document_yaml(tmp_path: Path) -> None:
    """A project is found among several documents and Lists, by name."""
    first = project_secret("one")
    second = project_secret("two", crGatewaySecret=b"k2")
    (tmp_path / "all.yaml").write_text(
        yaml.safe_dump(first) + "---\n" + yaml.safe_dump({"kind": "List", "items": [second]})
    )
    assert read_project(tmp_path, second["metadata"]["name"]).cr_gateway_secret == b"k2"
    assert read_project(tmp_path, first["metadata"]["name"]).name == "one"


def test_unreadable_manifest_does_not_hide_others(tmp_path: Path) -> None:
    """A broken manifest file is skipped; projects in other files are still found."""
    (tmp_path / "a-broken.yaml").write_text("{ not: [yaml")
    good = project_secret("good")
    (tmp_path / "b.json").write_text(json.dumps(good))
    assert read_project(tmp_path, good["metadata"]["name"]).name == "good"


def test_missing_projects_directory(tmp_path: Path) -> None:
    """No projects directory means no projects, not a crash."""
    with pytest.raises(ProjectNotFound):
        read_project(tmp_path / "nope", "brigade-x")


def test_build_file_is_complete_and_no_temporary_remains(tmp_path: Path) -> None:
    """A written build is one JSON manifest, and the temporary file is gone."""
    receipt = write_build(tmp_path, a_build(), "default")
    assert receipt == Receipt(a_build().name)
    assert sorted(os.listdir(tmp_path)) == [f"{a_build().name}.json"]
    manifest = json.loads((tmp_path / f"{a_build().name}.json").read_text())
    assert manifest["kind"] == "Secret"
    assert manifest["metadata"]["namespace"] == "default"


def test_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    """A builds path that cannot be created is a transient failure, not a crash."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BackendUnavailable):
        write_build(blocker / "builds", a_build(), "default")
