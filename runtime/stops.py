"""Stop strings and stop tokens, with SGLang's semantics: a stop string ends the text right before
it (text and cache cut back), a stop token ends it without being part of it."""

from __future__ import annotations

from collections.abc import Callable

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
    fed = drop - len(s.pending)  # the newest token is still pending
    s.pending = []
    if fed > 0:
        seq.retract_stream(s, fed)
    del s.generated[len(s.generated) - drop:]
    if rest:  # the stop string began inside a token: keep that token's text before it
        extra = encode(rest)
        s.generated.extend(extra)
        s.push(extra)
    return drop
