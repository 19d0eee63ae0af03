"""Drafted header tokens: a block's title numbering, verified in the forward that feeds it.

A block header is decoded serially, one forward per token: `<|title|>2. Set a routine<|/title|>...`,
about a third of a forked answer's critical path. What follows a title's close is predictable:
`<|title|>` (most headers hold four titles or more) and, where the titles are numbered, the next
number and its dot; what follows a block's first `<|title|>` is "1." (or the number after the
answer's last numbered title). The run feeds such a draft with the token it just sampled and takes
logits at every row; it then samples the rows in order, each under the state the tokens before it
left, keeps a drafted token only where the row's sample is that very token, and takes the rest back
out of the cache (`SeqState.unfeed`). The text is the one decoding without drafts gives, whatever
the draft; a right draft saves up to three forwards for the price of a wider one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .constraint import Phase
from .protocol import SpecialIds

NUMBERED = re.compile(r"(\d+)\.\s")


def number(title: str) -> int | None:
    """The item number a title opens with ("2. Set a routine" -> 2), else None."""
    m = NUMBERED.match(title)
    return int(m.group(1)) if m else None


def draft(phase: Phase, title_tokens: int, titles: Sequence[str], earlier: Sequence[str],
          encode: Callable[[str], list[int]], ids: SpecialIds) -> list[int]:
    """The tokens likely to follow the one just sampled (empty: no draft). `titles`: this block's
    titles so far; `earlier`: the answer's earlier blocks' titles."""
    if phase is Phase.TITLES_CLOSED and titles:  # a title just closed: the next one, numbered on
        n = number(titles[-1])
        return [ids.title] if n is None else [ids.title, *encode(f"{n + 1}.")]
    if phase is Phase.TITLE and title_tokens == 0 and not titles:  # a block's first title just opened
        n = number(earlier[-1]) if earlier else 0
        return encode(f"{(n or 0) + 1}.")
    return []
