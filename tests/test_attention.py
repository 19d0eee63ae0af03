"""Attention backends on the CPU: the cascade (what FlashInfer computes) equals SDPA with the
protocol's dense mask, alone and inside a transformers model through the attention interface."""

from __future__ import annotations

import random

import pytest
import torch

from runtime import attention
from runtime.attention_plan import SeqStep, plan
from runtime.model_runner import KVState
from runtime.protocol import SERIAL_TAG, Tag
from tests.model_util import tiny_model
from tests.tags_util import decoding_history


def _open_block_step(seed: int) -> tuple[list[Tag], int]:
    rng = random.Random(seed)
    branches = rng.randint(1, 5)
    tags = decoding_history(rng, rng.randint(0, 2), branches)
    new = [Tag(max(t.block for t in tags), j) for j in range(1, branches + 1)]
    return tags + new, len(new)


@pytest.mark.parametrize("seed", range(12))
def test_cascade_equals_sdpa_with_the_protocol_mask(seed):
    tags, n_new = _open_block_step(seed)
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d, n = 4, 2, 16, len(tags)
    q = torch.randn(hq, n_new, d, generator=g)
    k, v = torch.randn(hkv, n, d, generator=g), torch.randn(hkv, n, d, generator=g)
    kv = KVState(None, torch.device("cpu"), capacity=n)
    kv.append_tags(tags)
    ref = attention.sdpa(q, k, v, kv.mask(n_new)[0, 0])
    got = attention.cascade_reference(q, k, v, plan([SeqStep(tuple(tags), n_new)]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_merge_is_attention_over_the_union():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 3, 8, generator=g), torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def part(sl):
        s = q @ k[:, sl].transpose(-1, -2) * 8 ** -0.5
        return torch.softmax(s, -1) @ v[:, sl], torch.logsumexp(s, -1)

    (oa, sa), (ob, sb) = part(slice(0, 6)), part(slice(6, 10))
    torch.testing.assert_close(attention.merge(oa, sa, ob, sb), full, atol=1e-5, rtol=1e-5)


def test_transformers_model_runs_the_cascade_through_its_attention_interface():
    """A Llama forward with attn_implementation="aspd_cascade" and a plan gives the logits of the
    same forward with SDPA and the protocol's dense 4-D mask (a block of three branches decoding)."""
    loaded = tiny_model(seed=4)
    model = loaded.model
    prefix = [SERIAL_TAG] * 7 + [Tag(1, j) for _ in range(2) for j in (1, 2, 3)]
    new = [Tag(1, 1), Tag(1, 2), Tag(1, 3)]
    tags = prefix + new
    # positions as the engine assigns them (branches restart after the prefix), in cache order
    counters, positions = {}, []
    for t in tags:
        if t.block == 0:
            positions.append(len(positions))
        else:
            counters[t.branch] = counters.get(t.branch, 0) + 1
            positions.append(7 + counters[t.branch] - 1)
    ids = torch.randint(3, 40, (1, len(tags)), generator=torch.Generator().manual_seed(1))
    kv = KVState(None, torch.device("cpu"), capacity=len(tags))
    kv.append_tags(tags)
    dense = kv.mask(len(tags))  # [1, 1, n, n], every query of the whole sequence at once
    pos_t = torch.tensor([positions])
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=pos_t, attention_mask=dense, use_cache=False).logits
        name = attention.register()
        model.set_attn_implementation(name)
        try:
            p = plan([SeqStep(tuple(tags), len(tags))])
            got = model(input_ids=ids, position_ids=pos_t, aspd_plan=p, use_cache=False).logits
            # control: a plan for a plain causal sequence (siblings visible) changes the branch logits
            causal = plan([SeqStep((SERIAL_TAG,) * len(tags), len(tags))])
            wrong = model(input_ids=ids, position_ids=pos_t, aspd_plan=causal, use_cache=False).logits
        finally:
            model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(wrong[0, -3:], ref[0, -3:], atol=1e-3)


def test_choose_backend():
    cpu = torch.device("cpu")
    assert attention.choose("auto", cpu) == "sdpa"
    assert attention.choose("sdpa", cpu) == "sdpa"
    with pytest.raises(attention.AttentionUnavailable, match="CUDA"):
        attention.choose("flashinfer", cpu)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.choose("xformers", cpu)


def test_engine_on_the_cascade_backend_decodes_exactly_as_on_sdpa():
    """The whole engine (prefill, a 3-branch fork decoded together, the join, serial text after it)
    with the planned cascade gives the same tokens as with SDPA and the dense mask."""
    from runtime.engine import Engine
    from runtime.sampling import SamplingParams

    outs = []
    for backend in ("sdpa", "cascade"):
        loaded = tiny_model(seed=5)
        eng = Engine(loaded, fast=False, attention=backend)
        assert eng.runner.attention == backend
        seq = eng.new_sequence(eng.encode("tips:\n"))
        fork = eng.fork(seq, ["1.", "2.", "3."], SamplingParams(max_new_tokens=40, max_branch_tokens=10))
        after = eng.generate(seq, SamplingParams(max_new_tokens=8), "ar")
        outs.append((fork.text, after.text, eng.tokens(seq)))
    assert outs[0] == outs[1]
