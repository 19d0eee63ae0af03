"""The optional LLM judge: the paper's all-must-agree rule, over a real OpenAI-compatible server."""

from __future__ import annotations

from runtime.engine import Engine
from tests.model_util import tiny_model
from tests.serve_util import serve_in_thread
from training.extract import find_groups
from training.group_judge import Judge, verdict


def test_all_three_questions_must_be_yes():
    assert verdict("independent: yes\nformat: YES\nconsistent: yes")
    assert not verdict("independent: yes\nformat: no\nconsistent: yes")
    assert not verdict("independent: yes\nformat: yes")  # a missing answer is a no
    assert not verdict("sure, looks fine")


def test_three_votes_over_http():
    text = ("tips:\n\n1. eat well: greens and beans every day.\n2. sleep: a lot at night, and naps too.\n"
            "3. walk: an hour outside.")
    [group] = find_groups(text)
    with serve_in_thread(Engine(tiny_model(max_positions=4096))) as (url, _):  # char-level: long prompts
        judge = Judge(url)
        ok = judge("give tips", text, group)
    assert ok is False  # a random tiny model does not answer in the format: rejected, never crashes
    assert judge.calls == 1  # the first no ends the vote
