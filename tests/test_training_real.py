"""The data pipeline's model-based checks on the real embedded model (slow)."""

from __future__ import annotations

import pytest
import torch

from runtime.model_loader import load
from training.dataset import chat_ids
from training.extract import find_groups, rewrite
from training.independence import THRESHOLD, independent, sibling_gains
from training.samples import build

pytestmark = pytest.mark.slow

TIPS = ("Here are three tips for staying healthy:\n\n"
        "1. **Sleep**: Get seven to nine hours of sleep each night, and keep a regular bedtime.\n"
        "2. **Water**: Drink water throughout the day instead of sugary drinks or soda.\n"
        "3. **Walking**: Take a brisk thirty-minute walk most days of the week.")
STORY = ("Here is a short story in three parts:\n\n"
         "1. **Start**: Tom found an old brass key buried under the oak tree in his grandfather's garden.\n"
         "2. **Middle**: He used the brass key from the garden to open his grandfather's locked wooden chest "
         "in the attic.\n"
         "3. **End**: Inside the wooden chest, Tom found the treasure map his grandfather had hidden decades ago.")


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(2)
    return load(adapter=None)


def gains(base, question: str, text: str) -> list[float]:
    groups = find_groups(text)
    assert len(groups) == 1

    def enc(t):
        return base.tokenizer.encode(t, add_special_tokens=False)

    sample = build(chat_ids(base.tokenizer, question), rewrite(text, groups), enc, base.ids, None)
    return sibling_gains(base.model, sample)[0]


def test_independence_accepts_independent_items_and_rejects_a_story(base):
    tips = gains(base, "Give three tips for staying healthy.", TIPS)
    story = gains(base, "Tell a short story in three parts.", STORY)
    assert independent(tips), tips
    assert not independent(story), story
    assert sum(story) / len(story) > sum(tips) / len(tips) + THRESHOLD / 2
