"""The one mapping of SGLang's sampling parameters (the server's wire and NativeBackend's frontend
calls) and SGLang's meta_info (pure: no model)."""

from __future__ import annotations

import pytest
from sglang.lang.ir import SglSamplingParams

from runtime.api import BadRequest, WireSampling, meta_info, sglang_sampling
from runtime.outcomes import Result
from runtime.outputs import FinishReason, GenerationOutput
from runtime.sampling import SamplingParams

SERVER = SamplingParams(repetition_penalty=1.2, no_repeat_ngram_size=0)


def test_the_wire_maps_onto_sampling_params():
    p = WireSampling(max_new_tokens=None, stop="x", top_k=-1, sampling_seed=3).to_sampling(64, SERVER)
    assert p == SamplingParams(max_new_tokens=64, temperature=1.0, top_k=0, stop=("x",), seed=3,
                               repetition_penalty=1.2, no_repeat_ngram_size=0, max_branch_tokens=64)
    q = WireSampling(max_new_tokens=0, repetition_penalty=1.0, seed=1, sampling_seed=2).to_sampling(64, SERVER)
    assert (q.repetition_penalty, q.seed, q.max_branch_tokens) == (1.0, 1, 1)
    assert WireSampling(intro_first=True).to_sampling(64, SERVER).intro_first and not p.intro_first


def test_the_frontend_params_keep_the_backends_defaults():
    backend = SamplingParams(seed=7, max_branches=3, fork_bias=-1.0, repetition_penalty=1.1)
    p = sglang_sampling(SglSamplingParams(max_new_tokens=9, stop=["a"], top_k=5, temperature=0), backend)
    assert (p.max_new_tokens, p.stop, p.top_k, p.temperature, p.max_branch_tokens) == (9, ("a",), 5, 0.0, 9)
    assert (p.seed, p.max_branches, p.fork_bias, p.repetition_penalty) == (7, 3, -1.0, 1.1)


@pytest.mark.parametrize("kw, words", [
    ({"regex": "a+"}, "constrained decoding (regex)"), ({"dtype": "int"}, "constrained decoding (dtype)"),
    ({"n": 2}, "n must be 1"), ({"min_new_tokens": 2}, "min_new_tokens"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"top_k": -3}, "top_k")])
def test_what_is_not_implemented_is_refused_by_name(kw, words):
    with pytest.raises(BadRequest, match=words.replace("(", r"\(").replace(")", r"\)")):
        sglang_sampling(SglSamplingParams(**kw), server="NativeBackend")


def test_meta_info_is_sglangs_shape():
    out = GenerationOutput.empty(3, FinishReason.LENGTH).model_copy(update={"completion_tokens": 2})
    meta = meta_info(Result(rid="r", output=out, prompt_tokens=3, cached_tokens=1, input_logprobs=None,
                            latency_s=0.5), rid="shown")
    assert meta == {"id": "shown", "finish_reason": {"type": "length", "length": 2}, "prompt_tokens": 3,
                    "completion_tokens": 2, "cached_tokens": 1, "e2e_latency": 0.5}
