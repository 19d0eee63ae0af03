"""The anti-loop rule (runtime/anti_loop.py): what it looks at, what it spares, and that the engine
and the transformers baseline decode under exactly the same rule."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from runtime import protocol as P
from runtime.anti_loop import History, alike_titles, apply, breaks_title_rule, link, processors, title_bans, word_mask
from runtime.constraint import Allowed
from runtime.engine import Engine
from runtime.sampling import SamplingParams
from runtime.token_sampler import Sampler
from runtime.vocab import token_texts, tokens_with
from tests.model_util import forked_answers, markup_heavy_engine, tiny_model


def test_word_mask_spares_whitespace_punctuation_digits_and_markup(tiny):
    words = word_mask(tiny.tokenizer, len(tiny.tokenizer), exclude=tiny.ids.markup)
    enc = tiny.tokenizer.convert_tokens_to_ids
    assert all(words[enc(c)] for c in "az")
    assert not any(words[enc(c)] for c in " \n.,:!-09")
    assert not any(words[t] for t in tiny.ids.markup | tiny.ids.eos)


def test_ngram_ban_and_word_penalty():
    words = torch.tensor([True, True, False, True])
    h = History(words)
    h.extend([0, 1, 2, 0, 1])
    assert h.banned(3) == [2]  # "0 1" was followed by 2
    assert sorted(h.banned(2)) == [2]  # after "1" came 2
    assert h.banned(4) == []
    assert h.bits.tolist() == [True, True, False, False]  # token 2 is not a word
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    apply(logits, [h], 2.0, 3, [True])
    assert logits.tolist() == [[1.0, -4.0, float("-inf"), 1.0]]
    untouched = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    apply(untouched, [h], 2.0, 3, [False])  # a title row: never penalised
    assert untouched.tolist() == [[2.0, -2.0, 1.0, 1.0]]


def test_branch_history_copies_then_merges_at_the_join():
    h = History(torch.ones(10, dtype=torch.bool))
    h.extend([1, 2])
    a, b = h.copy(), h.copy()
    a.extend([3, 4])
    b.extend([5])
    h.merge(a)
    h.merge(b)
    assert h.tokens == [1, 2, 3, 4, 5]
    h.add(3)
    assert h.banned(2) == [4] and h.copy().banned(2) == [4]


def test_linked_branches_may_not_repeat_what_a_sibling_wrote():
    h = History(torch.ones(10, dtype=torch.bool))
    h.extend([1, 2])
    a, b, c = h.copy(), h.copy(), h.copy()
    link([a, b])
    a.extend([3, 4, 5])
    b.extend([7, 3])
    c.extend([7, 3])
    assert b.banned(2) == [4]  # a wrote "3 4": b, its sibling, may not
    assert c.banned(2) == []  # c is not linked
    assert b.banned(3) == [] and a.banned(2) == [] and sorted(a.peers[0].banned(2)) == [4]
    b.add(9)
    assert a.tokens == [1, 2, 3, 4, 5] and b.tokens == [1, 2, 7, 3, 9]  # each keeps its own tokens


def test_siblings_may_each_open_as_another_did_after_the_text_before_the_block():
    """An n-gram reaching back into the shared text before the block is each sibling's own start,
    which serially follows its predecessor's body instead: a sibling's opening may not ban it."""
    h = History(torch.ones(10, dtype=torch.bool))
    h.extend([1, 2, 3])  # an intro: "... :\n\n"
    a, b = h.copy(), h.copy()
    link([a, b])
    a.add(8)  # " " then "1. **" in the first branch
    assert b.banned(3) == [] and b.banned(4) == []  # b may open with " " too
    b.add(8)
    a.extend([4, 5])
    b.add(4)
    assert b.banned(3) == [5]  # within the branches' own text, no n-gram twice
    assert b.banned(4) == [] and b.banned(2) == [5]
    assert b.banned(3) == [5]  # the same after both histories are rebuilt for other n


def test_siblings_of_a_block_opening_the_answer_are_linked_too():
    a, b = History(torch.ones(10, dtype=torch.bool)).copy(), History(torch.ones(10, dtype=torch.bool)).copy()
    link([a, b])
    a.extend([3, 4])
    b.add(3)
    assert b.banned(2) == [4]


def test_an_answers_branches_do_not_repeat_each_others_ngrams():
    """The branches of one adaptive answer are sampled in turn, each seeing what its siblings wrote,
    in earlier steps and in this one: no 2-gram of one branch's text is in a sibling's (greedy on this
    model, without `link`, about half the sibling pairs share one)."""
    eng = markup_heavy_engine(2)
    pairs = 0
    for k in range(30):
        seq = eng.new_sequence("q: " + "abcdefghijklmnopqrstuvwxyz0123"[k] * 2)
        eng.generate(seq, SamplingParams(max_new_tokens=200, max_branch_tokens=12, max_title_tokens=3,
                                         no_repeat_ngram_size=2), "aspd")
        for blk in P.parse(eng.text(seq)[len("q: xx"):]).blocks:
            grams = [{tuple(t[i:i + 2]) for i in range(len(t) - 1)} for t in (eng.encode(b.body) for b in blk.branches)]
            for i, g in enumerate(grams):
                for other in grams[i + 1:]:
                    assert not g & other, blk
                    pairs += 1
    assert pairs >= 50


def test_sampler_skips_title_rows():
    s = Sampler(SamplingParams(repetition_penalty=10.0, no_repeat_ngram_size=2), torch.device("cpu"))
    h = History(torch.ones(4, dtype=torch.bool))
    h.extend([3, 3])
    logits = torch.tensor([[0.0, 0.0, 0.0, 5.0]] * 2)
    assert s(logits, [h, h], [Allowed(), Allowed(anti_loop=False)]) == [0, 3]


@pytest.mark.parametrize("fast", [True, False])
def test_engine_decodes_exactly_like_transformers_generate_with_the_processor(fast):
    """The `hf` baseline's LogitsProcessor and the engine's sampler are one rule: same tokens."""
    lm = tiny_model(seed=3)
    eng = Engine(lm, fast=fast)
    prompt = eng.encode("list: a, b, c. ")
    for penalty, n in ((1.0, 3), (1.5, 0), (1.3, 4)):
        p = SamplingParams(max_new_tokens=60, repetition_penalty=penalty, no_repeat_ngram_size=n)
        seq = eng.new_sequence(prompt)
        eng.generate(seq, p, "ar")
        ours = eng.tokens(seq)[len(prompt):]
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False,
                                    suppress_tokens=sorted(lm.ids.markup),
                                    logits_processor=LogitsProcessorList(processors(eng.words, len(prompt),
                                                                                    penalty, n, eng.utf8)))
        theirs = out[0, len(prompt):].tolist()
        assert ours == theirs[:len(theirs) - (theirs[-1] in lm.ids.eos)], (penalty, n)
        assert len(ours) >= 10
        if n:
            grams = [tuple(ours[i:i + n]) for i in range(len(ours) - n + 1)]
            assert len(grams) == len(set(grams))  # no n-gram twice


def test_aspd_history_is_the_answer_text_without_titles_or_markup():
    eng = markup_heavy_engine(2)
    checked = 0
    for seq, _ in forked_answers(eng, no_repeat_ngram_size=3):
        resp = P.parse(eng.text(seq).removeprefix("q: "))
        assert seq.serial.history.tokens == eng.encode(resp.plain_text())  # branches in order, titles left out
        checked += 1
    assert checked >= 3


def test_a_title_may_not_repeat_an_earlier_title_of_its_block():
    words = torch.tensor([False, False, True, True, True, True, False])  # 0 "1", 1 ".", 2-5 words, 6 "**"
    end = 9
    # "1. **A B**" then "2. **A B": the 3-gram (A, B, **) is taken, and so is closing on "A B**"
    assert title_bans([[0, 1, 6, 2, 3, 6], [0, 1, 6, 2, 3]], words, end) == {6, 3}  # and no "B B"
    assert title_bans([[0, 1, 6, 2, 3, 6], [0, 1, 6, 2, 3, 6]], words, end) == {end}
    assert title_bans([[0, 1, 6, 2, 3, 6], [0, 1, 6, 2, 4]], words, end) == {4}  # a new title (not "C C")
    assert title_bans([[0, 1, 2], [0, 1, 2]], words, end) == {2, end}  # a one-word title, repeated
    assert title_bans([[0, 1, 2, 3, 4], [0, 1, 2]], words, end) == {2}  # it may open with "A" (not "A A")
    assert title_bans([[0, 1, 2, 3, 4], [0, 1, 2, 3]], words, end) == {3, 4}  # but not with "A B C"
    assert title_bans([[0, 1, 2, 3], [0, 1, 4], [0, 1, 4]], words, end) == {4, end}  # against every title
    assert title_bans([[0, 1, 2, 3], [0, 1, 2]], words, end) == {2, 3}  # "A B" may not open a later title
    assert title_bans([[0, 1, 2], [0, 1]], words, end) == {2, end}  # nor "A" (nor close on "1.")
    assert title_bans([[0, 1, 2, 3], [0, 1, 4]], words, end) == {4}
    assert title_bans([[0, 1, 6]], words, end) == {end}  # numbers and marks: no word to close on yet
    assert title_bans([[5, 0], [5, 1]], words, end) == frozenset()  # "D 1", "D 2": another number


def test_training_titles_follow_the_decoders_title_rule():
    words = torch.tensor([False, False, True, True, True, True, False])
    end = 9
    assert not breaks_title_rule([[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5]], words, end)
    assert breaks_title_rule([[0, 1, 2, 3, 4], [0, 1, 5], [0, 1, 2, 3, 4, 5]], words, end)  # opens like the 1st
    assert breaks_title_rule([[0, 1, 5], [0, 1, 2], [0, 1, 5]], words, end)  # closes equal to the first
    assert not breaks_title_rule([[0, 1, 5]], words, end)
    assert breaks_title_rule([[0, 1, 2, 3], [0, 1, 2, 3, 4]], words, end)  # opens with the whole 1st
    assert breaks_title_rule([[0, 1, 2, 3], [0, 1, 4, 4, 5]], words, end)  # a word twice in a row
    assert breaks_title_rule([[0, 1, 5], [0, 1]], words, end)  # a title without a word


def test_aspd_titles_of_a_block_are_all_different():
    """Greedy on this markup-heavy model repeats titles in nearly every block without the rule."""
    eng = markup_heavy_engine(1)
    blocks = 0
    for k in range(20):
        seq = eng.new_sequence("q: " + "abcdefghijklmnopqrst"[k] * 3)
        out = eng.generate(seq, SamplingParams(max_new_tokens=200, max_branch_tokens=5, max_title_tokens=6), "aspd")
        seen: list[str] = []  # no title repeats one of the answer's earlier titles, in any block
        for b in out.blocks:  # titles cut by the token cap, or without a word (nothing to compare): left out
            assert "\n" not in "".join(b.titles)  # one plain line each
            contents = [c for t in b.titles if len(eng.encode(t)) < 6 and (c := t.lstrip(" .,:;!?0123456789-"))]
            seen += contents
            assert len(set(seen)) == len(seen), [x.titles for x in out.blocks]
            blocks += len(contents) > 1
    assert blocks >= 10


def test_alike_titles():
    assert alike_titles(["5. Amino Acids", "6. Amino Acid"])
    assert alike_titles(["1. Decision-Making", "2. Safety", "3. Decision Making"])  # against every earlier one
    assert alike_titles(["1. Elimination of Entertainment", "2. Elimation of Entertainment"])  # a forced misspelling
    assert not alike_titles(["1. Protein", "2. Fat"])
    assert not alike_titles(["1. Improve your sleep", "2. Improve your diet"])  # one point each
    assert not alike_titles(["1. Protein"])


def test_the_tokens_a_title_may_not_hold(tiny):
    tok = tiny.tokenizer
    # the banned characters the tiny vocabulary has: the newline and the title separator
    assert tiny.ids.not_in_title == {tok.convert_tokens_to_ids(c) for c in "\n:"}
    assert tokens_with(tok, "ab") == {tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")}
    assert token_texts(tok)[tok.convert_tokens_to_ids("q")] == "q"
