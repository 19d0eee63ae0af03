"""Extraction of parallel groups and the lossless rewrite into markup (pure, hand-written answers)."""

from __future__ import annotations

from runtime import protocol as P
from training.extract import find_groups, loops, rewrite, thin, tidy, trim_to_line

NUMBERED = """Here are some tips:

1. **Sleep**: get eight hours.
2. **Water**: drink often, even when you are not thirsty.
   - a nested bullet stays inside item 2
   - and so does this one
3. **Walk**: every day, for at least twenty minutes.

Good luck!"""

HEADINGS = """# Travel

## Packing
Bring light clothes and a good pair of shoes.

## Money
Carry a card and a little cash for small shops.

## Health
Pack your usual medicine and a small first-aid kit.

Enjoy the trip."""

CODE = """Use this:

```python
1. not a list item
2. still code
```

Then run it."""

ESSAY = """Exercise has many benefits for the mind and the body.

One benefit is better sleep, because tired muscles rest deeply at night and wake up refreshed.

Another benefit is a stronger heart, which pumps more blood with less effort at every beat.

Finally, exercise lifts the mood by releasing endorphins, which makes stress easier to handle.

In conclusion, move a little every day."""


def roundtrip(text: str) -> P.Response:
    resp = rewrite(text, find_groups(text))
    assert resp.plain_text() == text  # lossless
    assert P.parse(resp.markup()) == resp  # well-formed markup, format identity
    return resp


def test_numbered_list_with_nested_bullets_left_inside_their_item():
    resp = roundtrip(NUMBERED)
    [block] = resp.blocks
    assert block.titles == ("1. Sleep", "2. Water", "3. Walk")  # the number rides in the title
    assert "nested bullet" in block.branches[1].text and block.branches[2].text.startswith("3. **Walk**")
    assert resp.segments[0].text == "Here are some tips:\n\n" and resp.segments[-1].text == "\n\nGood luck!"


def test_heading_sections():
    [block] = roundtrip(HEADINGS).blocks
    assert block.titles == ("Packing", "Money", "Health")


def test_code_blocks_are_left_alone():
    resp = roundtrip(CODE)
    assert resp.blocks == []


def test_paragraph_runs_without_intro_and_conclusion():
    [block] = roundtrip(ESSAY).blocks
    assert len(block.branches) == 3
    assert block.branches[0].text.startswith("One benefit") and block.branches[-1].text.startswith("Finally")
    assert all(len(t) < len(b.text) for t, b in zip(block.titles, block.branches))


def test_a_letters_paragraphs_stay_serial():
    letter = ("Dear neighbours,\n\nI am writing to tell you that the new branch library opens on Monday, with "
              "a reading room, a cafe and a garden.\n\nThe library will hold story hours for children every "
              "Saturday morning, run by volunteers from the street.\n\nI would like to thank everyone who "
              "signed the petition for it last year; it worked, and the council listened.\n\nBest wishes,\nSam")
    assert roundtrip(letter).blocks == []
    # the same run with impersonal openings is one block
    points = letter.replace("I am writing to tell you that", "Good news:").replace("I would like to", "Let us")
    assert len(roundtrip(points).blocks) == 1


def test_single_items_duplicate_titles_and_short_paragraphs_stay_serial():
    assert roundtrip("Just one line.\n\n1. only item").blocks == []
    assert roundtrip("Sum:\n\nFirst, 9 + 10 = 19.\n\nThen 19 / 2 = 9.5.\n\nSo 9.5.\n\nDone.").blocks == []
    assert roundtrip("x\n\n- same thing here\n- same thing here").blocks == []


def test_loops_and_trimming():
    looped = "I like tea very much indeed. " * 4
    assert loops(looped) and not loops(ESSAY)
    assert trim_to_line("first para\n\nsecond para cut mid-sen") == "first para"
    cut = "Tips:\n1. **A**: one.\n2. **B**: two.\n3. **C**: thr"
    assert trim_to_line(cut) == "Tips:\n1. **A**: one.\n2. **B**: two."
    assert trim_to_line("no line break") == ""


def test_pairs_stay_serial_and_titles_are_short():
    assert roundtrip("Two points:\n\n1. **Sleep**: get eight hours.\n2. **Water**: drink often.").blocks == []
    long = "\n".join(f"{i}. **Remember to always keep your {w} very clean**: wash it every week." for i, w in
                     enumerate(("desk", "room", "car"), start=1))
    [block] = roundtrip("Tips:\n\n" + long).blocks
    assert block.titles[0] == "1. Remember to always keep your desk"  # six words at most


def test_a_long_list_becomes_consecutive_blocks_with_a_serial_newline_between():
    items = "\n".join(f"{i}. **Point {i}**: something worth saying about it." for i in range(1, 13))
    resp = roundtrip("Twelve points:\n\n" + items + "\n\nDone.")
    assert [len(b.branches) for b in resp.blocks] == [6, 6]
    assert resp.blocks[1].titles[0] == "7. Point 7"
    between = resp.segments[resp.segments.index(resp.blocks[0]) + 1]
    assert between.text == "\n"  # a block may not open right after a join
    P.parse(resp.markup())  # well-formed


def test_a_list_of_bare_titles_is_not_worth_a_fork():
    bare = "Ideas:\n\n1. **Candles**\n2. **Soap**\n3. **Bread and jam**\n"
    [g] = find_groups(bare)
    assert thin(bare, g) == "bare_titles"
    full = "\n".join(f"{i}. **{w}**: a paragraph of eight words or more here." for i, w in
                     enumerate(("Candles", "Soap", "Bread"), start=1))
    assert [thin(full, g) for g in find_groups(full)] == [None]


def test_titles_that_restate_each_other_are_not_worth_a_fork():
    def items(*titles):
        return "\n".join(f"{i}. **{t}**: a paragraph of eight words or more on this point." for i, t in
                         enumerate(titles, start=1))

    alike = items("Elimination of Entertainment", "Elimination of Income", "Elimation of Entertainment")
    [g] = find_groups(alike)
    assert thin(alike, g) == "alike_titles"  # a misspelt copy of the first title
    plural = items("Parental choice", "Stronger bones", "Parental choices")
    assert thin(plural, find_groups(plural)[0]) == "alike_titles"
    honest = items("Plan your food", "Plan your gear", "Plan your budget")
    assert [thin(honest, g) for g in find_groups(honest)] == [None]


def test_tidy_repairs_a_bold_mark_opened_before_the_number():
    slip = "Key points:\n\n**1. **Sleep**: get eight hours.\n**2.** **Water**: drink.\n**3. **Walk**: daily."
    assert tidy(slip) == "Key points:\n\n1. **Sleep**: get eight hours.\n**2.** **Water**: drink.\n3. **Walk**: daily."
    assert tidy(NUMBERED) == NUMBERED


def test_titles_are_one_plain_line():
    text = "\n".join(f"{i}. **`{w}` [x] #{w}**: something worth saying about it, at length." for i, w in
                     enumerate(("a_b", "cd", "ef"), start=1))
    for title in roundtrip(text).blocks[0].titles:
        assert not set(title) & set(P.TITLE_BANNED_CHARS), title
