"""
Start-up fails clearly: a problem that stops the gateway from starting is
one line naming it and the option to change, with no traceback and a
non-zero exit status. The end-to-end tests run real ``twistd -n brigade-cr``
processes to completion.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage

from brigade_cr.app.startup import SPOOL_LOCK, StartupError, bind, check_spool, fails_clearly
from tests.gatewayprocess import Finished, run_to_completion
from tests.slow import starts_process


@pytest.fixture
@starts_process
def taken_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest.fixture
def held_spool(tmp_path: Path) -> Iterator[Path]:
    """A spool directory whose lock this process holds, as a running gateway would."""
    spool = tmp_path / "spool"
    spool.mkdir()
    fd = os.open(spool / SPOOL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        yield spool
    finally:
        os.close(fd)


def assert_fails_clearly(finished: Finished, line: str) -> None:
    """Non-zero exit, exactly one line naming the problem (this exact line), no traceback."""
    assert finished.returncode != 0, finished.output
    assert "Traceback" not in finished.output, finished.output
    assert finished.output.splitlines() == [line], finished.output


# -- end to end: real twistd processes --------------------------------------------


def test_port_in_use(tmp_path: Path, taken_port: int) -> None:
    """A --port in use: one line saying so and naming --port."""
    port = f"tcp:{taken_port}:interface=127.0.0.1"
    finished = run_to_completion(["--backend", f"dir:{tmp_path / 'data'}", "--port", port], tmp_path / "run")
    assert_fails_clearly(
        finished, f"brigade-cr: cannot listen on --port {port}: address already in use; choose another --port"
    )


def test_metrics_port_in_use(tmp_path: Path, taken_port: int) -> None:
    """A --metrics port in use: one line naming --metrics."""
    port = f"tcp:{taken_port}:interface=127.0.0.1"
    finished = run_to_completion(["--backend", f"dir:{tmp_path / 'data'}", "--metrics", port], tmp_path / "run")
    assert_fails_clearly(
        finished, f"brigade-cr: cannot listen on --metrics {port}: address already in use; choose another --metrics"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("port", "why"),
    [
        ("bogus:1", "Unknown endpoint type: 'bogus'"),
        ("tcp:8000:colour=blue", "_parseTCP() got an unexpected keyword argument 'colour'"),
    ],
)
def test_bad_endpoint(tmp_path: Path, port: str, why: str) -> None:
    """A --port that is not an endpoint description: one line naming --port and the value."""
    finished = run_to_completion(["--backend", f"dir:{tmp_path / 'data'}", "--port", port], tmp_path / "run")
    assert_fails_clearly(
        finished,
        f"brigade-cr: --port {port!r} is not a valid endpoint description ({why}); fix --port (e.g. --port tcp:8000)",
    )


@pytest.mark.slow
def test_kube_backend_without_configuration(tmp_path: Path) -> None:
    """--backend kube with no configuration anywhere: one line naming --backend and --kubeconfig."""
    finished = run_to_completion(["--backend", "kube"], tmp_path / "run")
    assert_fails_clearly(
        finished,
        "brigade-cr: --backend kube: no Kubernetes configuration found "
        "(no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster service account); "
        "give --kubeconfig, or use --backend dir:PATH",
    )


@pytest.mark.slow
def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    """A --kubeconfig that cannot be read (a directory): one line naming it and --kubeconfig."""
    where = tmp_path / "kubeconfig.d"
    where.mkdir()
    finished = run_to_completion(["--kubeconfig", str(where)], tmp_path / "run")
    assert_fails_clearly(
        finished,
        f"brigade-cr: kubeconfig: cannot read {where}: Is a directory; "
        "fix or give --kubeconfig (and --context), or use --backend dir:PATH",
    )


@pytest.mark.slow
def test_kubeconfig_that_is_not_yaml(tmp_path: Path) -> None:
    """A --kubeconfig that is not YAML: one line naming it and --kubeconfig."""
    where = tmp_path / "kubeconfig"
    where.write_text("clusters: [unclosed")
    finished = run_to_completion(["--kubeconfig", str(where)], tmp_path / "run")
    assert_fails_clearly(
        finished,
        f"brigade-cr: kubeconfig {where} is not valid YAML at line 1; "
        "fix or give --kubeconfig (and --context), or use --backend dir:PATH",
    )


@pytest.mark.slow
def test_spool_that_cannot_be_created(tmp_path: Path) -> None:
    """A --spool under a regular file: one line naming --spool (it used to be logged, then exit 0)."""
    (tmp_path / "a-file").write_text("")
    spool = tmp_path / "a-file" / "spool"
    finished = run_to_completion(["--backend", f"dir:{tmp_path / 'data'}", "--spool", str(spool)], tmp_path / "run")
    assert_fails_clearly(
        finished, f"brigade-cr: --spool {spool}: cannot create the directory: not a directory; change --spool"
    )


@pytest.mark.slow
def test_spool_locked_by_another_process(tmp_path: Path, held_spool: Path) -> None:
    """A --spool whose spool.lock another process holds: one line naming the holder and --spool."""
    finished = run_to_completion(
        ["--backend", f"dir:{tmp_path / 'data'}", "--spool", str(held_spool)], tmp_path / "run"
    )
    assert_fails_clearly(
        finished,
        f"brigade-cr: --spool {held_spool} is in use by another process (pid 4242, holding spool.lock); "
        "each spool directory takes one gateway: give this one another --spool",
    )


# -- units ---------------------------------------------------------------------------


def test_fails_clearly_turns_startup_errors_into_one_line() -> None:
    """StartupError and UsageError become SystemExit with the one line; other errors pass through."""

    @fails_clearly
    def make(error: Exception) -> None:
        raise error

    with pytest.raises(SystemExit) as raised:
        make(StartupError("the problem; change --x"))
    assert raised.value.code == "brigade-cr: the problem; change --x"
    with pytest.raises(SystemExit) as raised:
        make(usage.UsageError("--y must be z"))
    assert raised.value.code == "brigade-cr: --y must be z"
    with pytest.raises(KeyError):
        make(KeyError("a bug"))


def test_check_spool_creates_and_releases(tmp_path: Path) -> None:
    """check_spool creates the directory (0700) and leaves its lock free for the spool to take."""
    spool = tmp_path / "deep" / "spool"
    check_spool(spool)
    assert spool.is_dir()
    assert spool.stat().st_mode & 0o777 == 0o700
    fd = os.open(spool / SPOOL_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_check_spool_locked(held_spool: Path) -> None:
    """A held lock is a StartupError naming the holder's PID."""
    with pytest.raises(StartupError, match=r"in use by another process \(pid 4242, holding spool.lock\)"):
        check_spool(held_spool)


def test_check_spool_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory this process may not write (a read-only mount, another owner) is a StartupError."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StartupError) as raised:
        check_spool(tmp_path)
    assert str(raised.value) == (
        f"--spool {tmp_path}: the directory is not writable; change --spool or its permissions"
    )


def test_check_spool_lock_cannot_be_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file that cannot be created (EROFS) is a StartupError naming --spool."""
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(SPOOL_LOCK):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(StartupError) as raised:
        check_spool(tmp_path)
    assert str(raised.value) == f"--spool {tmp_path}: cannot open spool.lock: read-only file system; change --spool"


@pytest.mark.slow
def test_bound_port_accepts_only_once_started() -> None:
    """bind() binds at once but does not read the port until the service starts; stop closes it."""
    from twisted.internet import reactor

    bound = bind("--port", "tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol), reactor)
    fdset = IReactorFDSet(reactor)
    reading = IReadDescriptor(bound.port)
    try:
        assert reading not in fdset.getReaders()
        bound.startService()
        assert reading in fdset.getReaders()
    finally:
        bound.stopService()
    assert reading not in fdset.getReaders()
