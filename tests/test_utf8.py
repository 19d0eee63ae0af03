"""Whole characters (runtime/utf8.py): the anti-loop rule never lets a byte-level model leave a
broken character, and the n-gram bans wait until an open character is complete."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from runtime.anti_loop import History
from runtime.constraint import Allowed
from runtime.sampling import SamplingParams
from runtime.token_sampler import Sampler
from runtime.utf8 import BYTE, run, utf8_table
from tests.model_util import tiny_tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with one token per byte (GPT-2's alphabet) and an end of text."""
    vocab = {"<eos>": 0, **{c: b + 1 for c, b in BYTE.items()}}
    tk = Tokenizer(models.BPE(vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def test_the_automaton_accepts_exactly_well_formed_utf8():
    """Against Python's own decoder, on every one- and two-byte string and on random longer ones."""
    gen = torch.Generator().manual_seed(0)
    cases = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(0x80, 0xC0)]
    cases += [bytes(torch.randint(0x80, 0xF6, (4,), generator=gen).tolist()) for _ in range(20000)]
    cases += ["don’t 🌍 naïve".encode()]
    for data in cases:
        try:
            data.decode()
            whole = True
        except UnicodeDecodeError:
            whole = False
        assert (run(0, data) == 0) == whole, data


def test_table_follows_what_each_token_owes():
    tok = byte_tokenizer()
    t = utf8_table(tok, len(tok))
    ids = tok.encode("don’t 🌍", add_special_tokens=False)
    states = [0]
    for i in ids:
        assert not t.bans[states[-1]][i]
        states.append(t.after(states[-1], i))
    assert [s > 0 for s in states[1:]] == [False, False, False, True, True, False, False, False, True, True, True,
                                           False]
    assert not t.bans[2][0]  # end of text is never banned here: a forced close stays possible
    assert t.bans[0][tok.convert_tokens_to_ids(next(c for c, b in BYTE.items() if b == 0x99))]
    assert utf8_table(tiny_tokenizer(), 50) is None  # whole characters only: nothing to guard


def test_sampled_text_stays_valid_utf8():
    """Random logits over raw bytes: without the guard nearly every draw breaks a character; with it
    the bytes decode strictly (but for a character still open at the end)."""
    tok = byte_tokenizer()
    table = utf8_table(tok, len(tok))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0, no_repeat_ngram_size=3), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    h = History(torch.zeros(len(tok), dtype=torch.bool), table)
    for _ in range(400):
        logits = torch.randn(1, len(tok), generator=gen) * 3
        logits[0, 0] = float("-inf")
        h.add(sampler(logits, [h], [Allowed()])[0])
    while h.char:  # close the last character
        h.add(next(t for t in range(1, len(tok)) if not table.bans[h.char][t]))
    raw = bytes(BYTE[c] for c in "".join(tok.convert_ids_to_tokens(h.tokens)))
    assert len(raw.decode("utf-8")) > 100 and sum(b >= 0x80 for b in raw) > 50


def test_ngram_bans_wait_for_the_open_character():
    """"’" twice with the 2-gram rule on: the n-gram (0x80, 0x99) is written, yet after 0xE2 0x80 the
    continuation 0x99 must still come, where the rule alone would push the model to a broken byte."""
    tok = byte_tokenizer()
    table = utf8_table(tok, len(tok))
    h = History(torch.zeros(len(tok), dtype=torch.bool), table)
    h.extend(tok.encode("’a", add_special_tokens=False) + tok.encode("’", add_special_tokens=False)[:2])
    logits = torch.zeros(1, len(tok))
    want = tok.encode("’", add_special_tokens=False)[2]
    logits[0, want] = 5.0
    logits[0, tok.encode("t", add_special_tokens=False)[0]] = 4.0
    sampler = Sampler(SamplingParams(no_repeat_ngram_size=2), torch.device("cpu"))
    assert sampler(logits.clone(), [h], [Allowed()]) == [want]
    plain = History(torch.zeros(len(tok), dtype=torch.bool))  # the rule without the guard: broken text
    plain.extend(h.tokens)
    assert sampler(logits.clone(), [plain], [Allowed()]) == tok.encode("t", add_special_tokens=False)


def test_a_character_cut_with_its_branch_does_not_bind_the_text_after_the_join():
    tok = byte_tokenizer()
    table = utf8_table(tok, len(tok))
    serial = History(torch.zeros(len(tok), dtype=torch.bool), table)
    serial.extend(tok.encode("a ", add_special_tokens=False))
    branch = serial.copy()
    branch.extend(tok.encode("’", add_special_tokens=False)[:1])  # cut by its token cap after a lead byte
    assert branch.char
    serial.merge(branch)
    assert serial.char == 0
