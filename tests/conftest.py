"""Shared pytest configuration: fixtures, and hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.kubetarget", "tests.e2e"]

# No deadline: the machine running the tests may be slow or busy, and speed
# is measured by the benchmark, not by tests.
# - "default" (a developer's run) and "ci" (tox sets it) are derandomized:
#   the same examples every run, so a red CI is a real regression, never a
#   lucky draw. "ci" tries a few more of them.
# - "explore" (``make fuzz``) draws fresh random examples, many more of them,
#   to look for new failures; what it finds is added as an explicit example.
settings.register_profile("default", deadline=None, derandomize=True, database=None)
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
