"""The fork threshold: the constraint's bias, the engine honouring it, and the calibration search."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtime.constraint import Constraint, Phase
from runtime.engine import Engine
from runtime.model_loader import FORK_BIAS_FILE, read_calibration
from runtime.sampling import SamplingParams
from tests.model_util import tiny_model
from training import calibrate


def test_constraint_biases_only_the_block_opening_in_serial_adaptive_decoding():
    ids = tiny_model().ids
    c = Constraint(ids, adaptive=True, fork_bias=-2.5, line_start=True)
    assert c.allowed().bias == ((ids.title, -2.5),)
    assert Constraint(ids, adaptive=True, line_start=True).allowed().bias == ()
    assert Constraint(ids, adaptive=True, fork_bias=-2.5).allowed().bias == ()  # mid-line: no block may open
    assert Constraint(ids, adaptive=False, fork_bias=-2.5, line_start=True).allowed().bias == ()  # AR: banned anyway
    c.phase = Phase.BRANCH
    assert c.allowed().bias == ()


def test_an_opening_cap_holds_the_offset_until_the_answers_first_line_ends():
    """`intro_first`: a chat answer's first line is serial text; the full offset from its next line on."""
    ids = dataclasses.replace(tiny_model().ids, line_end=frozenset({10}))
    c = Constraint(ids, adaptive=True, fork_bias=12.0, line_start=True, opening_cap=0.0)
    assert c.allowed().bias == ()  # at the answer's first token: at most offset 0
    c.fork_bias = -3.0
    assert c.allowed().bias == ((ids.title, -3.0),)  # a lower offset stays as it is
    c.fork_bias = 12.0
    c.advance(5)
    c.advance(10)  # the first line ends
    assert c.opening_cap is None and c.allowed().bias == ((ids.title, 12.0),)
    assert Constraint(ids, adaptive=True, fork_bias=12.0, line_start=True).allowed().bias == ((ids.title, 12.0),)


def test_engine_fork_bias_moves_the_fork_decision():
    eng = Engine(tiny_model(seed=2))
    prompt = eng.encode("list three tips:\n")

    def run(bias):
        seq = eng.new_sequence(prompt)
        params = SamplingParams(max_new_tokens=80, fork_bias=bias, max_title_tokens=3, max_branches=2)
        out = eng.generate(seq, params, "aspd")
        eng.release(seq)
        return out

    assert run(100.0).markup.startswith("<|title|>")  # forced open at once
    never = run(-100.0)
    assert not never.blocks
    # a bias that never wins leaves the greedy answer exactly as AR decoding writes it
    seq = eng.new_sequence(prompt)
    assert never.text == eng.generate(seq, SamplingParams(max_new_tokens=40), "ar").text


def test_adapter_calibration_file_sets_the_default(tmp_path):
    assert read_calibration(str(tmp_path)) == {}
    (tmp_path / FORK_BIAS_FILE).write_text(json.dumps({"fork_bias": -1.5}))
    assert read_calibration(str(tmp_path))["fork_bias"] == -1.5


def test_choose_takes_the_least_suppression_that_meets_the_target():
    pts = [calibrate.Point(0.0, {"listlike": 0.9, "other": 0.4}),
           calibrate.Point(-1.0, {"listlike": 0.8, "other": 0.18}),
           calibrate.Point(-2.0, {"listlike": 0.6, "other": 0.05})]
    assert calibrate.choose(pts, 0.2).bias == -1.0
    assert calibrate.choose(pts, 0.1).bias == -2.0
    with pytest.raises(calibrate.CalibrationError, match="no offset"):
        calibrate.choose(pts, 0.01)


def test_calibration_prompts_skip_what_training_saw():
    train = [{"text": f"p{i}", "kind": "listlike" if i % 2 else "other"} for i in range(10)]
    texts, kinds = calibrate.calibration_prompts(train, trained_on={"p0", "p1"}, per_kind=2)
    assert texts == ["p3", "p5", "p2", "p4"] and kinds == ["listlike", "listlike", "other", "other"]
    with pytest.raises(calibrate.CalibrationError, match="not enough"):
        calibrate.calibration_prompts(train, set(), per_kind=6)


def test_sweep_on_a_tiny_model_is_monotone_and_stops_at_the_first_title():
    eng = Engine(tiny_model(seed=2))
    prompts = ["list three tips:\n", "what is two plus two?\n", "name four colours:\n", "hello\n"]
    kinds = ["listlike", "other", "listlike", "other"]
    pts, thresholds = calibrate.sweep(eng, prompts, kinds, SamplingParams(max_new_tokens=80),
                                      grid=(100.0, 0.0, -100.0), log=lambda _: None)
    assert pts[0].fork_rate == {"listlike": 1.0, "other": 1.0}
    assert pts[-1].fork_rate == {"listlike": 0.0, "other": 0.0}
    for t in thresholds:  # each prompt's threshold agrees with the sweep's rates
        assert t.forks(100.0) is True and t.forks(-100.0) is False
        assert t.forks(0.0) is not None  # a grid value is never unknown
    with pytest.raises(calibrate.CalibrationError, match="descending"):
        calibrate.sweep(eng, prompts, kinds, SamplingParams(), grid=(0.0, 1.0))


def test_cli_reports_an_impossible_calibration_without_a_traceback(capsys):
    from aspd_cli.main import main

    assert main(["calibrate", "--per-kind", "100000"]) == 2  # refused before any model is loaded
    assert "not enough unseen training prompts" in capsys.readouterr().err


def test_threshold_knows_the_grid_values_and_not_what_lies_between():
    t = calibrate.Threshold(forks_at=4.0, not_at=3.0)
    assert (t.forks(5.0), t.forks(4.0), t.forks(3.5), t.forks(3.0), t.forks(-9.0)) == (True, True, None, False, False)
    assert calibrate.Threshold(None, None).forks(12.0) is False  # forks at no grid offset
    assert calibrate.Threshold(-6.0, None).forks(-6.0) is True


def test_choose_gate_pushes_list_like_prompts_and_holds_back_the_rest():
    # two list-like prompts that fork only at +10, two others that fork from +2; the gate tells them apart
    th = [calibrate.Threshold(10.0, 9.0)] * 2 + [calibrate.Threshold(2.0, 1.0)] * 2
    probs, kinds = [0.99, 0.95, 0.02, 0.01], ["listlike", "listlike", "other", "other"]
    g = calibrate.choose_gate(th, probs, kinds, target=0.0, grid=(12.0, 11.0, 10.0, 2.0, 1.0, 0.0))
    assert g.fork_rate == {"listlike": 1.0, "other": 0.0}
    # low 1 would give the others 1 + 11 * 0.02 = 1.22, between their grid values: unknown, so counted as
    # forking; with high 12, low 0 gives them 0.24: the most push that keeps them serial
    assert (g.low, g.high) == (0.0, 12.0)
    # a margin of 1 keeps the others' offsets a logit below their threshold: low 0 would give them 1.24
    g = calibrate.choose_gate(th, probs, kinds, target=0.0, grid=(12.0, 11.0, 10.0, 2.0, 1.0, 0.0, -1.0),
                              margin=1.0)
    assert (g.low, g.high) == (-1.0, 12.0) and g.fork_rate == {"listlike": 1.0, "other": 0.0}
    # with one offset for all (gate at 0.5 everywhere) nothing separates them
    g = calibrate.choose_gate(th, [0.5] * 4, kinds, target=0.0, grid=(12.0, 10.0, 2.0, 1.0))
    assert g.fork_rate["listlike"] == 0.0
    with pytest.raises(calibrate.CalibrationError, match="no gate offsets"):
        calibrate.choose_gate([calibrate.Threshold(-9.0, None)] * 4, probs, kinds, target=0.0, grid=(1.0, 0.0))


def test_write_stores_the_gate_with_its_offsets_and_drops_a_stale_one(tmp_path):
    from runtime.fork_gate import GATE_FILE

    pts = [calibrate.Point(1.0, {"listlike": 0.9, "other": 0.05})]
    gate = calibrate.GatePoint(-1.0, 9.0, {"listlike": 0.9, "other": 0.0})
    calibrate.write(tmp_path, pts[0], pts, {}, gate, {"weights": [0.5], "intercept": 0.1})
    assert json.loads((tmp_path / GATE_FILE).read_text())["weights"] == [0.5]
    assert read_calibration(str(tmp_path))["gate"]["high"] == 9.0
    calibrate.write(tmp_path, pts[0], pts, {})  # calibrated again without a gate
    assert not (tmp_path / GATE_FILE).exists() and "gate" not in read_calibration(str(tmp_path))
