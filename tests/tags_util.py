"""Attention tags as the engine writes them, for the planner and attention tests. Pure Python."""

from __future__ import annotations

import random

from runtime.protocol import DEAD, SERIAL_TAG, Tag


def decoding_history(rng: random.Random, closed_blocks: int, branches: int) -> list[Tag]:
    """Tags of a cache as the engine writes it: a prompt, blocks whose seeds are prefilled branch
    after branch and whose tokens are then decoded one per live branch per step (interleaved),
    joins, serial text after each; some cut-off tokens marked dead."""
    tags = [SERIAL_TAG] * rng.randint(1, 6)
    for b in range(1, closed_blocks + 2):
        for j in range(1, branches + 1):
            tags += [Tag(b, j)] * rng.randint(1, 3)
        for _ in range(rng.randint(0, 4)):
            tags += [Tag(b, j) for j in range(1, branches + 1) if rng.random() < 0.8]
        if rng.random() < 0.3:
            tags.append(Tag(DEAD, 0))
        if b <= closed_blocks:
            tags += [SERIAL_TAG] * rng.randint(1, 4)
    return tags
