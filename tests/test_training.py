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
