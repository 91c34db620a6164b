import os

import pytest
import torch


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread:
    # the workers already fill the cores, and more threads per worker only contend.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def compile_forbidden(monkeypatch):
    """``torch.compile`` raises: for checks that a CPU path stays eager."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile was called on a CPU path")

    monkeypatch.setattr(torch, "compile", refuse)


@pytest.fixture
def compile_spy(monkeypatch):
    """The networks :func:`genkit.sampling.compile_for_sampling` would compile on CUDA, on the CPU.

    Its device rule is told every device is CUDA, and ``torch.compile`` records its argument and
    returns it unchanged (so the path still runs, eagerly). Returns the list of recorded networks.
    """
    import genkit.sampling

    calls = []

    def record(net, *args, **kwargs):
        calls.append(net)
        return net

    monkeypatch.setattr(torch, "compile", record)
    monkeypatch.setattr(genkit.sampling, "compiles_for_sampling", lambda device, enabled=True: enabled)
    return calls
