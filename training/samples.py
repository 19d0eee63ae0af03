"""A training sample: a chat prompt and a structured answer as token ids, tags, positions and labels,
built with the protocol's own functions (`tokenize_response`, `layout`) so that training sees exactly
what the engine feeds.

Labels: the loss covers the whole answer, markup included (titles, `<|para|>`, branch bodies,
`<|/branch|>`, EOS), except the tokens the engine feeds itself and never samples: the prompt, each
branch's seed (`<|branch|>T:`) and the `<|/para|>` of a join.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.protocol import SERIAL_TAG, Response, SpecialIds, Tag, branch_seed, layout, tokenize_response

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    ids: list[int]
    tags: list[Tag]
    positions: list[int]
    labels: list[int]  # IGNORE where no loss
    prompt_len: int


def build(prompt_ids: list[int], resp: Response, encode, ids: SpecialIds, eos: int | None) -> Sample:
    """`eos`: appended (with loss) to a complete answer; None for one cut by the token cap."""
    toks, tags = tokenize_response(resp, encode, ids)
    labels = list(toks)
    titles = iter([t for blk in resp.blocks for t in blk.titles])
    prev = SERIAL_TAG
    for i, tag in enumerate(tags):
        if tag.block > 0 and tag != prev:  # a branch begins with its seed, which the engine feeds
            n = len(encode(branch_seed(next(titles))))
            labels[i:i + n] = [IGNORE] * n
        elif tag.block == 0 and prev.block > 0:  # the join's <|/para|>, fed by the engine too
            labels[i] = IGNORE
        prev = tag
    if eos is not None:
        toks, tags, labels = toks + [eos], tags + [SERIAL_TAG], labels + [eos]
    n = len(prompt_ids)
    all_tags = [SERIAL_TAG] * n + tags
    return Sample(ids=list(prompt_ids) + toks, tags=all_tags, positions=layout(all_tags),
                  labels=[IGNORE] * n + labels, prompt_len=n)


def branch_token_spans(sample: Sample) -> list[list[tuple[int, int]]]:
    """Per block, per branch: the [start, end) indices of the branch's tokens in the sample."""
    blocks: dict[int, dict[int, list[int]]] = {}
    for i, t in enumerate(sample.tags):
        if t.block > 0:
            blocks.setdefault(t.block, {}).setdefault(t.branch, []).append(i)
    return [[(ix[0], ix[-1] + 1) for _, ix in sorted(br.items())] for _, br in sorted(blocks.items())]
