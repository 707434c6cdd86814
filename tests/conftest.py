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


@pytest.fixture
def write_sft_folder():
    """Return a writer of small finished `filter` outputs (SFT rows through the real store and schema)."""
    from mrt_star.filter import sft_schema
    from mrt_star.store import Store

    def write(path, rows: int = 2, shards: int = 1, config: dict | None = None, summary: dict | None = None) -> str:
        made = [{"problem_id": f"p{i}", "prompt": [{"role": "user", "content": "1+1"}],
                 "completion": [{"role": "assistant", "content": "\\boxed{2}"}],
                 "messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "\\boxed{2}"}],
                 "prefix": "", "suffix": "\\boxed{2}", "rule": "mrt", "cumulative_progress": 0.5, "num_tokens": 9,
                 "format": "backtrack", "sample_index": 0, "answer": "2", "j_end": 1.0, "trimmed": False}
                for i in range(rows)]
        store = Store(path, "filter", config or {"rule": "mrt"}, "fp")
        size = -(-rows // shards)
        for shard in range(shards):
            store.write_shard(shard, made[shard * size:(shard + 1) * size], schema=sft_schema())
        store.finish(summary or {"kept_rows": rows})
        return str(path)

    return write
