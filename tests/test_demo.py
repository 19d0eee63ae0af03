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


def test_demo_answer_is_clean_and_forks_with_three_or_more_branches():
    torch.set_num_threads(2)
    eng = Engine(load(adapter="auto"))
    out = eng.generate(eng.new_sequence(eng.chat_prompt(DEMO_PROMPT)), SamplingParams(max_new_tokens=256), "aspd")
    assert degenerate_rate(out.text) <= DEGENERATE_MAX, out.text
    assert out.blocks and max(len(b.branch_tokens) for b in out.blocks) >= 3, out.markup
