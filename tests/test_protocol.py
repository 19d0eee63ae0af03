"""Pure protocol tests: grammar, layout (mask + positions), and the constraint state machine. No torch."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runtime import protocol as P
from runtime.protocol import Branch, ParallelBlock, Response, SerialSegment, Tag

IDS = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                   eos=frozenset({0}))


def test_parse_render_roundtrip_and_plain_text():
    text = ("Intro.\n<|title|>Eat<|/title|><|title|>Sleep<|/title|><|para|>"
            "<|branch|>Eat: 1. Eat well.\n<|/branch|><|branch|>Sleep: 2. Sleep 8h.\n<|/branch|><|/para|>Done.")
    resp = P.parse(text)
    assert resp.segments == (
        SerialSegment(text="Intro.\n"),
        ParallelBlock(branches=(Branch(title="Eat", body=" 1. Eat well.\n"),
                                Branch(title="Sleep", body=" 2. Sleep 8h.\n"))),
        SerialSegment(text="Done."),
    )
    assert resp.markup() == text
    assert resp.plain_text() == "Intro.\n1. Eat well.\n2. Sleep 8h.\nDone."
    assert Response.model_validate_json(resp.model_dump_json()) == resp


def test_answer_text_leads_each_branch_with_its_title_unless_it_opens_with_it():
    resp = Response(segments=(
        SerialSegment(text="Tips:"),
        ParallelBlock(branches=(Branch(title="1. Sleep well", body=" 1. **Sleep well**: rest.\n"),
                                Branch(title="Drink water", body=" Eight cups a day."),
                                Branch(title="Stay fit", body=" 3. **Staying fit**: move.\n"),
                                Branch(title="Walk", body=""),
                                Branch(title="5. Fiscal and Tax", body=" 5. **Fiscal rules**: spend.\n"),
                                Branch(title="6. Rest", body=" 66 naps."))),
        SerialSegment(text="Done.")))
    assert resp.answer_text() == ("Tips:\n1. **Sleep well**: rest.\nDrink water: Eight cups a day.\n"
                                  "3. **Staying fit**: move.\nWalk: \n5. **Fiscal rules**: spend.\n6. Rest: 66 naps.\n"
                                  "Done.")
    assert resp.plain_text() == ("Tips:1. **Sleep well**: rest.\nEight cups a day.3. **Staying fit**: move.\n"
                                 "5. **Fiscal rules**: spend.\n66 naps.Done.")
    pieces = resp.answer_pieces()
    assert "".join(t for _, t in pieces) == resp.answer_text()
    assert pieces[:5] == [("serial", "Tips:"), ("break", "\n"), ("branch", "1. **Sleep well**: rest.\n"),
                          ("lead", "Drink water: "), ("branch", "Eight cups a day.")]
    assert [k for k, _ in pieces[-3:]] == ["branch", "break", "serial"]


@pytest.mark.parametrize("bad", [
    "<|title|>A<|/title|><|para|><|branch|>A: x<|/branch|><|/para|>",  # one branch
    "<|title|>A<|/title|><|title|>B<|/title|>text",  # no <|para|>
    "<|title|> <|/title|><|title|>B<|/title|><|para|>",  # empty title
    "<|title|>A<|/title|><|title|>B<|/title|><|para|><|branch|>B: x<|/branch|><|branch|>A: y<|/branch|><|/para|>",
    "<|title|>A<|/title|><|title|>B<|/title|><|para|><|branch|>A: x<|/branch|><|branch|>B: y<|/branch|>",
    "serial <|branch|> stray",
    "<|title|>A<|/title|><|title|>B<|/title|><|para|><|branch|>A: <|title|>x<|/branch|>"
    "<|branch|>B: y<|/branch|><|/para|>",
])
def test_parse_rejects_malformed(bad):
    with pytest.raises(P.ProtocolError):
        P.parse(bad)


def two_block_tags() -> list[Tag]:
    S = P.SERIAL_TAG
    # s s [para] b1.1 b1.1 b1.2 [/para] s [para] b2.1 b2.2 b2.2 b2.2 [/para] s
    return [S, S, S, Tag(1, 1), Tag(1, 1), Tag(1, 2), S, S, S, Tag(2, 1), Tag(2, 2), Tag(2, 2), Tag(2, 2), S, S]


def test_positions_two_blocks():
    assert P.layout(two_block_tags()) == [0, 1, 2, 3, 4, 3, 6, 7, 8, 9, 9, 10, 11, 13, 14]


def test_positions_with_start_offset_and_incremental_counter_agree():
    tags = two_block_tags()
    c = P.PositionCounter(next_serial=5)
    got = []
    for i, t in enumerate(tags):
        if i in (6, 13):  # the engine closes a block right before feeding <|/para|>
            c.close_block()
        got.append(c.take(t))
    assert got == P.layout(tags, start=5) == [p + 5 for p in P.layout(tags)]


def test_mask_two_blocks_matches_expected():
    m = np.array(P.mask(two_block_tags()), dtype=int)
    n = len(m)
    expected = np.tril(np.ones((n, n), dtype=int))
    expected[5, 3:5] = 0  # branch 1.2 never sees branch 1.1
    for q in (10, 11, 12):  # branch 2.2 never sees branch 2.1
        expected[q, 9] = 0
    assert (m == expected).all()
    # The vectorised rule on arrays gives the same matrix (this is what the model runner calls).
    tags = two_block_tags()
    blk = np.array([t.block for t in tags])
    br = np.array([t.branch for t in tags])
    idx = np.arange(n)
    vec = P.visible(idx[:, None], blk[:, None], br[:, None], idx[None], blk[None], br[None])
    assert (vec.astype(int) == expected).all()


def test_dead_tokens_are_invisible():
    assert not P.visible(5, 0, 0, 2, P.DEAD, 0)
    with pytest.raises(P.ProtocolError):
        P.layout([P.SERIAL_TAG, Tag(P.DEAD, 0)])


def test_tokenize_response_places_markup_and_tags():
    enc = lambda s: [ord(c) for c in s.replace(P.BRANCH, "\x01")]  # noqa: E731 - one char one id
    resp = Response(segments=(SerialSegment(text="ab"), ParallelBlock(branches=(
        Branch(title="X", body=" x"), Branch(title="Y", body=" yy"))), SerialSegment(text="c")))
    toks, tags = P.tokenize_response(resp, enc, IDS)
    assert toks == [97, 98, 100, 88, 101, 100, 89, 101, 102,
                    1, 88, 58, 32, 120, 104,
                    1, 89, 58, 32, 121, 121, 104, 105, 99]
    assert [t.block for t in tags] == [0] * 9 + [1] * 13 + [0, 0]
    assert [t.branch for t in tags] == [0] * 9 + [1] * 6 + [2] * 7 + [0, 0]


def _render_walk(walk: list[int]) -> str:
    names = {IDS.title: P.TITLE, IDS.end_title: P.END_TITLE, IDS.para: P.PARA, IDS.branch: P.BRANCH,
             IDS.end_branch: P.END_BRANCH, IDS.end_para: P.END_PARA}
    return "".join(names.get(t, chr(ord("a") + t)) for t in walk)


def test_constraint_random_logits_never_produce_malformed_headers():
    """Serial-mode half of the constraint: every header the walk opens is well formed."""
    opened = 0
    for seed in range(500):
        c = P.Constraint(IDS, max_title_tokens=3, max_branches=4)
        rng = random.Random(seed)
        text = []
        for _ in range(200):
            a = c.allowed()
            pool = sorted(a.only) if a.only is not None else [t for t in list(range(12)) + sorted(IDS.markup)
                                                               if t not in a.banned]
            tok = rng.choice(pool)
            if tok == 0:
                break
            if tok == IDS.title and c.phase is not P.Phase.TITLES_CLOSED:
                start = len(text)
            text.append(tok)
            c.advance(tok)
            if tok == IDS.para:
                opened += 1
                header = _render_walk(text[start:])
                titles = header.split(P.PARA)[0]
                assert titles.count(P.TITLE) == titles.count(P.END_TITLE) >= 2
                assert P.TITLE + P.END_TITLE not in titles  # non-empty
                assert c.phase is P.Phase.BRANCH
                c.join()  # the engine joins; the next token may not open a block
                assert IDS.title in c.allowed().banned
                text.append(IDS.end_para)
        assert IDS.branch not in text and IDS.end_branch not in text  # never sampled serially
    assert opened > 50


def test_constraint_in_branch_only_end_branch_closes_and_eos_maps():
    c = P.Constraint(IDS)
    c.phase = P.Phase.BRANCH
    a = c.allowed(branch_tokens=0, branch_cap=4)
    assert IDS.end_branch not in a.banned and {IDS.title, IDS.para, IDS.end_para, IDS.branch} <= a.banned
    assert c.map_sampled(0) == IDS.end_branch
    assert c.allowed(branch_tokens=4, branch_cap=4).only == {IDS.end_branch}


def test_no_block_opens_inside_fenced_code():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), fence=frozenset({9}))
    c = P.Constraint(ids)
    assert ids.title not in c.allowed().banned
    c.advance(9)  # "```" opens a code block
    c.advance(5)
    assert ids.title in c.allowed().banned
    c.advance(9)  # and closes it
    assert ids.title not in c.allowed().banned


def test_ar_constraint_bans_all_markup():
    c = P.Constraint(IDS, adaptive=False)
    assert c.allowed().banned == IDS.markup


def test_a_title_may_not_hold_a_banned_character():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), not_in_title=frozenset({7, 8}))
    c = P.Constraint(ids)
    assert not c.allowed().banned & {7, 8}  # serial text may hold them
    c.advance(ids.title)
    assert {7, 8} <= c.allowed().banned
    c.advance(5)
    assert {7, 8} <= c.allowed().banned and ids.end_title not in c.allowed().banned
    c.advance(ids.end_title)
    c.advance(ids.para)
    assert not c.allowed().banned & {7, 8}  # nor branch bodies


def test_a_block_opens_and_grows_only_while_each_branch_has_room():
    need = P.MIN_BRANCH_TOKENS
    c = P.Constraint(IDS)
    assert IDS.title not in c.allowed(tokens_left=2 * need).banned  # room for two branches: may fork
    assert IDS.title in c.allowed(tokens_left=2 * need - 1).banned  # not near the end of the budget
    assert IDS.title not in c.allowed().banned  # no budget given: unbounded
    for _ in range(3):
        c.advance(IDS.title)
        c.advance(7)
        c.advance(IDS.end_title)
    assert c.allowed(tokens_left=4 * need).only == {IDS.title, IDS.para}  # a 4th branch fits
    assert c.allowed(tokens_left=4 * need - 1).only == {IDS.para}  # it does not: the block closes
    c = P.Constraint(IDS)
    c.advance(IDS.title)
    c.advance(7)
    c.advance(IDS.end_title)
    assert c.allowed(tokens_left=1).only == {IDS.title}  # a block needs two titles, whatever is left


def test_a_block_opens_only_after_a_newline_of_the_answer():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), line_end=frozenset({10}))
    c = P.Constraint(ids)
    assert ids.title in c.allowed().banned  # not where the caller says no line starts
    c.advance(5)
    assert ids.title in c.allowed().banned  # nor mid-line
    c.advance(10)  # "\n"
    assert ids.title not in c.allowed().banned
    c.advance(5)
    assert ids.title in c.allowed().banned
    assert ids.title not in P.Constraint(IDS).allowed().banned  # no line ends known: the rule is off


def test_a_line_opens_after_any_newline_a_chat_header_included():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), line_end=frozenset({10}), template=frozenset({90}))
    assert P.opens_line([5, 6, 10], ids)  # a program's "Tips:\n"
    assert not P.opens_line([5, 6], ids) and not P.opens_line([], ids)
    assert P.opens_line([10, 90, 7, 10], ids)  # "<|im_start|>assistant\n": an answer may open with its block
    assert P.opens_line([90, 7, 10, 5, 10], ids)  # a line of text after the header
    assert not P.opens_line([5, 10], IDS)  # no line ends known
    # an answer starts after the header line only
    assert P.answer_start([10, 90, 7, 10], ids) and P.answer_start([90, 10], ids)
    assert not P.answer_start([90, 7, 10, 5, 10], ids) and not P.answer_start([5, 6, 10], ids)
    assert not P.answer_start([90, 7], ids) and not P.answer_start([90, 10], IDS)
