import pytest

from corpus import corpus_available


def pytest_collection_modifyitems(config, items):
    """Tests that use the ``corpus_file`` fixture skip without a corpus."""
    if corpus_available():
        return
    skip = pytest.mark.skip(reason="../shared/corpus is absent")
    for item in items:
        if "corpus_file" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
