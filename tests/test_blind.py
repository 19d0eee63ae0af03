"""Data v4 (`training/blind.py`): branch bodies re-written blind keep the answer's titles, serial text
and each branch's lead; the run resumes; the assembled build trains and its stats make a model card."""

from __future__ import annotations

import json
from pathlib import Path

from runtime import protocol as P
from runtime.engine import Engine
from training import blind, card
from training.extract import find_groups, rewrite
from training.samples import build

SHIPPED = Path(__file__).parent.parent / "runtime" / "adapters" / "smollm2-135m-aspd"
TEXT = ("Tips:\n\n1. **Eat well**: greens and beans every day.\n\n2. **Sleep**: a lot at night.\n\n"
        "3. **Walk**: an hour outside.\n\nBye.")


def test_the_lead_a_blind_body_goes_on_from():
    assert blind.lead(P.Branch(title="1. Eat well", body=" 1. **Eat well**: greens")) == " 1. **Eat well**:"
    assert blind.lead(P.Branch(title="1. Fuel", body=" 1. **Fuel** - Coal burns.")) == " 1. **Fuel** -"
    assert blind.lead(P.Branch(title="The film is a", body=" * The film is a thriller.")) == " * The film is a"
    assert blind.lead(P.Branch(title="Sleep", body=" Rest is good.")) is None  # no lead: the body stays
    assert blind.blind_body(" one.\n* two", "*") == " one." and blind.blind_body(" one.\n* two") == " one.\n* two"
    assert blind.blind_body(" see <|para|> here") == ""


def test_a_block_reads_the_text_before_it_and_rebuild_keeps_all_but_the_bodies():
    resp = rewrite(TEXT, find_groups(TEXT))
    assert len(resp.blocks) == 1 and len(resp.blocks[0].branches) == 3
    s = next(i for i, g in enumerate(resp.segments) if isinstance(g, P.ParallelBlock))
    assert blind.before(resp, s) == "Tips:\n\n"
    new = blind.rebuild(resp, {(s, 0): " fruit.", (s, 1): ""})  # an empty blind body keeps the old one
    again = P.parse(new.markup())
    assert again == new and again.blocks[0].titles == resp.blocks[0].titles
    old, got = resp.blocks[0].branches, again.blocks[0].branches
    assert got[0].body == " 1. **Eat well**: fruit." + old[0].body[len(old[0].body.rstrip()):]
    assert got[1:] == old[1:]
    assert [g for g in new.segments if isinstance(g, P.SerialSegment)] == \
        [g for g in resp.segments if isinstance(g, P.SerialSegment)]


def test_generate_resumes_and_the_assembled_build_trains(tiny, tmp_path):
    resp = rewrite(TEXT, find_groups(TEXT))
    rows = [{"id": "tips-1", "kind": "listlike", "prompt": "Tips?", "markup": resp.markup(), "complete": True,
             "parallel": True},
            {"id": "math-1", "kind": "other", "prompt": "2+2?", "markup": "4.", "complete": True, "parallel": False}]
    eng = Engine(tiny)
    out = tmp_path / "blind.jsonl"
    assert blind.generate(eng, rows, out, batch=4, log=lambda _: None) == 1
    assert blind.generate(eng, rows, out, batch=4, log=lambda _: None) == 0  # resumed: nothing left
    with open(out, "a") as f:
        f.write('{"id": "tips-2", "mark')  # a run killed mid-line: its row is not counted as written
    assert blind.done_ids(out) == {"tips-1"}
    source = {"steps": {"generated": 2}, "ppd": 0.5, "parallel_degree": 0.4, "mean_branches_per_group": 3.0,
              "threshold_nats_per_token": None}
    stats = blind.assemble(rows, out, tmp_path, source)
    assert stats["blind"] == 1 and stats["branches"] == 3 and stats["rows"] == 2
    # the source build's stats kept, this step's under "blind": the model card reads both
    assert json.loads((tmp_path / "data_stats.json").read_text()) == {**source, "blind": stats}
    rec = json.loads((SHIPPED / "training.json").read_text())
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "training.json").write_text(json.dumps({**rec, "data_stats": {**source, "blind": stats}}))
    assert "re-written blind" in card.write(tmp_path / "card").read_text()
    got = [json.loads(x) for x in (tmp_path / "dataset.jsonl").read_text().splitlines()]
    assert got[1] == rows[1] and got[0]["id"] == "tips-1"
    new = P.parse(got[0]["markup"])
    assert new.blocks[0].titles == resp.blocks[0].titles
    assert all(b.body.startswith(blind.lead(o)) for b, o in zip(new.blocks[0].branches, resp.blocks[0].branches))

    def enc(t):
        return tiny.tokenizer.encode(t, add_special_tokens=False)

    sample = build(enc("q: "), new, enc, tiny.ids, eos=0)
    assert sample.positions == P.layout(sample.tags)
