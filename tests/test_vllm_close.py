"""`VLLMEngine.close()` gives the GPU back: a second model loads in the same process (needs CUDA and vllm)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]


def test_two_models_one_after_the_other_in_one_process(micro_model):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from mrt_star.engines import load_engine
    from mrt_star.engines.base import Request, SamplingParams
    from mrt_star.toy import resolve_toy_model

    request = [Request(messages=[{"role": "user", "content": "[backtrack] Compute 1+2."}])]
    free_before, _ = torch.cuda.mem_get_info()
    # Each engine claims 80% of the GPU: the second cannot start unless the first really let go.
    for model in (micro_model, resolve_toy_model("toy")):
        engine = load_engine("vllm", str(model), gpu_memory_utilization=0.8, enforce_eager=True)
        out = engine.generate(request, SamplingParams(n=1, max_new_tokens=8, temperature=0.0, seed=0))
        assert len(out) == 1 and out[0][0].text is not None
        engine.close()
    free_after, _ = torch.cuda.mem_get_info()
    assert free_after > 0.9 * free_before, "the closed engines still hold GPU memory"
