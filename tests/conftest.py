import os

import pytest
from hypothesis import HealthCheck, settings

from corpus import corpus_available


def pytest_collection_modifyitems(config, items):
    """Tests that use the ``corpus_file`` fixture skip without a corpus."""
    if corpus_available():
        return
    skip = pytest.mark.skip(reason="../shared/corpus is absent")
    for item in items:
        if "corpus_file" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE: "ci" (the default)
# keeps property tests short, "fuzz" runs them long.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=200_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
