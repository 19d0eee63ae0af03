"""Pure protocol tests: grammar and layout (mask + positions). No torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime import protocol as P
from runtime.protocol import Branch, ParallelBlock, Response, SerialSegment, Tag, parse
from runtime.stops import sentence_cut

ROOT = Path(__file__).resolve().parents[1]

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


def test_answer_text_adds_no_empty_line_after_a_block_and_nothing_at_the_end():
    """The text after a block may start its own line ("\n\nIn short"): no break more. A block that
    ends the answer adds nothing after it; one followed by text on the same line still gets its break."""
    block = ParallelBlock(branches=(Branch(title="1. A", body=" 1. **A**: a.\n"),
                                    Branch(title="2. B", body=" 2. **B**: b.")))
    assert Response(segments=(block, SerialSegment(text="\n\nIn short, ab."))).answer_text() == \
        "1. **A**: a.\n2. **B**: b.\n\nIn short, ab."
    ab = "1. **A**: a.\n2. **B**: b."
    assert Response(segments=(SerialSegment(text="Tips:\n"), block)).answer_text() == "Tips:\n" + ab
    assert Response(segments=(block, SerialSegment(text="Done."))).answer_text() == ab + "\nDone."
    assert Response(segments=(block, block)).answer_text() == ab + "\n" + ab


def test_every_parallel_training_answer_reads_as_its_plain_text():
    """What the model learnt is what a reader gets: the shipped data's answers, rendered for a reader,
    are the base model's answers they were cut from (no added leads, breaks or empty lines)."""
    rows = [json.loads(x) for x in (ROOT / "data" / "aspd" / "dataset.jsonl").read_text().splitlines()]
    parallel = [parse(r["markup"]) for r in rows if r["parallel"]]
    assert len(parallel) > 500
    assert [r.answer_text() for r in parallel] == [r.plain_text() for r in parallel]


@pytest.mark.parametrize("pieces, kept", [
    (["He", " came", " in", " 2020", ".", " Then", " we"], "He came in 2020."),
    (["Say", ' "hi', '."', " and"], 'Say "hi."'),
    (["a", "\n", "2", "."], "a\n"),  # an item's number ends no sentence
    (["Go", "!\n", "more"], "Go!\n"),
    (["1", ".", " **X**", ":", " go"], "1. **X**: go"),  # no sentence end at all: all of it
])
def test_sentence_cut_keeps_up_to_the_last_sentence_end(pieces, kept):
    assert "".join(pieces[:sentence_cut("".join, pieces)]) == kept


def test_a_branch_that_ends_mid_line_is_broken_off_in_its_blocks_spacing():
    """Items spaced by empty lines keep them where a branch stopped mid-line; a block without one ends
    such a branch with a newline."""
    spaced = ParallelBlock(branches=(Branch(title="1. A", body=" 1. **A**: a.\n\n"),
                                     Branch(title="2. B", body=" 2. **B**: b."),
                                     Branch(title="3. C", body=" 3. **C**: c.\n\n")))
    assert Response(segments=(spaced, SerialSegment(text="Done."))).answer_text() == \
        "1. **A**: a.\n\n2. **B**: b.\n\n3. **C**: c.\n\nDone."
    assert Response(segments=(spaced, spaced)).answer_text() == "1. **A**: a.\n\n2. **B**: b.\n\n3. **C**: c.\n\n" * 2
    mixed = ParallelBlock(branches=(Branch(title="1. A", body=" 1. **A**: a.\n\n"),
                                    Branch(title="2. B", body=" 2. **B**: b.\n"),
                                    Branch(title="3. C", body=" 3. **C**: c.")))
    assert Response(segments=(mixed, SerialSegment(text="Done."))).answer_text() == \
        "1. **A**: a.\n\n2. **B**: b.\n3. **C**: c.\nDone."
