import pytest


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny CoE repository and its trace, built once per test session."""
    from coserve.zoo.tiny import build_tiny

    root, trace = build_tiny(tmp_path_factory.mktemp("tiny"))
    return root, trace
