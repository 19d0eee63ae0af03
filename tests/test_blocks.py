"""Plain parallel blocks step by step (what DSL programs run on) and scoring, on the tiny model (fp32)."""

from __future__ import annotations

import pytest
import torch

from runtime import protocol as P
from runtime.engine import EngineError
from runtime.sampling import SamplingParams

ATOL = 1e-5
PREFIX = "a shared prefix: "
SEEDS = ["one", "the second", "3"]
PARAMS = [SamplingParams(max_new_tokens=9, ignore_eos=True), SamplingParams(max_new_tokens=5, ignore_eos=True),
          SamplingParams(max_new_tokens=12, ignore_eos=True, repetition_penalty=1.3)]


def _alone(engine, parts: list[tuple[str, SamplingParams | None]]) -> list[str]:
    """Reference: prefix, then each (text, params) of one branch run serially on its own sequence."""
    seq = engine.new_sequence(PREFIX)
    out = []
    for text, params in parts:
        engine.extend(seq, text)
        if params is not None:
            out.append(engine.generate(seq, params, mode="ar").text)
    return out


def _block(engine):
    seq = engine.new_sequence(PREFIX)
    engine.open_block(seq)
    for s in SEEDS:
        engine.add_branch(seq, s)
    return seq


def test_decoding_branches_together_equals_each_alone(engine):
    seq = _block(engine)
    out = engine.decode_branches(seq, dict(enumerate(PARAMS)))
    got = [b.body for b in out.response.blocks[0].branches]
    assert got == [_alone(engine, [(s, p)])[0] for s, p in zip(SEEDS, PARAMS)]
    assert out.parallel_tokens == 9 + 5 + 12
    assert out.forward_passes == 12  # the longest branch's steps: branches share every forward


def test_multi_phase_branches_and_subsets_equal_alone(engine):
    """Branches continue after more text, and a subset decodes while the others wait."""
    seq = _block(engine)
    first = engine.decode_branches(seq, {0: PARAMS[0], 2: PARAMS[2]})
    engine.branch_extend(seq, 0, " and then")
    engine.branch_extend(seq, 1, " so")
    second = engine.decode_branches(seq, {0: PARAMS[1], 1: PARAMS[1]})
    got0 = [first.response.blocks[0].branches[0].body, second.response.blocks[0].branches[0].body]
    assert got0 == _alone(engine, [(SEEDS[0], PARAMS[0]), (" and then", PARAMS[1])])
    assert second.response.blocks[0].branches[1].body == _alone(engine, [(SEEDS[1] + " so", PARAMS[1])])[0]


def test_stop_strings_per_branch(engine):
    seq = _block(engine)
    free = engine.decode_branches(seq, {0: PARAMS[0]}).response.blocks[0].branches[0].body
    stop = free[3:5]
    seq = _block(engine)
    cut = SamplingParams(max_new_tokens=9, ignore_eos=True, stop=stop)
    out = engine.decode_branches(seq, {0: cut, 1: PARAMS[1]})
    assert out.response.blocks[0].branches[0].body == free[:free.find(stop)]
    assert out.response.blocks[0].branches[1].body == _alone(engine, [(SEEDS[1], PARAMS[1])])[0]


def test_kv_join_equals_one_forward_with_protocol_mask(engine):
    """After the join, next-token logits equal one cache-free forward over the written sequence."""
    seq = _block(engine)
    engine.decode_branches(seq, dict(enumerate(PARAMS)))
    engine.branch_extend(seq, 1, " end")  # trailing text rides along with the join
    engine.join(seq)
    engine.extend(seq, " after")
    logits = engine.next_logits(seq)
    tokens, tags = seq.written_sequence()
    ref = engine.runner.full_forward(tokens, tags, P.layout(tags))[-1]
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    text = engine.text(seq)
    assert text.startswith(PREFIX + SEEDS[0]) and text.endswith(" after")
    assert text.index(SEEDS[0]) < text.index(SEEDS[1]) < text.index(" end") < text.index(SEEDS[2], 20)


def test_reprefill_join_equals_causal_prefill_of_the_joined_text(engine):
    seq = _block(engine)
    engine.decode_branches(seq, dict(enumerate(PARAMS)))
    engine.join(seq, reprefill=True)
    text_ids = [w.token for w in seq.written] + seq.serial.pending
    logits = engine.next_logits(seq)
    ref_seq = engine.new_sequence(text_ids)
    torch.testing.assert_close(logits, engine.next_logits(ref_seq), atol=ATOL, rtol=0)
    assert all(t.block == 0 for t in seq.written_sequence()[1])


def test_score_is_exact_and_leaves_the_cache_unchanged(engine):
    seq = engine.new_sequence(PREFIX)
    choices = ["yes", "no way", "z"]
    scores = engine.score(seq, choices)
    for c, lp in zip(choices, scores):
        ref = engine.new_sequence(PREFIX)
        want = []
        for t in engine.encode(c):
            want.append(torch.log_softmax(engine.next_logits(ref), -1)[t].item())
            engine.extend(ref, [t])
        assert lp == pytest.approx(want, abs=1e-4)
    fresh = engine.new_sequence(PREFIX)
    torch.testing.assert_close(engine.next_logits(seq), engine.next_logits(fresh), atol=ATOL, rtol=0)


def test_score_inside_a_branch(engine):
    seq = _block(engine)
    got = engine.score(seq, ["ab", "c"], branch=1)
    for c, lp in zip(["ab", "c"], got):
        ref = engine.new_sequence(PREFIX + SEEDS[1])
        want = []
        for t in engine.encode(c):
            want.append(torch.log_softmax(engine.next_logits(ref), -1)[t].item())
            engine.extend(ref, [t])
        assert lp == pytest.approx(want, abs=1e-4)
    out = engine.decode_branches(seq, {1: PARAMS[1]})  # the probes left no trace
    assert out.response.blocks[0].branches[0].body == _alone(engine, [(SEEDS[1], PARAMS[1])])[0]


def test_block_misuse_is_a_clear_error(engine):
    seq = engine.new_sequence(PREFIX)
    with pytest.raises(EngineError, match="no parallel block"):
        engine.add_branch(seq, "x")
    with pytest.raises(EngineError, match="no parallel block"):
        engine.join(seq)
    engine.open_block(seq)
    with pytest.raises(EngineError, match="inside a parallel block"):
        engine.extend(seq, "x")
    with pytest.raises(EngineError, match="inside a parallel block"):
        engine.generate(seq, PARAMS[0])
    with pytest.raises(EngineError, match="nothing to decode"):
        engine.decode_branches(seq, {})
    j = engine.add_branch(seq)
    with pytest.raises(EngineError, match="no open branch 5"):
        engine.decode_branches(seq, {5: PARAMS[0]})
    with pytest.raises(EngineError, match="must have text"):
        engine.score(seq, ["a"], branch=j)
    with pytest.raises(EngineError, match="must have text"):
        engine.decode_branches(seq, {j: PARAMS[0]})
    with pytest.raises(EngineError, match="non-empty"):
        engine.score(seq, [""], branch=j)
