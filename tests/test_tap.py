"""The twistd plugin: its options, backend choice and the plugin's registration."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from brigade_cr.app.backend import choose_backend
from brigade_cr.app.startup import StartupError
from brigade_cr.app.tap import Options
from tests.helpers import write_minimal_kubeconfig


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    """With no arguments: port tcp:8000, no backend chosen, default ref master."""
    options = parse()
    assert options["port"] == "tcp:8000"
    assert options["namespace"] is None
    assert options["kubeconfig"] is None
    assert options["context"] is None
    assert options["backend"] is None
    assert options["default-ref"] == "master"
    assert options["spool"] == "brigade-cr-data/spool"
    assert options["no-spool"] == 0


def test_no_spool_turns_the_spool_off() -> None:
    assert parse("--no-spool")["spool"] is None
    assert parse("--spool", "/var/spool/x")["spool"] == "/var/spool/x"


def test_spool_and_no_spool_on_the_command_line_contradict() -> None:
    with pytest.raises(usage.UsageError, match=r"^--no-spool and --spool contradict each other$"):
        parse("--no-spool", "--spool", "/x")


def test_the_command_line_wins_over_the_images_spool_variable() -> None:
    """The image sets BRIGADE_CR_SPOOL; --no-spool still turns the spool off, and the reverse."""
    options = Options({"BRIGADE_CR_SPOOL": "/var/lib/brigade-cr/spool"})
    options.parseOptions(["--no-spool"])
    assert options["spool"] is None
    options = Options({"BRIGADE_CR_NO_SPOOL": "1"})
    options.parseOptions(["--spool", "/x"])
    assert (options["spool"], options["no-spool"]) == ("/x", 0)
    options = Options({"BRIGADE_CR_NO_SPOOL": "1", "BRIGADE_CR_SPOOL": "/x"})
    with pytest.raises(usage.UsageError, match=r"^BRIGADE_CR_NO_SPOOL and BRIGADE_CR_SPOOL contradict each other$"):
        options.parseOptions([])


def test_an_empty_spool_is_refused() -> None:
    with pytest.raises(usage.UsageError, match=r"^--spool must name a directory \(or use --no-spool\)$"):
        parse("--spool", "")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8000", "tcp:8000"), ("9", "tcp:9"), ("tcp:9000:interface=127.0.0.1", "tcp:9000:interface=127.0.0.1")],
)
def test_port_forms(value: str, expected: str) -> None:
    """A bare number means tcp:N; anything else is an endpoint description."""
    assert parse("--port", value)["port"] == expected
    assert parse("-p", value)["port"] == expected


def test_every_option_spelling() -> None:
    """The option names operators script against."""
    options = parse(
        "--namespace", "brigade",
        "--kubeconfig", "/k",
        "--context", "ctx",
        "--backend", "dir:/tmp/x",
        "--default-ref", "main",
    )  # fmt: skip
    assert (options["namespace"], options["kubeconfig"], options["context"]) == ("brigade", "/k", "ctx")
    assert (options["backend"], options["default-ref"]) == ("dir:/tmp/x", "main")


@pytest.mark.parametrize("value", ["dir:", "kubernetes", "memory", "dir"])
def test_bad_backend(value: str) -> None:
    """--backend accepts only kube and dir:PATH."""
    with pytest.raises(usage.UsageError):
        parse("--backend", value)


def test_empty_default_ref() -> None:
    """An empty default ref is refused: it would break git checkouts."""
    with pytest.raises(usage.UsageError):
        parse("--default-ref", "")


def test_directory_backend_choice(tmp_path: Path) -> None:
    """dir:PATH creates projects/ and builds/ and describes itself."""
    from twisted.internet import reactor

    backend = choose_backend(parse("--backend", f"dir:{tmp_path}"), reactor, {})
    assert (tmp_path / "projects").is_dir() and (tmp_path / "builds").is_dir()
    assert backend.description == (
        f"using the local directory backend: projects from {tmp_path / 'projects'}, "
        f"builds written to {tmp_path / 'builds'} (namespace 'default')"
    )


def test_no_configuration_falls_back_to_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no backend and no Kubernetes configuration, the default directory is used and said so."""
    from twisted.internet import reactor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    backend = choose_backend(parse(), reactor, {"BRIGADE_NAMESPACE": "brigade"})
    where = tmp_path / "brigade-cr-data"
    assert backend.description == (
        f"no Kubernetes configuration found; using the local directory backend: "
        f"projects from {where / 'projects'}, builds written to {where / 'builds'} (namespace 'brigade')"
    )


def test_kube_backend_without_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend kube with no configuration found is a start-up error naming the options, not a fallback."""
    from twisted.internet import reactor

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(StartupError) as raised:
        choose_backend(parse("--backend", "kube"), reactor, {})
    assert str(raised.value) == (
        "--backend kube: no Kubernetes configuration found "
        "(no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster service account); "
        "give --kubeconfig, or use --backend dir:PATH"
    )


def test_missing_kubeconfig_is_a_startup_error(tmp_path: Path) -> None:
    """An explicit --kubeconfig that does not exist is a start-up error naming --kubeconfig."""
    from twisted.internet import reactor

    with pytest.raises(StartupError) as raised:
        choose_backend(parse("--kubeconfig", str(tmp_path / "nope")), reactor, {})
    assert str(raised.value) == (
        f"kubeconfig {tmp_path / 'nope'} does not exist; "
        "fix or give --kubeconfig (and --context), or use --backend dir:PATH"
    )


@pytest.mark.slow
def test_plugin_is_listed_by_twistd() -> None:
    """`twistd --help` from this interpreter's installation lists brigade-cr."""
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["brigade-cr", "Container-registry", "webhooks", "to", "Brigade", "v1", "builds"] in lines


@pytest.mark.slow
def test_plugin_options_help() -> None:
    """`twistd brigade-cr --help` documents every option."""
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "brigade-cr", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--port=", "--namespace=", "--kubeconfig=", "--context=", "--backend=", "--default-ref="):
        assert option in result.stdout


def test_kube_backend_is_throttled(tmp_path: Path) -> None:
    """The Kubernetes backend gets the client-side rate limit; the directory backend does not."""
    from twisted.internet import reactor

    kubeconfig = tmp_path / "kubeconfig"
    write_minimal_kubeconfig(kubeconfig)
    kube = choose_backend(parse("--kubeconfig", str(kubeconfig), "--namespace", "brigade"), reactor, {})
    assert kube.throttled
    assert kube.description.startswith(
        "Creating Brigade builds in Kubernetes namespace 'brigade' at https://127.0.0.1:6443"
    )
    assert "t0k3n" not in kube.description
    directory = choose_backend(parse("--backend", f"dir:{tmp_path / 'd'}"), reactor, {})
    assert not directory.throttled


def test_trusted_proxies() -> None:
    """--trusted-proxy is repeatable; each value is a network (host bits allowed) or one address."""
    assert parse()["trusted-proxy"] == []
    options = parse("--trusted-proxy", "10.244.0.0/16", "--trusted-proxy", "192.0.2.7", "--trusted-proxy", "fd00::1/8")
    assert options["trusted-proxy"] == [
        ipaddress.ip_network("10.244.0.0/16"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/8"),
    ]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.example.com", "", "10.0.0.0/8,10.1.0.0/16"])
def test_bad_trusted_proxy(value: str) -> None:
    """A --trusted-proxy that is not a network is a usage error naming the option and the value."""
    with pytest.raises(usage.UsageError) as raised:
        parse("--trusted-proxy", value)
    assert str(raised.value) == f"--trusted-proxy: not an IP network (CIDR) or address: {value!r}"
