"""Shared pytest configuration: fixtures, and hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.kubetarget", "tests.e2e"]

# No deadline: the machine running the tests may be slow or busy, and speed
# is measured by the benchmark, not by tests. "ci" explores a bit more.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
