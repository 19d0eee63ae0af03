"""Training on the tiny model: samples carry the engine's mask and positions, the loss is the one
inference's logits give, and training resumes from its checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch

from runtime import protocol as P
from runtime.engine import Engine
from training.extract import find_groups, rewrite
from training.samples import IGNORE, build
from training.train import TrainConfig, batch_loss, lora, sample_loss, train

TEXT = ("tips:\n\n1. eat well: greens and beans every day.\n2. sleep: a lot at night, and naps too.\n"
        "3. walk: an hour outside, rain or shine.\n\nbye")


@pytest.fixture
def sample(tiny):
    def enc(t):
        return tiny.tokenizer.encode(t, add_special_tokens=False)

    resp = rewrite(TEXT, find_groups(TEXT))
    assert len(resp.blocks) == 1
    return build(enc("q: "), resp, enc, tiny.ids, eos=0)


def test_sample_uses_the_protocol_and_masks_what_the_engine_feeds(tiny, sample):
    assert sample.positions == P.layout(sample.tags)
    seeds = [i for i, t in enumerate(sample.ids) if t == tiny.ids.branch]
    assert len(seeds) == 3 and all(sample.labels[i] == IGNORE for i in seeds)  # <|branch|>T: is fed, not learnt
    end_para = sample.ids.index(tiny.ids.end_para)
    assert sample.labels[end_para] == IGNORE
    assert sample.labels[sample.ids.index(tiny.ids.para)] == tiny.ids.para  # the header is learnt
    assert sample.labels[-1] == 0  # EOS
    assert all(lab == IGNORE for lab in sample.labels[:sample.prompt_len])


def test_training_loss_equals_the_loss_of_inference_logits(tiny, sample):
    """A fresh LoRA is the identity, so the training forward must give exactly the logits of the
    engine's reference forward with the protocol mask and positions (which the block tests equal to
    the engine's incremental decoding and joins)."""
    model = copy.deepcopy(tiny.model)
    pm = lora(model, tiny.ids, TrainConfig(rank=4))
    ref = Engine(tiny, fast=False).runner.full_forward(sample.ids, sample.tags, sample.positions)
    want = torch.nn.functional.cross_entropy(ref[:-1], torch.tensor(sample.labels[1:]), ignore_index=IGNORE)
    with torch.no_grad():
        got = sample_loss(pm, sample)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_padded_batch_gives_each_sample_its_own_loss(tiny, sample):
    def enc(t):
        return tiny.tokenizer.encode(t, add_special_tokens=False)

    short = build(enc("q: "), P.parse("just one line."), enc, tiny.ids, eos=0)
    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    w = torch.ones(vocab)
    w[sorted(tiny.ids.markup)] = 3.0
    with torch.no_grad():
        for weights in (None, w):
            want = (sample_loss(pm, sample, weights) + sample_loss(pm, short, weights)) / 2
            torch.testing.assert_close(batch_loss(pm, [short, sample], weights), want, atol=1e-5, rtol=0)


def test_training_steps_lower_the_loss_and_resume(tiny, sample, tmp_path):
    cfg = TrainConfig(rank=4, lr=5e-3, accum=1, epochs=6, checkpoint_every=3, warmup=1)
    pm, hist = train(copy.deepcopy(tiny.model), tiny.ids, [sample], tmp_path, cfg, log=lambda *_: None)
    assert hist.step == 6 and hist.losses[-1] < hist.losses[0]
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable) and any("lora_A" in n for n in trainable)
    assert not any(n.endswith("embed_tokens.weight") for n in trainable)  # only the six rows, not the matrix
    _, again = train(copy.deepcopy(tiny.model), tiny.ids, [sample], tmp_path, cfg, log=lambda *_: None)
    assert again.step == 6 and again.losses == hist.losses  # resumed from the checkpoint: nothing redone
    other = TrainConfig(rank=4, lr=1e-3, accum=1, epochs=6, checkpoint_every=3, warmup=1)
    with pytest.raises(ValueError, match="another run"):  # another run's checkpoint is never resumed
        train(copy.deepcopy(tiny.model), tiny.ids, [sample], tmp_path, other, log=lambda *_: None)


def test_saved_adapter_merges_to_the_trained_model(tiny, sample, tmp_path):
    from runtime.model_loader import apply_adapter
    from training.card import write
    from training.train import save_adapter

    cfg = TrainConfig(rank=4, lr=5e-3, accum=1, epochs=3, warmup=1)
    pm, hist = train(copy.deepcopy(tiny.model), tiny.ids, [sample], tmp_path / "ckpt", cfg, log=lambda *_: None)
    ids = torch.tensor(sample.ids)[None]
    with torch.no_grad():
        trained = pm(input_ids=ids).logits
    save_adapter(pm, tmp_path / "adapter", hist, cfg, {"samples": 1, "parallel_samples": 1})
    assert "1 parallel" in write(tmp_path / "adapter").read_text()
    merged, _ = apply_adapter(copy.deepcopy(tiny.model), str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-5, rtol=0)
    rows = sorted(tiny.ids.markup)
    assert not torch.equal(merged.get_input_embeddings().weight[rows], tiny.model.get_input_embeddings().weight[rows])


def test_markup_weighting(tiny, sample):
    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        plain = sample_loss(pm, sample)
        torch.testing.assert_close(sample_loss(pm, sample, torch.ones(vocab)), plain)
        w = torch.ones(vocab)
        w[sorted(tiny.ids.markup)] = 5.0
        assert not torch.allclose(sample_loss(pm, sample, w), plain)


def test_the_anchor_is_the_kl_to_the_model_without_its_adapter(tiny, sample):
    """On a serial answer the anchored loss mixes in KL(base || adapted), the base being the model
    with the adapter off and its markup logits removed; answers with a block keep the plain loss."""
    from training.train import Anchor

    def enc(t):
        return tiny.tokenizer.encode(t, add_special_tokens=False)

    serial = build(enc("q: "), P.parse("just one line, and then a second one."), enc, tiny.ids, eos=0)
    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))
    markup = frozenset(tiny.ids.markup)
    with torch.no_grad():
        for name, p in pm.named_parameters():  # move the adapter away from the identity
            if "lora_B" in name or "trainable_tokens" in name:
                p.add_(0.05 * torch.randn_like(p))
        full = Anchor(1.0, tiny.ids)
        ids = torch.tensor(serial.ids)[None]
        adapted = pm(input_ids=ids).logits[0, :-1].float()
        base = tiny.model(input_ids=ids).logits[0, :-1].float()  # what the adapter started from
        base[:, sorted(markup)] = float("-inf")
        labelled = torch.tensor(serial.labels[1:]) != IGNORE
        logp = torch.log_softmax(base, -1)
        kl = (logp.exp() * (logp.nan_to_num(neginf=0.0) - torch.log_softmax(adapted, -1))).sum(-1)
        want = kl[labelled].mean()
        torch.testing.assert_close(sample_loss(pm, serial, anchor=full), want, atol=1e-5, rtol=1e-4)
        assert want > 1e-3
        half = sample_loss(pm, serial, anchor=Anchor(0.5, tiny.ids))
        torch.testing.assert_close(half, (sample_loss(pm, serial) + want) / 2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sample_loss(pm, sample, anchor=full), sample_loss(pm, sample))


def test_the_reading_order_is_the_answer_text_without_markup_titles_or_seeds(tiny, sample):
    """What the branch anchor's base model reads: the prompt, then the answer's text piece by piece
    (serial text, each branch's body), and the restated title line of each body is marked."""
    from training.samples import reading_order

    def enc(t):
        return tiny.tokenizer.encode(t, add_special_tokens=False)

    resp = rewrite(TEXT, find_groups(TEXT))
    order, restated = reading_order(sample, tiny.ids)
    bodies = [enc(b.body) for seg in resp.blocks for b in seg.branches]
    assert all(b[0] == tiny.ids.space for b in bodies)  # "title: body": the space is read as no text
    bodies = iter(b[1:] for b in bodies)
    pieces = [enc(seg.text) if isinstance(seg, P.SerialSegment) else [t for _ in seg.branches for t in next(bodies)]
              for seg in resp.segments]
    assert [sample.ids[j] for j in order] == enc("q: ") + [t for p in pieces for t in p] + [0]
    bodies = [j for j in order if sample.tags[j].block > 0]
    firsts = {sample.tags[j]: j for j in reversed(bodies)}.values()  # each branch's first token read
    assert len(firsts) == 3 and all(j in restated for j in firsts)  # every body opens restating its title
    assert restated < set(bodies) and len(restated) < len(bodies)  # the rest of each body is read


def test_the_branch_anchor_reads_the_joined_text(tiny, sample):
    """With `branches`, a body token's loss is KL(base || adapted), the base reading the answer's text
    with the earlier siblings' bodies, which the branch itself does not see; markup and restated
    titles keep their label."""
    from runtime.model_runner import sequence_mask
    from training.samples import reading_order
    from training.train import Anchor

    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                p.add_(0.05 * torch.randn_like(p))
        plain = sample_loss(pm, sample)
        got = sample_loss(pm, sample, anchor=Anchor(1.0, tiny.ids, branches=1.0))
        assert not torch.allclose(got, plain)
        # by hand: the base reads the text as one sequence; the adapter its own masked sample
        order, restated = reading_order(sample, tiny.ids)
        text = torch.tensor([sample.ids[j] for j in order])[None]
        base = tiny.model(input_ids=text).logits[0].float()
        base[:, sorted(tiny.ids.markup)] = float("-inf")
        ids = torch.tensor(sample.ids)[None]
        logits = pm(input_ids=ids, position_ids=torch.tensor(sample.positions)[None],
                    attention_mask=sequence_mask(sample.tags),
                    use_cache=False).logits[0].float()
        labels = torch.tensor(sample.labels[1:])
        per = torch.nn.functional.cross_entropy(logits[:-1], labels, ignore_index=IGNORE, reduction="none")
        read = {j: r for r, j in enumerate(order)}
        kls = 0
        for j in range(sample.prompt_len, len(sample.ids)):
            if j not in read or sample.labels[j] == IGNORE or j in restated or sample.ids[j] in tiny.ids.markup:
                continue
            logp = torch.log_softmax(base[read[j] - 1], -1)
            per[j - 1] = (logp.exp() * (logp.nan_to_num(neginf=0.0) - torch.log_softmax(logits[j - 1], -1))).sum()
            kls += 1
        assert kls > 10 and any(sample.tags[j].branch > 1 for j in read if j not in restated)
        torch.testing.assert_close(got, per[labels != IGNORE].mean(), atol=1e-5, rtol=1e-4)
        half = sample_loss(pm, sample, anchor=Anchor(1.0, tiny.ids, branches=0.5))  # mixed with the label loss
        torch.testing.assert_close(half, (got + plain) / 2, atol=1e-5, rtol=1e-4)


def test_the_blind_branch_anchor_reads_each_body_alone(tiny, sample):
    """With `blind`, only branch bodies are anchored, each to the base model reading the text before its
    block and then that body alone (none of its siblings, as the branch is decoded); serial text keeps
    its label."""
    from runtime.model_runner import sequence_mask
    from training.samples import branch_token_spans, reading_order
    from training.train import Anchor

    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                p.add_(0.05 * torch.randn_like(p))
        got = sample_loss(pm, sample, anchor=Anchor(1.0, tiny.ids, branches=1.0, blind=True))
        joined = sample_loss(pm, sample, anchor=Anchor(1.0, tiny.ids, branches=1.0))
        assert not torch.allclose(got, joined)
        order, restated = reading_order(sample, tiny.ids)
        (spans,) = branch_token_spans(sample)  # one block: each view is the text before it, then one body
        shared = [j for j in order if j < spans[0][0]]
        views = [(shared + [j for j in order if a <= j < b], range(a, b)) for a, b in spans]
        assert len(views) == 3 and all(v[:len(shared)] == shared and v[len(shared):] for v, _ in views)
        logits = pm(input_ids=torch.tensor(sample.ids)[None], position_ids=torch.tensor(sample.positions)[None],
                    attention_mask=sequence_mask(sample.tags), use_cache=False).logits[0].float()
        labels = torch.tensor(sample.labels[1:])
        per = torch.nn.functional.cross_entropy(logits[:-1], labels, ignore_index=IGNORE, reduction="none")
        kls = 0
        for view, span in views:
            assert all(j not in view for j in range(len(sample.ids)) if sample.tags[j].block > 0 and j not in span)
            base = tiny.model(input_ids=torch.tensor([sample.ids[j] for j in view])[None]).logits[0].float()
            base[:, sorted(tiny.ids.markup)] = float("-inf")
            for r, j in enumerate(view):
                if j not in span or sample.labels[j] == IGNORE or j in restated or sample.ids[j] in tiny.ids.markup:
                    continue
                logp = torch.log_softmax(base[r - 1], -1)
                per[j - 1] = (logp.exp() * (logp.nan_to_num(neginf=0.0) - torch.log_softmax(logits[j - 1], -1))).sum()
                kls += 1
        assert kls > 5
        torch.testing.assert_close(got, per[labels != IGNORE].mean(), atol=1e-5, rtol=1e-4)

def test_the_blind_anchor_of_a_body_does_not_read_its_siblings(tiny, sample):
    """Blind, a branch's anchor target does not change with an earlier sibling's text (the base reads the
    block with the protocol's mask, as decoded); joined, it does: a check that can fail."""
    import dataclasses

    from runtime.model_runner import sequence_mask
    from training.samples import branch_token_spans, reading_order
    from training.train import Anchor, _base_kl

    order, restated = reading_order(sample, tiny.ids)
    (spans,) = branch_token_spans(sample)
    ids, labels = list(sample.ids), list(sample.labels)
    for j in order:  # every word of the first branch's body, another
        if spans[0][0] <= j < spans[0][1] and j not in restated:
            ids[j] = labels[j] = next(t for t in range(5, 50) if t != ids[j] and t not in tiny.ids.markup)
    other = dataclasses.replace(sample, ids=ids, labels=labels)
    pm = lora(copy.deepcopy(tiny.model), tiny.ids, TrainConfig(rank=4))

    def kl(s, blind):
        with torch.no_grad():
            logits = pm(input_ids=torch.tensor(s.ids)[None], position_ids=torch.tensor(s.positions)[None],
                        attention_mask=sequence_mask(s.tags), use_cache=False).logits.float()
            ((_, at, got),) = _base_kl(pm, [s], [0], logits, Anchor(1.0, tiny.ids, 1.0, blind))
        return {a: v for a, v in zip(at.tolist(), got.tolist()) if a + 1 >= spans[1][0]}  # later siblings' tokens

    blind, moved = kl(sample, True), kl(other, True)
    assert blind and blind.keys() == moved.keys()
    assert all(abs(blind[a] - moved[a]) < 1e-5 for a in blind)  # bodies only, none reads branch 1
    joined, moved = kl(sample, False), kl(other, False)
    assert any(abs(joined[a] - moved[a]) > 1e-3 for a in joined if a + 1 < spans[-1][1])


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

    from runtime.engine import Engine
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


@pytest.mark.parametrize(("cuda", "avx512_bf16", "amx", "want"), [
    (False, False, False, "float32"), (False, True, False, "bfloat16"), (False, False, True, "bfloat16"),
    (True, False, False, "bfloat16")])
def test_training_runs_bf16_only_where_the_hardware_computes_in_it(monkeypatch, cuda, avx512_bf16, amx, want):
    from runtime import autotune
    from runtime.model_loader import training_dtype

    flags = ["avx", "avx2", "fma"] + ["avx512_bf16", "avx512f"] * avx512_bf16 + ["amx_bf16", "amx_tile"] * amx
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(autotune, "cpu_flags", lambda: sorted(flags))
    assert training_dtype() == want
