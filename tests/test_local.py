"""The directory backend meets the backend contract and writes usable manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from twisted.internet.task import Clock

from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import BackendUnavailable, ProjectNotFound
from brigade_cr.core.values import Receipt
from brigade_cr.stores.directory import (
    DirectoryScan,
    directory_backend,
    manifest_signature,
    read_project,
    read_projects,
    write_build,
)
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.projects import KnownProjects
from tests.backend_contract import BackendContract, BackendUnderTest, a_build, project_secret
from tests.helpers import failure_of, result_of


@pytest.fixture
def backend(tmp_path: Path) -> BackendUnderTest:
    from twisted.internet import reactor

    threaded: Any = reactor  # typed as the common interface; it is IReactorThreads too
    projects, builds = directory_backend(threaded, threaded.getThreadPool(), tmp_path, "brigade")
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


@pytest.fixture
def scanned_backend(tmp_path: Path) -> BackendUnderTest:
    """What a gateway serves: the in-memory set kept by a rescan of the directory."""
    from twisted.internet import reactor

    threaded: Any = reactor  # typed as the common interface; it is IReactorThreads too
    _, builds = directory_backend(threaded, threaded.getThreadPool(), tmp_path, "brigade")
    (tmp_path / "projects").mkdir()
    scan = DirectoryScan(tmp_path / "projects", InlineIO(), Clock())
    known = KnownProjects(scan, Clock())
    result_of(known.start())

    async def seed(secret: dict[str, Any]) -> None:
        name = secret["metadata"]["name"]
        (tmp_path / "projects" / f"{name}.yaml").write_text(yaml.safe_dump(secret))
        await scan.rescan()

    async def stored(name: str) -> dict[str, Any] | None:
        path = tmp_path / "builds" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    return BackendUnderTest(known, builds, "brigade", seed, stored)


class TestScannedDirectoryBackend(BackendContract):
    """The contract, on the rescanned in-memory set."""

    @pytest.fixture
    def backend(self, scanned_backend: BackendUnderTest) -> BackendUnderTest:
        return scanned_backend


@pytest.fixture
def scanning(tmp_path: Path) -> tuple[KnownProjects, DirectoryScan, Clock, Path]:
    clock = Clock()
    directory = tmp_path / "projects"
    directory.mkdir()
    scan = DirectoryScan(directory, InlineIO(), clock)
    known = KnownProjects(scan, clock)
    result_of(known.start())
    return known, scan, clock, directory


def write(path: Path, secret: dict[str, Any], mtime_ns: int) -> None:
    path.write_text(yaml.safe_dump(secret))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def secret_of(known: KnownProjects, name: str) -> bytes | None:
    project = result_of(known.get(project_id(name)))
    return project.cr_gateway_secret


def test_rescan_notices_added_changed_removed(scanning: tuple[KnownProjects, DirectoryScan, Clock, Path]) -> None:
    """Every 2 s the directory is rescanned: added, changed and removed files take effect."""
    known, _, clock, directory = scanning
    assert known.not_ready() is None  # the first scan ran at start
    assert isinstance(failure_of(known.get(project_id("one"))), ProjectNotFound)
    write(directory / "one.yaml", project_secret("one", crGatewaySecret=b"first-secret-value"), 10**18)
    clock.advance(1.9)
    assert isinstance(failure_of(known.get(project_id("one"))), ProjectNotFound)
    clock.advance(0.1)
    assert secret_of(known, "one") == b"first-secret-value"
    write(directory / "one.yaml", project_secret("one", crGatewaySecret=b"second-secret-value"), 10**18 + 1)
    clock.advance(2)
    assert secret_of(known, "one") == b"second-secret-value"
    (directory / "one.yaml").unlink()
    clock.advance(2)
    assert isinstance(failure_of(known.get(project_id("one"))), ProjectNotFound)


def test_rescan_reads_no_manifest_when_nothing_changed(
    scanning: tuple[KnownProjects, DirectoryScan, Clock, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged directory (same names, sizes, mtimes) is not read again."""
    known, _scan, clock, directory = scanning
    write(directory / "one.yaml", project_secret("one", crGatewaySecret=b"first-secret-value"), 10**18)
    clock.advance(2)
    reads: list[Path] = []

    def counted(directory: Path) -> Any:
        reads.append(directory)
        return read_projects(directory)

    monkeypatch.setattr("brigade_cr.stores.directory.read_projects", counted)
    clock.advance(20)
    assert reads == []
    assert secret_of(known, "one") == b"first-secret-value"


def test_rescan_of_unreadable_directory_keeps_last_known(
    scanning: tuple[KnownProjects, DirectoryScan, Clock, Path],
) -> None:
    """A directory that cannot be read keeps the last known set served, and is read again once it can be."""
    known, scan, clock, directory = scanning
    write(directory / "one.yaml", project_secret("one", crGatewaySecret=b"first-secret-value"), 10**18)
    clock.advance(2)
    scan.projects_dir = directory / "missing-dir" / "x"
    (directory / "missing-dir").write_text("a file, not a directory")
    clock.advance(2)
    assert not known.in_sync
    assert secret_of(known, "one") == b"first-secret-value"
    scan.projects_dir = directory
    clock.advance(2)
    assert known.in_sync
    assert secret_of(known, "one") == b"first-secret-value"


def test_read_projects_only_projects(tmp_path: Path) -> None:
    """Non-project Secrets are not projects; the first file in name order wins a duplicate name."""
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(project_secret("dup", crGatewaySecret=b"from-a")))
    (tmp_path / "b.yaml").write_text(
        yaml.safe_dump(project_secret("dup", crGatewaySecret=b"from-b"))
        + "---\n"
        + yaml.safe_dump(project_secret("build", secret_type="brigade.sh/build"))
    )
    (tmp_path / "notes.txt").write_text("ignored")
    signature, projects = read_projects(tmp_path)
    assert sorted(projects) == [project_id("dup")]
    assert projects[project_id("dup")].cr_gateway_secret == b"from-a"
    assert [name for name, _, _ in signature] == ["a.yaml", "b.yaml"]
    assert manifest_signature(tmp_path / "nope") == ()


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


@attrs.define
class NoIO:
    """A BlockingIO that must not be used."""

    calls: int = 0

    def run(self, function: Any, *args: Any) -> Any:
        self.calls += 1
        return InlineIO().run(function, *args)


def test_initial_set_told_at_start(tmp_path: Path) -> None:
    """
    A set read before the reactor runs is told at start, with no I/O: the
    set is ready at once; rescans then go on every 2 s.
    """
    write(tmp_path / "one.yaml", project_secret("one", crGatewaySecret=b"first-secret-value"), 10**18)
    clock = Clock()
    io = NoIO()
    scan = DirectoryScan(tmp_path, io, clock, initial=read_projects(tmp_path))
    known = KnownProjects(scan, clock)
    result_of(known.start())
    assert (known.not_ready(), io.calls) == (None, 0)
    assert secret_of(known, "one") == b"first-secret-value"
    clock.advance(2)
    assert io.calls == 1  # the signature only: nothing changed
    write(tmp_path / "one.yaml", project_secret("one", crGatewaySecret=b"second-secret-value"), 10**18 + 1)
    clock.advance(2)
    assert io.calls == 3
    assert secret_of(known, "one") == b"second-secret-value"
