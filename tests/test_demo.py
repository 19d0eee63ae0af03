"""`aspd demo` on the embedded model with the shipped adapter: a newcomer's first look must be a
coherent answer that forks wide (slow: it decodes the demo answer)."""

from __future__ import annotations

import pytest
import torch

from aspd_cli.demo import DEMO_PROMPT
from bench.metrics import DEGENERATE_MAX, degenerate_rate
from runtime.engine import Engine
from runtime.model_loader import load
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eng() -> Engine:
    torch.set_num_threads(2)
    return Engine(load(adapter="auto"))


def test_demo_answer_is_clean_and_forks_with_three_or_more_branches(eng):
    out = eng.generate(eng.new_sequence(eng.chat_prompt(DEMO_PROMPT)), SamplingParams(max_new_tokens=256), "aspd")
    assert degenerate_rate(out.text) <= DEGENERATE_MAX, out.text
    assert out.blocks and max(len(b.branch_tokens) for b in out.blocks) >= 3, out.markup


def _offset(eng: Engine, prompt: str) -> float:
    """The fork offset a chat answer to `prompt` decodes under, once its first step has run."""
    seen = []
    eng.generate(eng.new_sequence(eng.chat_prompt(prompt)), SamplingParams(max_new_tokens=2), "aspd",
                 on_step=lambda run: seen.append(run.constraint.fork_bias))
    return seen[0]


def test_shipped_gate_pushes_list_like_answers_and_holds_back_serial_ones(eng):
    """The gate's read-out through the engine's own (quantized) head."""
    gate = eng.loaded.gate
    assert gate is not None and gate.low < gate.high
    mid = (gate.low + gate.high) / 2
    assert _offset(eng, "Give me five tips for a job interview.") > mid
    assert _offset(eng, "What is 17 times 23?") < mid
    assert _offset(eng, "How many grains of sand fit in a bucket? Explain your answer step by step.") < mid


def test_intro_first_keeps_a_chat_answers_first_line_serial(eng):
    """`intro_first`: no block opens before the answer's first line ends; from its next line on the
    gate's full offset holds, so the demo answer, which opens with its block, still forks after it."""
    prompt = eng.chat_prompt(DEMO_PROMPT)
    plain = eng.generate(eng.new_sequence(prompt), SamplingParams(max_new_tokens=256), "aspd")
    first = eng.generate(eng.new_sequence(prompt), SamplingParams(max_new_tokens=256, intro_first=True), "aspd")
    assert plain.markup.startswith("<|title|>"), plain.markup  # what the option changes
    assert first.blocks, first.markup
    head = first.markup[:first.markup.index("<|title|>")]
    assert head.split("\n")[0].strip() and "\n" in head, first.markup
