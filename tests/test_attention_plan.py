"""The cascade planner (pure Python): the mask a plan implies is exactly the protocol's mask."""

from __future__ import annotations

import random

import pytest

from runtime.attention_plan import CascadePlan, PlanError, SeqStep, dense_mask, plan
from runtime.protocol import DEAD, SERIAL_TAG, Tag, mask
from tests.tags_util import decoding_history


def protocol_rows(tags: list[Tag], n_new: int, pool_start: int, pool: int) -> list[list[bool]]:
    full = mask(tags)
    rows = []
    for q in range(len(tags) - n_new, len(tags)):
        row = [False] * pool
        for k, v in enumerate(full[q]):
            row[pool_start + k] = v
        rows.append(row)
    return rows


def check(steps: list[SeqStep]) -> CascadePlan:
    p = plan(steps)
    pool = max(s.pool_start + len(s.tags) for s in steps)
    expected = [r for s in steps for r in protocol_rows(list(s.tags), s.n_new, s.pool_start, pool)]
    got = dense_mask(p, pool)
    assert sorted(p.order) == list(range(len(expected)))
    for row, q in enumerate(p.order):
        assert got[row] == expected[q], f"query {q}"
    return p


@pytest.mark.parametrize("seed", range(40))
def test_decode_steps_of_many_sequences_match_the_protocol_mask(seed):
    rng = random.Random(seed)
    steps, start = [], 0
    for _ in range(rng.randint(1, 4)):
        branches = rng.randint(1, 6)
        tags = decoding_history(rng, rng.randint(0, 2), branches)
        live = rng.randint(1, branches)
        # this step: one new token for each of `live` branches of the open block
        new = [Tag(max(t.block for t in tags), j) for j in range(1, live + 1)]
        steps.append(SeqStep(tuple(tags + new), len(new), start))
        start += len(tags) + len(new) + rng.randint(0, 5)  # sequences anywhere in the pool
    p = check(steps)
    # decode: every query's own group is one query, and the shared level holds the whole settled prefix
    assert all(p.own.qo_indptr[r + 1] - p.own.qo_indptr[r] == 1 for r in range(len(p.own.qo_indptr) - 1))


@pytest.mark.parametrize("seed", range(20))
def test_prefill_like_steps_match_the_protocol_mask(seed):
    rng = random.Random(100 + seed)
    tags = decoding_history(rng, rng.randint(0, 2), rng.randint(2, 4))
    block = max(t.block for t in tags) + 1
    kind = seed % 3
    if kind == 0:  # a serial chunk (e.g. the join's <|/para|> and the text after it)
        new = [SERIAL_TAG] * rng.randint(1, 5)
    elif kind == 1:  # a block header, then the seeds of its branches, in one forward
        new = [SERIAL_TAG] * 3 + [Tag(block, j) for j in (1, 2, 3) for _ in range(2)]
    else:  # several tokens of one branch (a seed)
        new = [Tag(block, 1)] * rng.randint(2, 4)
        tags = tags + [SERIAL_TAG]
    check([SeqStep(tuple(tags + new), len(new))])


def test_a_fresh_prompt_has_nothing_shared():
    p = check([SeqStep((SERIAL_TAG,) * 5, 5)])
    assert p.shared.kv_indices == () and p.shared.last_page_len == (0,)
    assert p.own.kv_indices == (0, 1, 2, 3, 4)


def test_four_branches_share_one_prefix():
    tags = (SERIAL_TAG,) * 10 + tuple(Tag(1, j) for _ in range(3) for j in range(1, 5))
    p = check([SeqStep(tags, 4)])
    assert p.shared.kv_indices == tuple(range(10))  # the prefix once, for all four queries
    assert p.own.kv_indptr == (0, 3, 6, 9, 12)  # each branch its own three tokens


def test_bad_steps_are_refused():
    with pytest.raises(PlanError, match="new tokens"):
        plan([SeqStep((SERIAL_TAG,), 0)])
    with pytest.raises(PlanError):  # a dead query sees nothing of its own: not a causal group
        plan([SeqStep((SERIAL_TAG, Tag(DEAD, 0)), 1)])
