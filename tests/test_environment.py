"""Configuration from the environment (BRIGADE_CR_<FLAG>) and --version."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from typing import Mapping

import pytest
from twisted.python import usage

import brigade_cr
import twisted
from brigade_cr.app import tap
from brigade_cr.app.options import Options, environment_variable


def parse(environ: Mapping[str, str], *argv: str) -> Options:
    options = tap.Options(environ)
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize(
    ("option", "variable"),
    [
        ("kube-qps", "BRIGADE_CR_KUBE_QPS"),
        ("port", "BRIGADE_CR_PORT"),
        ("trusted-proxy", "BRIGADE_CR_TRUSTED_PROXY"),
        ("spool-max-bytes", "BRIGADE_CR_SPOOL_MAX_BYTES"),
    ],
)
def test_variable_names(option: str, variable: str) -> None:
    """Upper case, dashes to underscores, prefixed BRIGADE_CR_."""
    assert environment_variable(option) == variable


def test_variables_set_options() -> None:
    """Each variable is parsed as its flag would be (same coercion)."""
    options = parse(
        {
            "BRIGADE_CR_KUBE_QPS": "2.5",
            "BRIGADE_CR_PORT": "9000",
            "BRIGADE_CR_MAX_BODY": "1M",
            "BRIGADE_CR_AUTH": "optional",
            "BRIGADE_CR_NAMESPACE": "brigade",
        }
    )
    assert options["kube-qps"] == 2.5
    assert options["port"] == "tcp:9000"
    assert options["max-body"] == 1024 * 1024
    assert options["auth"] == "optional"
    assert options["namespace"] == "brigade"
    assert options.from_environment == {
        "kube-qps": "BRIGADE_CR_KUBE_QPS",
        "port": "BRIGADE_CR_PORT",
        "max-body": "BRIGADE_CR_MAX_BODY",
        "auth": "BRIGADE_CR_AUTH",
        "namespace": "BRIGADE_CR_NAMESPACE",
    }


def test_flag_wins_over_variable() -> None:
    """A flag on the command line (long or short) wins over its variable."""
    environ = {"BRIGADE_CR_KUBE_QPS": "2.5", "BRIGADE_CR_PORT": "9000"}
    options = parse(environ, "--kube-qps", "7", "-p", "8001")
    assert options["kube-qps"] == 7.0
    assert options["port"] == "tcp:8001"
    assert options.from_environment == {}


def test_unrelated_variables_are_ignored() -> None:
    """Without variables, the defaults; other variables change nothing."""
    options = parse({"BRIGADE_NAMESPACE": "x", "BRIGADE_CR_": "y", "KUBE_QPS": "1"})
    assert options["kube-qps"] == 50.0
    assert options["namespace"] is None
    assert options.from_environment == {}


@pytest.mark.parametrize(
    "value", ["10.244.0.0/16,192.0.2.7", "10.244.0.0/16 192.0.2.7", " 10.244.0.0/16 ,\n192.0.2.7 "]
)
def test_repeatable_variable_is_a_list(value: str) -> None:
    """BRIGADE_CR_TRUSTED_PROXY takes a comma- or whitespace-separated list."""
    options = parse({"BRIGADE_CR_TRUSTED_PROXY": value})
    assert options["trusted-proxy"] == [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("192.0.2.7/32")]


def test_repeatable_flag_replaces_the_variable() -> None:
    """Any --trusted-proxy on the command line replaces the variable's whole list."""
    options = parse({"BRIGADE_CR_TRUSTED_PROXY": "10.0.0.0/8,10.1.0.0/16"}, "--trusted-proxy", "192.0.2.0/24")
    assert options["trusted-proxy"] == [ipaddress.ip_network("192.0.2.0/24")]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BRIGADE_CR_KUBE_QPS": "0"}, "BRIGADE_CR_KUBE_QPS: not a positive number: '0'"),
        ({"BRIGADE_CR_KUBE_BURST": "many"}, "BRIGADE_CR_KUBE_BURST: invalid literal for int() with base 10: 'many'"),
        ({"BRIGADE_CR_MAX_BODY": "-1"}, "BRIGADE_CR_MAX_BODY: not a positive byte count: '-1'"),
        (
            {"BRIGADE_CR_TRUSTED_PROXY": "10.0.0.0/8,proxy.example.com"},
            "BRIGADE_CR_TRUSTED_PROXY: not an IP network (CIDR) or address: 'proxy.example.com'",
        ),
        ({"BRIGADE_CR_BACKEND": "memory"}, "BRIGADE_CR_BACKEND must be 'kube' or 'dir:PATH'"),
        ({"BRIGADE_CR_AUTH": "maybe"}, "BRIGADE_CR_AUTH must be 'required' or 'optional'"),
        ({"BRIGADE_CR_DEFAULT_REF": ""}, "BRIGADE_CR_DEFAULT_REF must not be empty"),
    ],
)
def test_bad_variable_is_a_usage_error_naming_it(environ: Mapping[str, str], message: str) -> None:
    """A bad value in a variable is a usage error (twistd's one-line error, exit 1) naming the variable."""
    with pytest.raises(usage.UsageError) as raised:
        parse(environ)
    assert str(raised.value) == message


def test_bad_variable_overridden_by_a_flag_is_not_an_error() -> None:
    """A flag replaces its variable before the variable is parsed."""
    assert parse({"BRIGADE_CR_KUBE_QPS": "zero"}, "--kube-qps", "3")["kube-qps"] == 3.0


def test_bad_flag_still_names_the_flag() -> None:
    """With no variable, an error names the flag."""
    with pytest.raises(usage.UsageError) as raised:
        parse({}, "--auth", "maybe")
    assert str(raised.value) == "--auth must be 'required' or 'optional'"


class FlagOptions(Options):
    optFlags = [["quiet", None, "A boolean flag (for this test)."]]


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("true", 1), ("YES", 1), ("0", 0), ("false", 0), ("No", 0)])
def test_boolean_variables(value: str, expected: int) -> None:
    """A boolean flag's variable takes 1/true/yes and 0/false/no."""
    options = FlagOptions({"BRIGADE_CR_QUIET": value})
    options.parseOptions([])
    assert options["quiet"] == expected


def test_bad_boolean_variable() -> None:
    """Anything else is a usage error naming the variable."""
    options = FlagOptions({"BRIGADE_CR_QUIET": "on"})
    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions([])
    assert str(raised.value) == "BRIGADE_CR_QUIET: not a boolean (1/true/yes or 0/false/no): 'on'"


def test_base_options_read_no_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below tap.py, only the injected mapping is read; tap.Options() defaults to os.environ."""
    monkeypatch.setenv("BRIGADE_CR_KUBE_BURST", "3")
    base = Options()
    base.parseOptions([])
    assert base["kube-burst"] == 500
    plugin = tap.Options()
    plugin.parseOptions([])
    assert plugin["kube-burst"] == 3


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints brigade-cr's version, then Twisted's, and exits 0."""
    with pytest.raises(SystemExit) as raised:
        parse({}, "--version")
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"brigade-cr {brigade_cr.__version__}\nTwisted {twisted.__version__}\n"


def twistd(args: list[str], environ: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **environ},
    )


@pytest.mark.slow
def test_twistd_brigade_cr_version() -> None:
    """`twistd brigade-cr --version` prints brigade-cr's version and Twisted's and exits 0."""
    result = twistd(["brigade-cr", "--version"], {})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"brigade-cr {brigade_cr.__version__}\nTwisted {twisted.__version__}\n"


@pytest.mark.slow
def test_twistd_bad_variable_exits_1_naming_it() -> None:
    """A bad variable stops twistd as a bad flag does: exit 1, the last line names the variable."""
    result = twistd(["-n", "brigade-cr"], {"BRIGADE_CR_KUBE_QPS": "fast"})
    assert result.returncode == 1
    # twistd prefixes its argv[0:2], here "-c -n" (run through `python -c`).
    assert result.stdout.splitlines()[-1] == "-c -n: BRIGADE_CR_KUBE_QPS: could not convert string to float: 'fast'"
