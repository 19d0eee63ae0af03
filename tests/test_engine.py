"""Engine tests on a tiny random-weight model (fp32): exact equivalences, constraint, bad input."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from runtime import protocol as P
from runtime.engine import Engine, EngineError
from runtime.model_runner import Forward, KVState
from runtime.protocol import PositionCounter, Tag
from runtime.sampling import SamplingParams
from tests.model_util import forked_answers, markup_heavy_engine, tiny_model

ATOL = 1e-5
GREEDY = SamplingParams(max_new_tokens=200, max_branch_tokens=7, ignore_eos=True)


def _feed(runner, kv, counter, tokens, tag, logits=True):
    pos = [counter.take(tag) for _ in tokens]
    return runner.forward(kv, tokens, pos, [tag] * len(tokens), [len(tokens) - 1] if logits else [])


def test_packed_branch_step_equals_each_branch_alone(engine):
    """(a) Every branch's logits in one packed forward equal prefix + that branch decoded alone."""
    runner, enc = engine.runner, engine.encode
    prefix = enc("a shared prefix: ")
    seeds = [enc("one"), enc("second one"), enc("3")]
    kv, c = runner.new_kv(), PositionCounter()
    _feed(runner, kv, c, prefix, P.SERIAL_TAG, logits=False)
    # Packed: all seeds in one forward, then 5 decode steps with one token per branch, also packed.
    toks, tags, pos, at = [], [], [], []
    for j, s in enumerate(seeds, start=1):
        for t in s:
            toks.append(t), tags.append(Tag(1, j)), pos.append(c.take(Tag(1, j)))
        at.append(len(toks) - 1)
    packed = [runner.forward(kv, toks, pos, tags, at)]
    chosen = [[] for _ in seeds]
    for _ in range(5):
        nxt = packed[-1].argmax(-1).tolist()
        for j, t in enumerate(nxt):
            chosen[j].append(t)
        tags = [Tag(1, j) for j in range(1, len(seeds) + 1)]
        packed.append(runner.forward(kv, nxt, [c.take(t) for t in tags], tags, range(len(seeds))))
    for j, s in enumerate(seeds):
        kv1, c1 = runner.new_kv(), PositionCounter()
        _feed(runner, kv1, c1, prefix, P.SERIAL_TAG, logits=False)
        alone = [_feed(runner, kv1, c1, s, P.SERIAL_TAG)[0]]
        for t in chosen[j]:
            alone.append(_feed(runner, kv1, c1, [t], P.SERIAL_TAG)[0])
        for step, ref in enumerate(alone):
            torch.testing.assert_close(packed[step][j], ref, atol=ATOL, rtol=0)


def test_fast_decoder_equals_transformers_forward(tiny):
    """The fast decoder and transformers give the same logits over prefill, packed branches and a join."""
    fast, ref = Engine(tiny, fast=True).runner, Engine(tiny, fast=False).runner
    assert fast.fast is not None and ref.fast is None
    steps = [  # (tokens, tags): a serial prefill, two packed branch steps, a join, a serial token
        ([5, 6, 7, 8], [P.SERIAL_TAG] * 4),
        ([9, 10, 11], [Tag(1, 1), Tag(1, 1), Tag(1, 2)]),
        ([12, 13], [Tag(1, 1), Tag(1, 2)]),
        ([14], [P.SERIAL_TAG]),
        ([15], [P.SERIAL_TAG]),
    ]
    kvs = [fast.new_kv(), ref.new_kv()]
    counters = [PositionCounter(), PositionCounter()]
    for i, (toks, tags) in enumerate(steps):
        outs = []
        for runner, kv, c in zip((fast, ref), kvs, counters):
            if i == 3:
                c.close_block()
            outs.append(runner.forward(kv, toks, [c.take(t) for t in tags], tags, range(len(toks))))
        torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
    kvs[0].cache.reserve(10_000)  # growth keeps what is cached
    out = fast.forward(kvs[0], [16], [counters[0].take(P.SERIAL_TAG)], [P.SERIAL_TAG], [0])
    ref_out = ref.forward(kvs[1], [16], [counters[1].take(P.SERIAL_TAG)], [P.SERIAL_TAG], [0])
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)


def test_decode_steps_of_several_sequences_equal_each_alone(tiny):
    """Single-query steps of sequences of different lengths share one padded attention call: the
    logits are each sequence's own."""
    runner, solo = Engine(tiny, fast=True).runner, Engine(tiny, fast=True).runner  # a group buffer each
    prompts = [[5, 6, 7], list(range(5, 25)), [8, 9, 10, 11, 12, 13]]
    together, alone = [runner.new_kv() for _ in prompts], [solo.new_kv() for _ in prompts]
    serial = P.SERIAL_TAG
    for r, kvs in ((runner, together), (solo, alone)):
        for kv, p in zip(kvs, prompts):
            r.forward(kv, p, list(range(len(p))), [serial] * len(p), [len(p) - 1])
    for step in range(100):  # the group's buffer is kept, rebuilt when a member leaves and when it fills
        live = range(3) if step < 30 else range(1, 3)
        tok = [2 + (step * 7 + j) % 40 for j in live]
        batch = [Forward(together[j], [t], [len(prompts[j]) + step], [serial], [0]) for j, t in zip(live, tok)]
        outs = runner.forward_many(batch)
        for j, t, out in zip(live, tok, outs):
            ref = solo.forward(alone[j], [t], [len(prompts[j]) + step], [serial], [0])
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(together[2].cache.k[:, :, :together[2].cache.length],
                               alone[2].cache.k[:, :, :alone[2].cache.length], atol=ATOL, rtol=0)


def test_engine_fork_texts_equal_branches_alone(engine):
    seeds = ["alpha:", "be", "c, d and e:"]
    seq = engine.new_sequence("some prompt text. ")
    out = engine.fork(seq, seeds, GREEDY)
    bodies = [b.body for b in out.response.blocks[0].branches]
    assert out.parallel_tokens == 3 * GREEDY.max_branch_tokens
    for seed, body in zip(seeds, bodies):
        alone = engine.new_sequence("some prompt text. ")
        engine.extend(alone, seed)
        ref = engine.generate(alone, GREEDY.model_copy(update={"max_new_tokens": GREEDY.max_branch_tokens}), "ar")
        assert body == ref.text
    # Branches decoded together: one forward per step, not one per branch.
    assert out.forward_passes == GREEDY.max_branch_tokens + 1


def _assert_join_exact(engine, seq):
    got = engine.next_logits(seq)
    toks, tags = seq.written_sequence()
    ref = engine.runner.full_forward(toks, tags, P.layout(tags))[-1]
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("markup", [True, False])
def test_join_equals_full_forward_with_protocol_mask(engine, markup):
    """(b) After joins (two blocks), next-token logits equal one full forward of the written sequence."""
    seq = engine.new_sequence("question: name two things. ")
    engine.fork(seq, ["first", "the second"], GREEDY, markup=markup)
    engine.extend(seq, " and then ")
    engine.generate(seq, SamplingParams(max_new_tokens=4, ignore_eos=True), "ar")
    engine.fork(seq, ["x", "y", "zz"], GREEDY.model_copy(update={"max_branch_tokens": 3}), markup=markup)
    _assert_join_exact(engine, seq)
    # Joined text = every branch in order, and the markup (if any) parses.
    text = engine.text(seq)
    if markup:
        P.parse(text.removeprefix("question: name two things. "))


def test_join_exact_when_branches_stop_at_different_lengths(engine):
    """Stop strings cut branches at different lengths: cut tokens are hidden, positions stay exact."""
    seq = engine.new_sequence("list: ")
    params = SamplingParams(max_new_tokens=200, max_branch_tokens=12, temperature=1.0, seed=3, stop=("e", "a"))
    out = engine.fork(seq, ["one", "two", "three", "four"], params)
    lengths = {len(b.body) for b in out.response.blocks[0].branches}
    assert len(lengths) > 1
    for b in out.response.blocks[0].branches:
        assert "e" not in b.body and "a" not in b.body
    assert engine.text(seq) == "list: " + "".join(s + b.body for s, b in zip(
        ["one", "two", "three", "four"], out.response.blocks[0].branches))
    _assert_join_exact(engine, seq)


def test_serial_stop_string_cuts_text_and_cache(engine):
    seq = engine.new_sequence("abc ")
    out = engine.generate(seq, SamplingParams(max_new_tokens=60, temperature=1.0, seed=5, stop=(" ",)), "ar")
    assert out.finish_reason == "stop" and " " not in out.text
    assert engine.text(seq) == "abc " + out.text
    _assert_join_exact(engine, seq)


def test_a_block_cut_by_the_budget_keeps_each_branch_to_its_last_sentence(engine):
    """The budget runs out inside a block: each cut branch keeps the text it wrote up to its last
    sentence end, and its cache holds exactly that; a bigger budget writes the same text on."""
    titles = ["one", "two", "three"]
    whole = engine.fork(engine.new_sequence("q: "), titles, SamplingParams(
        max_new_tokens=300, max_branch_tokens=15, temperature=1.0, seed=3), markup=True)
    seq = engine.new_sequence("q: ")
    out = engine.fork(seq, titles, SamplingParams(max_new_tokens=34, max_branch_tokens=15, temperature=1.0,
                                                  seed=3), markup=True)
    assert out.finish_reason == "length" and out.completion_tokens == 34
    trimmed = 0
    for b, full, br in zip(out.response.blocks[0].branches, whole.response.blocks[0].branches, seq.open_branches):
        assert full.body.startswith(b.body)
        if br.finish is not None:  # it ended on its own, as in the whole run
            assert b.body == full.body
            continue
        assert b.body.rstrip(" ").endswith((".", "!", "?", "\n")) or not any(c in b.body for c in ".!?\n")
        fed = [t for t, _ in br.written]
        # no dropped token cached (a kept last token may still wait to be fed, as at any length cut)
        assert engine.decode(fed + br.pending) == P.branch_seed(b.title) + b.body
        trimmed += len(b.body) < len(full.body)
    assert trimmed >= 2  # the budget cut them, and some of their tokens were dropped


@pytest.mark.parametrize("budget", range(33, 38))
def test_a_block_step_never_writes_past_the_budget(engine, budget):
    """A block step samples one token per live branch only while the budget lasts (the first
    branches get the last tokens), so a block cut by the budget holds exactly max_new_tokens tokens;
    before, a step wrote up to live - 1 more (34 -> 35 and 36 -> 37 here)."""
    out = engine.fork(engine.new_sequence("q: "), ["one", "two", "three"], SamplingParams(
        max_new_tokens=budget, max_branch_tokens=15, temperature=1.0, seed=3), markup=True)
    assert out.finish_reason == "length" and out.completion_tokens == out.parallel_tokens == budget


def test_constrained_decoding_never_writes_malformed_markup():
    """(c) Random logits, many seeds, adaptive mode: the written text always parses."""
    eng = markup_heavy_engine(1)
    blocks = 0
    for seed in range(40):
        seq = eng.new_sequence("q: ")
        params = SamplingParams(max_new_tokens=300, max_branch_tokens=6, max_title_tokens=3, max_branches=4,
                                temperature=1.0, seed=seed)
        out = eng.generate(seq, params, "aspd")
        if out.finish_reason != "stop":
            continue
        resp = P.parse(eng.text(seq).removeprefix("q: "))  # raises on any malformed markup
        assert resp.answer_text() == out.text
        blocks += len(resp.blocks)
    assert blocks >= 30



def test_adaptive_blocks_open_only_after_a_newline():
    """The line rule in real decoding: every block the model opens follows a newline of its answer."""
    eng = markup_heavy_engine(1, line_rule=True)
    blocks = 0
    for seed in range(40):
        seq = eng.new_sequence("q: ")
        params = SamplingParams(max_new_tokens=300, max_branch_tokens=6, max_title_tokens=3, temperature=1.0,
                                seed=seed)
        eng.generate(seq, params, "aspd")
        markup = eng.text(seq).removeprefix("q: ")
        opened = [k for k in range(len(markup)) if markup.startswith(P.TITLE, k)
                  and not markup[:k].endswith(P.END_TITLE)]
        assert all(k > 0 and markup[k - 1] == "\n" for k in opened), markup
        blocks += len(opened)
    assert blocks >= 3

def test_adaptive_written_tokens_match_training_tokenisation():
    """The tokens the engine fed are exactly what training builds from the same markup."""
    eng = markup_heavy_engine(2)
    checked = 0
    for seq, _ in forked_answers(eng):
        toks, tags = seq.written_sequence()
        resp = P.parse(eng.text(seq).removeprefix("q: "))
        ref_toks, ref_tags = P.tokenize_response(resp, eng.encode, eng.ids)
        prompt = len(eng.encode("q: "))
        assert toks[prompt:] == ref_toks and tags[prompt:] == ref_tags
        _assert_join_exact(eng, seq)
        checked += 1
    assert checked >= 3


def test_ar_mode_never_emits_markup():
    eng = markup_heavy_engine(3)
    for seed in range(10):
        seq = eng.new_sequence("q: ")
        eng.generate(seq, SamplingParams(max_new_tokens=50, temperature=1.0, seed=seed), "ar")
        assert not set(seq.written_sequence()[0]) & eng.ids.markup


def test_sampling_is_seeded_and_greedy_is_deterministic(engine):
    def run(**kw):
        return engine.generate(engine.new_sequence("x: "), SamplingParams(max_new_tokens=20, **kw), "ar").text
    assert run(temperature=0.8, seed=7, top_p=0.9, top_k=20) == run(temperature=0.8, seed=7, top_p=0.9, top_k=20)
    assert run() == run()


def test_kv_mask_uses_protocol_rule():
    kv = KVState(None, torch.device("cpu"), capacity=2)  # forces growth
    tags = [P.SERIAL_TAG, Tag(1, 1), Tag(1, 2), Tag(1, 1), P.SERIAL_TAG]
    kv.append_tags(tags)
    assert kv.mask(5)[0, 0].tolist() == P.mask(tags)
    kv.kill(1)
    assert kv.mask(1)[0, 0, 0].tolist() == [True, False, True, True, True]


# --------------------------------------------------------------------------- bad input


def test_prompt_longer_than_context_window_is_a_clear_error():
    eng = Engine(tiny_model(max_positions=64))
    with pytest.raises(EngineError, match="context window is 64"):
        eng.new_sequence("x" * 100)


def test_generation_stops_cleanly_at_the_context_window():
    eng = Engine(tiny_model(max_positions=64))
    seq = eng.new_sequence("x" * 50)
    with pytest.raises(EngineError, match="context window"):
        eng.generate(seq, SamplingParams(max_new_tokens=100, ignore_eos=True), "ar")


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"max_new_tokens": -5}, {"bogus": 1},
                                 {"repetition_penalty": 0}])
def test_invalid_sampling_params_are_rejected(bad):
    with pytest.raises(ValidationError):
        SamplingParams(**bad)


def test_fork_needs_two_branches(engine):
    with pytest.raises(EngineError, match="at least 2"):
        engine.fork(engine.new_sequence("x"), ["only one"], GREEDY)
    with pytest.raises(EngineError, match="empty"):
        engine.new_sequence("")


def test_forks_driven_together_equal_each_fork_alone(engine):
    """`fork_steps` + `drive_all` (many answers' blocks in one forward, as data v4 is written) decode each
    fork exactly as `fork` alone does."""
    from runtime.run_kind import drive_all

    p = SamplingParams(max_new_tokens=24, max_branch_tokens=8)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]

    def seq(ids):
        s = engine.new_sequence(ids)
        engine.prefill(s)
        return s

    alone = [engine.fork(seq(ids), ["a", "b c", "d"], p) for ids in prompts]
    together = drive_all(engine.runner.forward_many, [engine.fork_steps(seq(ids), ["a", "b c", "d"], p)
                                                      for ids in prompts])
    assert [o.markup for o in together] == [o.markup for o in alone]
    assert all(o.parallel_tokens > 0 for o in together) and together[0].markup != together[1].markup


def test_a_linked_fork_keeps_its_branches_from_repeating_each_other(engine):
    """Greedy branches with the same seed write the same words alone; linked, as an answer's block is
    (data v4 forks so), each may not repeat its siblings' n-grams, so they part."""
    p = SamplingParams(max_new_tokens=36, max_branch_tokens=12, temperature=0.0, no_repeat_ngram_size=3)

    def bodies(linked: bool) -> list[str]:
        s = engine.new_sequence([5, 6, 7, 8, 9])
        engine.prefill(s)
        (block,) = engine.fork(s, ["a", "a", "a"], p, linked=linked).response.blocks
        return [b.body for b in block.branches]

    alone, linked = bodies(False), bodies(True)
    assert len(set(alone)) == 1 and len(set(linked)) == 3
