"""Shared fixtures: the real micro toy model (built once into the user cache) and small problem sets."""

from __future__ import annotations

import os

import pytest

# Tests run one torch process on a 2-core machine; two threads each would only contend.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread: two on a shared 2-core machine are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def micro_model():
    """Return the folder of the micro toy model: a real learned model that trains in seconds."""
    from mrt_star.toy import resolve_toy_model

    return resolve_toy_model("toy-micro")


@pytest.fixture(scope="session")
def toy_problems():
    """Return 12 toy problems across all families."""
    from mrt_star.toy.problems import generate_problems

    return generate_problems(12, seed=123)
