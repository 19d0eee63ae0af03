"""Each token's text, decoded once per tokenizer: the decoding rules that look at characters
(which tokens are words, which may not appear in a title) all read it from here."""

from __future__ import annotations

import functools


def token_texts(tokenizer) -> tuple[str, ...]:
    return _texts(tokenizer, len(tokenizer))  # keyed on the size too: tokens may be added later


@functools.lru_cache(maxsize=4)
def _texts(tokenizer, n: int) -> tuple[str, ...]:
    return tuple(tokenizer.batch_decode([[i] for i in range(n)]))


def tokens_with(tokenizer, chars: str) -> frozenset[int]:
    """Ids of the tokens whose text holds any of `chars` (special and added tokens, markup among
    them, left out)."""
    return _matching(tokenizer, lambda t: any(c in t for c in chars))


def tokens_containing(tokenizer, text: str) -> frozenset[int]:
    """Ids of the tokens whose text holds `text` (special and added tokens left out)."""
    return _matching(tokenizer, lambda t: text in t)


def tokens_ending(tokenizer, text: str) -> frozenset[int]:
    """Ids of the tokens whose text ends with `text` (special and added tokens left out)."""
    return _matching(tokenizer, lambda t: t.endswith(text))


def _matching(tokenizer, keep) -> frozenset[int]:
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return frozenset(i for i, t in enumerate(token_texts(tokenizer)) if i not in special and keep(t))
