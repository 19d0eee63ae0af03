"""Stop strings and stop tokens, with SGLang's semantics: a stop string ends the text right before
it (text and cache cut back), a stop token ends it without being part of it."""

from __future__ import annotations

import re
from collections.abc import Callable

from .protocol import Tag
from .sampling import SamplingParams
from .sequence import SeqState, Stream


def stop_strings(p: SamplingParams) -> tuple[str, ...]:
    return tuple(x for x in p.stop if x)


def stop_ids(p: SamplingParams, eos: frozenset[int]) -> set[int]:
    return set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos))


def cut_at_stop(decode: Callable[[list[int]], str], toks: list[int],
                stops: tuple[str, ...]) -> tuple[int | None, str]:
    """(tokens to keep, leftover text) for the first stop string in decode(toks), or (None, "")."""
    text = decode(toks)
    hits = [i for i in (text.find(x) for x in stops) if i >= 0]
    if not hits:
        return None, ""
    cut = min(hits)
    n = 0
    while n < len(toks) and len(decode(toks[:n + 1])) <= cut:
        n += 1
    return n, text[len(decode(toks[:n])):cut]


def apply_stop(seq: SeqState, s: Stream, stops: tuple[str, ...], decode: Callable[[list[int]], str],
               encode: Callable[[str], list[int]], start: int = 0) -> int | None:
    """If a stop string appears in what `s` generated since `start`, cut its text and cache right
    before it and return how many generated tokens were dropped; None if none appears."""
    seg = s.generated[start:]
    n_keep, rest = cut_at_stop(decode, seg, stops)
    if n_keep is None:
        return None
    drop = len(seg) - n_keep
    take_back(seq, s, drop)
    if rest:  # the stop string began inside a token: keep that token's text before it
        extra = encode(rest)
        s.generated.extend(extra)
        s.push(extra)
    return drop


def take_back(seq: SeqState, s: Stream, drop: int) -> None:
    """Drop the last `drop` generated tokens of `s`: from its text and, where fed, from the cache."""
    fed = drop - len(s.pending)  # the newest token is still pending
    s.pending = []
    if fed > 0:
        seq.retract_stream(s, fed)
    del s.generated[len(s.generated) - drop:]


# A sentence's end: ".", "!" or "?" with any closing quotes, brackets or bold marks, or a line's end;
# a list item's number ("2.") is none.
_SENTENCE_END = re.compile(r"(?:[.!?][\"')\]*]*|\n)\s*$")
_ITEM_NUMBER = re.compile(r"(?:^|\n)[ \t*#]*\d+\.$")


def ends_sentence(text: str) -> bool:
    """`text` ends a sentence or a line (a list item's number, "2.", ends none)."""
    return bool(_SENTENCE_END.search(text)) and not _ITEM_NUMBER.search(text)


def sentence_cut(decode: Callable[[list[int]], str], toks: list[int]) -> int:
    """How many of `toks` to keep so that their text ends a sentence or a line: the most that do, or
    all of them where none does (a fragment is still better than nothing)."""
    for n in range(len(toks), 0, -1):
        text = decode(toks[:n])
        if ends_sentence(text):
            return n
    return len(toks)


def cut_to_sentences(seq: SeqState, decode: Callable[[list[int]], str]) -> dict[Tag, int]:
    """The budget ran out inside a block: each open branch it cut keeps its complete sentences (text
    and cache cut back, as for a stop string), so no branch breaks off mid-sentence right before its
    sibling's title. Returns the tokens dropped per branch tag."""
    dropped: dict[Tag, int] = {}
    for b in seq.open_branches:
        if b.finish is None and (drop := len(b.generated) - sentence_cut(decode, b.generated)):
            take_back(seq, b, drop)
            dropped[b.tag] = drop
    return dropped
