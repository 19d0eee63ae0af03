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


# A branch's body first restates its title ("2. **Sleep well**:"), copying its own title: about as
# many tokens as its seed, this many more for the list's marks.
RESTATED_SLACK = 2


def reading_order(s: Sample, ids: SpecialIds) -> tuple[list[int], frozenset[int]]:
    """The sample as a reader of its answer's text sees it: the indices of its tokens in reading order
    (the prompt, the serial text and each branch's body, without markup, titles, seeds or the space
    after a seed: `Response.plain_text`, piece by piece as the engine tokenises it), and those of the branch
    tokens that restate their branch's own title (`RESTATED_SLACK`), which a reader cannot predict."""
    order: list[int] = []
    restated: set[int] = set()
    in_title, prev, seed, k = False, SERIAL_TAG, 0, 0
    for i, (t, tag) in enumerate(zip(s.ids, s.tags)):
        if tag != prev and tag.block > 0:  # a branch's seed (unlabelled) opens it
            seed = next((n - i for n in range(i, len(s.labels)) if s.labels[n] != IGNORE), len(s.labels) - i)
            k = 0
        prev = tag
        if i < s.prompt_len:
            order.append(i)
        elif tag.block == 0:
            in_title = (in_title or t == ids.title) and t != ids.end_title
            if not in_title and t not in ids.markup:
                order.append(i)
        else:
            k += 1
            if k == seed + 1 and t == ids.space:  # the separator after "title:", not in the text
                continue
            if s.labels[i] != IGNORE and t not in ids.markup:
                order.append(i)
                if k <= 2 * seed + RESTATED_SLACK:
                    restated.add(i)
    return order, frozenset(restated)


def branch_token_spans(sample: Sample) -> list[list[tuple[int, int]]]:
    """Per block, per branch: the [start, end) indices of the branch's tokens in the sample."""
    blocks: dict[int, dict[int, list[int]]] = {}
    for i, t in enumerate(sample.tags):
        if t.block > 0:
            blocks.setdefault(t.block, {}).setdefault(t.branch, []).append(i)
    return [[(ix[0], ix[-1] + 1) for _, ix in sorted(br.items())] for _, br in sorted(blocks.items())]
