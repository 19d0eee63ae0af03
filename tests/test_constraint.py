"""The constraint state machine (`runtime/constraint.py`): headers always well formed, where a block
may open and how large it may grow. No torch."""

from __future__ import annotations

import random

from runtime import constraint as C
from runtime import protocol as P

IDS = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                   eos=frozenset({0}))


def _render_walk(walk: list[int]) -> str:
    names = {IDS.title: P.TITLE, IDS.end_title: P.END_TITLE, IDS.para: P.PARA, IDS.branch: P.BRANCH,
             IDS.end_branch: P.END_BRANCH, IDS.end_para: P.END_PARA}
    return "".join(names.get(t, chr(ord("a") + t)) for t in walk)


def test_constraint_random_logits_never_produce_malformed_headers():
    """Serial-mode half of the constraint: every header the walk opens is well formed."""
    opened = 0
    for seed in range(500):
        c = C.Constraint(IDS, max_title_tokens=3, max_branches=4)
        rng = random.Random(seed)
        text = []
        for _ in range(200):
            a = c.allowed()
            pool = sorted(a.only) if a.only is not None else [t for t in list(range(12)) + sorted(IDS.markup)
                                                               if t not in a.banned]
            tok = rng.choice(pool)
            if tok == 0:
                break
            if tok == IDS.title and c.phase is not C.Phase.TITLES_CLOSED:
                start = len(text)
            text.append(tok)
            c.advance(tok)
            if tok == IDS.para:
                opened += 1
                header = _render_walk(text[start:])
                titles = header.split(P.PARA)[0]
                assert titles.count(P.TITLE) == titles.count(P.END_TITLE) >= 2
                assert P.TITLE + P.END_TITLE not in titles  # non-empty
                assert c.phase is C.Phase.BRANCH
                c.join()  # the engine joins; the next token may not open a block
                assert IDS.title in c.allowed().banned
                text.append(IDS.end_para)
        assert IDS.branch not in text and IDS.end_branch not in text  # never sampled serially
    assert opened > 50


def test_constraint_in_branch_only_end_branch_closes_and_eos_maps():
    c = C.Constraint(IDS)
    c.phase = C.Phase.BRANCH
    a = c.allowed(branch_tokens=0, branch_cap=4)
    assert IDS.end_branch not in a.banned and {IDS.title, IDS.para, IDS.end_para, IDS.branch} <= a.banned
    assert c.map_sampled(0) == IDS.end_branch
    assert c.allowed(branch_tokens=4, branch_cap=4).only == {IDS.end_branch}


def test_no_block_opens_inside_fenced_code():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), fence=frozenset({9}))
    c = C.Constraint(ids)
    assert ids.title not in c.allowed().banned
    c.advance(9)  # "```" opens a code block
    c.advance(5)
    assert ids.title in c.allowed().banned
    c.advance(9)  # and closes it
    assert ids.title not in c.allowed().banned


def test_ar_constraint_bans_all_markup():
    c = C.Constraint(IDS, adaptive=False)
    assert c.allowed().banned == IDS.markup


def test_a_title_may_not_hold_a_banned_character():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), not_in_title=frozenset({7, 8}))
    c = C.Constraint(ids)
    assert not c.allowed().banned & {7, 8}  # serial text may hold them
    c.advance(ids.title)
    assert {7, 8} <= c.allowed().banned
    c.advance(5)
    assert {7, 8} <= c.allowed().banned and ids.end_title not in c.allowed().banned
    c.advance(ids.end_title)
    c.advance(ids.para)
    assert not c.allowed().banned & {7, 8}  # nor branch bodies


def test_a_block_opens_and_grows_only_while_each_branch_has_room():
    need = C.MIN_BRANCH_TOKENS
    c = C.Constraint(IDS)
    assert IDS.title not in c.allowed(tokens_left=2 * need).banned  # room for two branches: may fork
    assert IDS.title in c.allowed(tokens_left=2 * need - 1).banned  # not near the end of the budget
    assert IDS.title not in c.allowed().banned  # no budget given: unbounded
    for _ in range(3):
        c.advance(IDS.title)
        c.advance(7)
        c.advance(IDS.end_title)
    assert c.allowed(tokens_left=4 * need).only == {IDS.title, IDS.para}  # a 4th branch fits
    assert c.allowed(tokens_left=4 * need - 1).only == {IDS.para}  # it does not: the block closes
    c = C.Constraint(IDS)
    c.advance(IDS.title)
    c.advance(7)
    c.advance(IDS.end_title)
    assert c.allowed(tokens_left=1).only == {IDS.title}  # a block needs two titles, whatever is left


def test_a_block_opens_only_after_a_newline_of_the_answer():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), line_end=frozenset({10}))
    c = C.Constraint(ids)
    assert ids.title in c.allowed().banned  # not where the caller says no line starts
    c.advance(5)
    assert ids.title in c.allowed().banned  # nor mid-line
    c.advance(10)  # "\n"
    assert ids.title not in c.allowed().banned
    c.advance(5)
    assert ids.title in c.allowed().banned
    assert ids.title not in C.Constraint(IDS).allowed().banned  # no line ends known: the rule is off


def test_a_line_opens_after_any_newline_a_chat_header_included():
    ids = P.SpecialIds(title=100, end_title=101, para=102, branch=103, end_branch=104, end_para=105,
                       eos=frozenset({0}), line_end=frozenset({10}), template=frozenset({90}))
    assert C.opens_line([5, 6, 10], ids)  # a program's "Tips:\n"
    assert not C.opens_line([5, 6], ids) and not C.opens_line([], ids)
    assert C.opens_line([10, 90, 7, 10], ids)  # "<|im_start|>assistant\n": an answer may open with its block
    assert C.opens_line([90, 7, 10, 5, 10], ids)  # a line of text after the header
    assert not C.opens_line([5, 10], IDS)  # no line ends known
    # an answer starts after the header line only
    assert C.answer_start([10, 90, 7, 10], ids) and C.answer_start([90, 10], ids)
    assert not C.answer_start([90, 7, 10, 5, 10], ids) and not C.answer_start([5, 6, 10], ids)
    assert not C.answer_start([90, 7], ids) and not C.answer_start([90, 10], IDS)
