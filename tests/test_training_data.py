"""The training data: the prompt set and its splits, the training draw, the generation order, and the
answers steered into lists (own-intro steering) as the data keeps them."""

from __future__ import annotations

import pytest

from runtime import protocol as P
from runtime.engine import Engine


def test_prompt_set_is_large_unique_and_clean():
    from training.prompts import build

    b = build(seed=0)
    prompts = b["train"] + b["eval"]
    kinds = [p.kind for p in prompts]
    assert kinds.count("listlike") >= 2800 and kinds.count("other") >= 1300
    assert len({p.id for p in prompts}) == len(prompts) == len({p.text for p in prompts})
    for p in prompts:
        if p.source != "seed":
            assert "{" not in p.text and " a a " not in p.text and " a an " not in p.text, p.text


def test_added_prompt_tables_leave_the_first_set_and_its_splits_unchanged():
    import random

    from training.prompts import LISTLIKE_V2, OTHER_V2, benchmark_questions, build, dedup, seeds, synthesise

    b = build(seed=0)
    first, _, _ = dedup(seeds() + synthesise(random.Random(0)), benchmark_questions())
    held = {p.id for p in b["eval"] + b["calib"]}
    added = {f"template:{n}" for n in (*LISTLIKE_V2, *OTHER_V2)}
    assert not any(p.source in added for p in b["eval"] + b["calib"])
    assert {p.id for p in b["train"] if p.source not in added} == {p.id for p in first} - held
    assert sum(p.source in added for p in b["train"]) >= 500


def test_prose_form_requests_stay_list_like_but_are_never_steered():
    """Letters, emails, speeches, reviews and self-introductions keep their list-like kind (their
    paragraph runs may become blocks) but get no forced list start; the other list-like prompts do."""
    from training.prompts import DATA, PROSE_FORM, read
    from training.steering import opening, steered

    prompts = read(DATA / "prompts_train.jsonl")
    prose = [p for p in prompts if p.source.removeprefix("template:") in PROSE_FORM]
    assert len(prose) >= 300 and all(p.kind == "listlike" and not steered(p) and not opening(p) for p in prose)
    listy = [p for p in prompts if p.kind == "listlike" and p not in prose]
    assert len(listy) >= 2500 and all(steered(p) and opening(p).endswith("**") for p in listy)
    assert not any(steered(p) or opening(p) for p in prompts if p.kind == "other")


def test_balanced_draw_round_robins_prompt_families():
    from training.dataset import balanced, family

    rows = [{"id": f"tips-{i}"} for i in range(10)] + [{"id": f"roleplay-{i}"} for i in range(2)] + [
        {"id": "seed-3"}, {"id": "user-0"}]
    assert family("roleplay-12") == "roleplay" and family("some-family-3") == "some-family"
    got = [r["id"] for r in balanced(rows, 8)]
    assert got == ["tips-0", "roleplay-0", "seed-3", "user-0", "tips-1", "roleplay-1", "tips-2", "tips-3"]
    assert len(balanced(rows, 100)) == len(rows) and balanced([], 5) == []


def test_the_training_draw_takes_every_parallel_row_and_a_seeded_share_of_serial_ones():
    from training.dataset import draw

    rows = [{"id": f"tips-{i}", "parallel": i % 2 == 0} for i in range(20)] + [
        {"id": f"math-{i}", "parallel": False} for i in range(20)]
    got = draw(rows, seed=3)
    assert sum(r["parallel"] for r in got) == 10 and len(got) == 20  # serial ratio 1.0
    assert [r["id"] for r in got] == [r["id"] for r in draw(rows, seed=3)]  # the same draw, run after run
    assert [r["id"] for r in got] != [r["id"] for r in draw(rows, seed=4)]
    assert len(draw(rows, seed=3, serial_ratio=0.5)) == 15 and len(draw(rows, seed=3, n=7, balance=True)) == 7


def test_interleaved_generation_order_round_robins_sources():
    from training.prompts import Prompt
    from training.responses import interleaved

    ps = [Prompt(f"a{i}", "x", "listlike", "a") for i in range(3)] + [Prompt("b0", "y", "other", "b")]
    assert [p.id for p in interleaved(ps)] == ["a0", "b0", "a1", "a2"]


def test_a_steered_answer_is_trained_without_its_intro_and_opens_with_its_block(tiny, tmp_path):
    """The steering's intro line is cut, so a parallel training answer's first token is `<|title|>`
    (the fork decision the offset acts on); an unsteered answer is kept whole."""
    import json

    from training.dataset import make
    from training.steering import answer

    listy = ("Here are the key points:\n\n**a b**: greens and beans every day, and fruit.\n\n"
             "**c d**: a lot at night, and naps after lunch too.\n\n"
             "**e f**: an hour outside every day, rain or shine.\n\nThat is all.")
    serial = "Two plus two is four.\n\nSo the answer is 4."
    rows = [{"id": "tips-1", "kind": "listlike", "prompt": "tips?", "opening": "Here are the key points:\n\n**",
             "response": listy, "finish_reason": "stop"},
            {"id": "arith-1", "kind": "other", "prompt": "2+2?", "opening": "", "response": serial,
             "finish_reason": "stop"}]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make(tiny, tmp_path / "responses.jsonl", tmp_path, threshold=None, log=lambda _: None)
    got = {r["id"]: r for r in map(json.loads, (tmp_path / "dataset.jsonl").read_text().splitlines())}
    assert got["tips-1"]["parallel"] and got["tips-1"]["markup"].startswith(P.TITLE)
    assert P.parse(got["tips-1"]["markup"]).plain_text() == listy.removeprefix("Here are the key points:\n\n")
    assert got["arith-1"]["markup"] == serial and not got["arith-1"]["parallel"]
    assert answer("Let's go:\n\n**A**", "Here's an overview:\n\n**") == "Let's go:\n\n**A**"  # not its intro
    assert answer("1. **A**: a.", "1. **") == "1. **A**: a."  # an opening without an intro line


def test_own_intro_answers_start_with_the_models_own_first_line_and_keep_it(tiny, tmp_path):
    """Own-intro generation: a list-like answer opens with what the model writes first unsteered (up
    to its line break), then the forced list start; only that start is recorded as forced, so the
    data keeps the intro. Other prompts stay unsteered."""
    import json

    from runtime.sampling import SamplingParams
    from training.prompts import Prompt
    from training.responses import INTRO, generate
    from training.steering import answer

    eng = Engine(tiny)
    ps = [Prompt("ways-1", "some ways", "listlike", "t"), Prompt("tips-1", "give tips", "listlike", "t"),
          Prompt("arith-1", "two plus two", "other", "a")]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    assert generate(eng, ps, tmp_path / "r.jsonl", params, batch=2, own_intro=True) == 3
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    first = {p.id: eng.generate(eng.new_sequence(eng.chat_prompt(p.text)), INTRO, "ar").text for p in ps[:2]}
    assert first == {"ways-1": "e", "tips-1": "666."}  # the tiny model's first lines: a word, an item number
    ways, tips = rows["ways-1"], rows["tips-1"]
    assert (ways["intro"], ways["opening"]) == ("e", "\n\n1. **") and ways["response"].startswith("e\n\n1. **")
    assert (tips["intro"], tips["opening"]) == ("", "1. **") and tips["response"].startswith("1. **")
    for r in (ways, tips):
        assert answer(r["response"], r["opening"]) == r["response"]  # the data keeps all of it
    assert rows["arith-1"]["opening"] == "" and rows["arith-1"]["intro"] == ""
    assert generate(eng, ps, tmp_path / "r.jsonl", params, batch=2, own_intro=True) == 0  # resumes: all done


@pytest.mark.parametrize(("own", "want"), [
    ("Stress is normal. Here is how to cope:\n\n1. Sleep", "Stress is normal. Here is how to cope:\n\n1. **"),
    ("1. **Sleep**: rest.", "1. **"),  # it opens with a list itself: no intro to keep
    ("## Plan\nx", "1. **"),
    ("Long. " + "x" * 400, "Long.\n\n1. **"),  # a long first line: its first sentence
])
def test_own_opening_keeps_the_base_models_first_line_before_the_list(own, want):
    from training.steering import own_opening

    assert own_opening(own) == want
    # a line the token cap cut keeps its first sentence only, and one with none is no intro
    assert own_opening("It was red. I'm not sure if", capped=True) == "It was red.\n\n1. **"
    assert own_opening("I'm not sure if", capped=True) == "1. **"
