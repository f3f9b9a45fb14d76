"""Shared pytest configuration: fixtures, the ``slow`` marker and its guard, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

# urllib3 (imported by the kubernetes package) binds a socket at import time to
# learn whether IPv6 works. Imported here, before any test runs, so that the
# slow guard (tests/slow.py) never mistakes that probe for a test listening.
import urllib3  # noqa: F401
from hypothesis import HealthCheck, settings

from tests.slow import guarded, is_process_fixture

pytest_plugins = ["tests.kubetarget", "tests.e2e"]

DEFAULT_EXAMPLES = 20


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark ``slow`` every test that uses a fixture flagged with
    ``tests.slow.starts_process``, through any chain of fixtures; first, so
    that ``-m "not slow"`` deselects them.
    """
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        # The fixtures a test closes over, each the definition that wins for
        # it (a module's fixture overriding a plugin's of the same name).
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if any(chain and is_process_fixture(chain[-1].func) for chain in definitions):
            item.add_marker(pytest.mark.slow)


def _guard(item: pytest.Item, phase: str) -> Generator[None, object, object]:
    if item.get_closest_marker("slow"):
        return (yield)
    with guarded(item.nodeid, phase):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """A test that is not slow starts no process and opens no socket while its fixtures are set up..."""
    return (yield from _guard(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """... while it runs ..."""
    return (yield from _guard(item, "the test"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """... and while its fixtures are torn down."""
    return (yield from _guard(item, "teardown"))


_DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "brigade-cr-data")


@pytest.fixture(autouse=True)
def _no_default_data_in_the_checkout() -> Generator[None, None, None]:
    """
    A test leaves no ``brigade-cr-data/`` (the default spool and directory
    backend, relative to the working directory) in the checkout: a gateway
    composed without ``--spool``/``--no-spool`` would put its spool there.
    """
    existed = os.path.exists(_DEFAULT_DATA)
    yield
    if not existed and os.path.exists(_DEFAULT_DATA):
        pytest.fail(f"the test created {_DEFAULT_DATA}: give it --spool DIR or --no-spool (or chdir to tmp_path)")


# No deadline: the machine running the tests may be slow or busy, and speed
# is measured by the benchmark, not by tests.
# - "default" (a developer's run, plain ``pytest``) and "ci" (tox sets it,
#   so ``make test``) are derandomized: the same examples every run, so a red
#   CI is a real regression, never a lucky draw. "default" tries a few of
#   them, enough for the edit-and-test loop to stay fast (the grammar and
#   fuzz properties cost 20-50 ms an example); "ci" tries many more.
# - "explore" (``make fuzz``) draws fresh random examples, many more of them,
#   to look for new failures; what it finds is added as an explicit example.
# The number of examples belongs to the profile: a test sets max_examples
# itself only to cap an expensive property (it then caps every profile).
settings.register_profile("default", deadline=None, derandomize=True, database=None, max_examples=DEFAULT_EXAMPLES)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    derandomize=False,
    max_examples=5000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
