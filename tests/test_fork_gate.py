"""The fork gate: its logit-space read-out, its fit, and a chat answer's offset taken from it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from runtime import fork_gate
from runtime.engine import Engine
from runtime.fork_gate import GATE_FILE, ForkGate, logit_readout, offset
from runtime.roles import user_prompt
from runtime.sampling import SamplingParams
from tests.model_util import markup_heavy_engine, tiny_model
from training import gate as fit_gate


def test_readout_in_logit_space_equals_the_hidden_state_readout():
    torch.manual_seed(0)
    head, w = torch.randn(300, 16), torch.randn(16)
    h = torch.randn(5, 16)
    v = logit_readout(head, w)
    assert torch.allclose((h @ head.T) @ v, h @ w, atol=1e-3)


def test_offset_runs_from_low_to_high_with_the_probability():
    assert offset(-2.0, 10.0, 0.0) == -2.0 and offset(-2.0, 10.0, 1.0) == 10.0 and offset(-2.0, 10.0, 0.5) == 4.0
    g = ForkGate(readout=torch.zeros(4), intercept=0.0, low=-2.0, high=10.0)
    assert g.fork_bias(torch.randn(4)) == pytest.approx(4.0)
    assert ForkGate(torch.zeros(4), 80.0, -2.0, 10.0).fork_bias(torch.randn(4)) == pytest.approx(10.0)


def test_load_needs_the_weights_and_calibrated_offsets(tmp_path):
    head = torch.randn(30, 4)
    assert fork_gate.load(str(tmp_path), head, {"gate": {"low": 0, "high": 1}}) is None
    (tmp_path / GATE_FILE).write_text(json.dumps({"weights": [1.0, 0.0, 0.0, 0.0], "intercept": -0.5}))
    assert fork_gate.load(str(tmp_path), head, {"fork_bias": 3.0}) is None  # never calibrated with the gate
    g = fork_gate.load(str(tmp_path), head, {"gate": {"low": -1.0, "high": 9.0}})
    h = torch.randn(4)
    assert (g.low, g.high) == (-1.0, 9.0)
    assert g.probability(head @ h) == pytest.approx(float(torch.sigmoid(h[0] - 0.5)), abs=1e-4)


def test_fit_separates_separable_kinds_and_cross_validates():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = (x[:, 2] - 0.5 * x[:, 5] > 0).float()
    w, b = fit_gate.fit(x, y, 1e-3)
    assert fit_gate.accuracy(x, y, w, b) > 0.97
    assert fit_gate.cross_validate(x, y, 1e-3) > 0.9
    assert fit_gate.accuracy(x, 1 - y, w, b) < 0.1  # the labels matter


def test_train_gate_record_reads_back_through_the_loader(tmp_path):
    lm = tiny_model()
    prompts = [f"list {c} tips" for c in "abcdefghij"] + [f"add {d} and {d}" for d in "0123456789"]
    kinds = ["listlike"] * 10 + ["other"] * 10
    rec = fit_gate.train_gate(lm, prompts, kinds, log=lambda _: None)
    assert rec["train_accuracy"] == 1.0 and rec["prompts"] == 20
    p = fit_gate.probabilities(lm, prompts, rec)
    assert min(p[:10]) > 0.5 > max(p[10:])
    # padded batches give each prompt's own features
    feats = fit_gate.features(lm, prompts[:3], batch=3)
    assert torch.allclose(feats, fit_gate.features(lm, prompts[:3], batch=1), atol=1e-4)
    # in the prompts' order (batches run in length order): the full model's last hidden state
    mixed = [prompts[0], "a much longer prompt with many more words in it", prompts[10]]
    for f, text in zip(fit_gate.features(lm, mixed, batch=2), mixed):
        ids = torch.tensor([user_prompt(lm.tokenizer, text)])
        with torch.inference_mode():
            h = lm.model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(f, h.float(), atol=1e-4)
    (tmp_path / GATE_FILE).write_text(json.dumps(rec))
    # the tiny model's head has fewer rows than its hidden size: no exact read-out from its logits
    head = lm.model.get_output_embeddings().weight
    assert fork_gate.load(str(tmp_path), head, {"gate": {"low": 0, "high": 1}}) is None
    # a taller head (as every real model's) carries it: the same probabilities from the logits
    tall = torch.randn(200, head.shape[1])
    g = fork_gate.load(str(tmp_path), tall, {"gate": {"low": 0, "high": 1}})
    assert [g.probability(tall @ f) for f in feats] == pytest.approx(p[:3], abs=1e-4)


def test_a_rank_deficient_head_has_no_gate(tmp_path):
    (tmp_path / GATE_FILE).write_text(json.dumps({"weights": [1.0, 0.0], "intercept": 0.0}))
    assert fork_gate.load(str(tmp_path), torch.ones(10, 2), {"gate": {"low": 0, "high": 1}}) is None


def test_non_finite_logits_give_no_opinion():
    g = ForkGate(torch.ones(3), 0.0, -2.0, 10.0)
    assert g.probability(torch.tensor([1.0, float("nan"), 0.0])) == 0.5


def _gated(z: float, low: float = -100.0, high: float = 100.0, readout: torch.Tensor | None = None):
    """An engine whose tiny model reads "!" as a chat template's role marker, with a gate of logit `z`
    plus `readout . logits` (default: none, a constant gate)."""
    lm = markup_heavy_engine(seed=3, line_rule=True).loaded
    bang = lm.tokenizer.encode("!", add_special_tokens=False)[0]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    lm = dataclasses.replace(lm, ids=dataclasses.replace(lm.ids, template=frozenset({bang})),
                             gate=ForkGate(torch.zeros(vocab) if readout is None else readout, z, low, high))
    return Engine(lm)


def _answer(eng, prompt: str, **params):
    seq = eng.new_sequence(eng.encode(prompt))
    out = eng.generate(seq, SamplingParams(max_new_tokens=150, max_title_tokens=3, max_branches=2, **params), "aspd")
    eng.release(seq)
    return out


def test_a_chat_answer_takes_its_offset_from_the_gate():
    chat = "list tips\n!\n"  # the last line holds a template token: an answer starts here
    assert _answer(_gated(+50.0), chat).blocks  # gate sure it is list-like: offset +100
    never = _answer(_gated(-50.0), chat)  # sure it is not: -100, the AR answer
    assert not never.blocks
    eng = _gated(-50.0)
    seq = eng.new_sequence(eng.encode(chat))
    assert never.text == eng.generate(seq, SamplingParams(max_new_tokens=150), "ar").text
    assert _answer(_gated(-50.0), chat, fork_bias=100.0).blocks  # a request's own offset wins over the gate


def test_the_offset_is_read_from_the_answers_first_logits():
    eng = _gated(0.0, low=-3.0, high=5.0)
    chat = eng.encode("list tips\n!\n")
    first = eng.generate(eng.new_sequence(chat), SamplingParams(max_new_tokens=1), "ar")
    tok = eng.encode(first.text)[0]  # the greedy first token: the largest logit
    readout = torch.zeros(eng.runner.vocab_size)
    readout[tok] = 0.25
    eng = _gated(-1.0, low=-3.0, high=5.0, readout=readout)
    run = eng.start(eng.new_sequence(chat), SamplingParams(max_new_tokens=1), "aspd")
    steps = run.steps()
    fwd = next(steps)
    logits = eng.runner.forward_many([fwd])[0]
    with pytest.raises(StopIteration):
        steps.send(logits)
    z = 0.25 * float(logits[-1, tok]) - 1.0  # the prompt's last row
    assert run.constraint.fork_bias == pytest.approx(offset(-3.0, 5.0, float(torch.sigmoid(torch.tensor(z)))))


def test_a_program_gen_keeps_the_calibrated_offset():
    eng = _gated(+50.0)
    eng.loaded.fork_bias = -100.0
    assert not _answer(eng, "list tips\n").blocks  # no template line: not an answer's start, the gate stays out
