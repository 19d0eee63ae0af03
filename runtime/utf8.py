"""Whole characters only. A byte-level tokenizer spells a rare character (a curly apostrophe, an
accent, an emoji) as tokens of raw bytes; a model pushed off its first choice (the n-gram rule banned
" selling" after "buying or") may escape into a lone byte, and the answer shows a broken character
("or\ufffding", "don\ufffdt"). So the anti-loop rule also allows, at each step, only the tokens whose
bytes keep the answer well-formed UTF-8: a small automaton over the bytes (Unicode's table of
well-formed sequences: after 0xE0 the next byte is 0xA0-0xBF, and so on) says, from the state the
last token left, which tokens may follow. Tokens without bytes (markup, end of text) are never
banned here: a forced close must stay possible.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte: printable bytes stand for themselves, the others
    (controls, space, 0x7F-0xA0, 0xAD) for chr(256 + k) in byte order."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in shown]
    return {**{chr(b): b for b in shown}, **{chr(256 + k): b for k, b in enumerate(hidden)}}


BYTE = _byte_alphabet()  # byte-level BPE's alphabet -> byte
_HEX = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # sentencepiece's byte fallback tokens

# The automaton's states: 0 between characters, else (continuation bytes owed, the next one's range).
STATES = ((0, 0, 0), (1, 0x80, 0xBF), (2, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0x9F),
          (3, 0x80, 0xBF), (3, 0x90, 0xBF), (3, 0x80, 0x8F))
_LEAD = {**{b: 1 for b in range(0xC2, 0xE0)}, 0xE0: 3, **{b: 2 for b in range(0xE1, 0xF0)}, 0xED: 4,
         0xF0: 6, 0xF1: 5, 0xF2: 5, 0xF3: 5, 0xF4: 7}  # lead byte -> the state it opens


def step(state: int, byte: int) -> int | None:
    """The state after `byte` (None: the bytes are not well-formed UTF-8)."""
    owed, lo, hi = STATES[state]
    if owed == 0:
        return 0 if byte < 0x80 else _LEAD.get(byte)
    if not lo <= byte <= hi:
        return None
    return owed - 1  # states 0, 1, 2 owe 0, 1, 2 more bytes of any continuation


def run(state: int, data: bytes) -> int | None:
    for b in data:
        state = step(state, b)
        if state is None:
            return None
    return state


def token_bytes(piece: str, byte_level: bool) -> bytes:
    """A vocabulary entry's bytes: a byte-level BPE entry spells raw bytes in its alphabet, another
    tokenizer's entry is text (whole characters) except sentencepiece's byte fallback "<0xE2>"."""
    if m := _HEX.match(piece):
        return bytes([int(m[1], 16)])
    if byte_level and all(c in BYTE for c in piece):
        return bytes(BYTE[c] for c in piece)
    return piece.encode()


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


@dataclass(frozen=True, eq=False)
class Utf8Table:
    """`after[s][t]`: the state after token t from state s (-1: t would break a character; a token
    without bytes returns to 0); `bans[s]`: [vocab] bool, the tokens banned in state s."""

    after_: tuple[tuple[int, ...], ...]
    bans: torch.Tensor
    at_rest: torch.Tensor  # the ids `bans[0]` holds (a few dozen lone bytes): cheaper to index every step

    def after(self, state: int, token: int) -> int:
        """The state after `token` (one that breaks a character, fed anyway, starts afresh)."""
        return max(self.after_[state][token], 0) if token < len(self.after_[state]) else 0


@functools.lru_cache(maxsize=4)
def _table(tokenizer, vocab_size: int, device: torch.device) -> Utf8Table:
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    byte_level = is_byte_level(tokenizer)
    after = [[0] * vocab_size for _ in STATES]
    for i, piece in enumerate(pieces):
        if i in special:
            continue
        data = token_bytes(piece, byte_level)
        for s in range(len(STATES)):
            if s and data and data[0] < 0x80:  # text: breaks an open character
                after[s][i] = -1
            elif data.isascii():
                after[s][i] = 0
            else:
                r = run(s, data)
                after[s][i] = -1 if r is None else r
    bans = torch.tensor([[x < 0 for x in row] for row in after], device=device)
    return Utf8Table(tuple(tuple(row) for row in after), bans, bans[0].nonzero().flatten())


def utf8_table(tokenizer, vocab_size: int, device: torch.device | str = "cpu") -> Utf8Table | None:
    """The table for a tokenizer with byte tokens (None where every token is whole characters)."""
    t = _table(tokenizer, vocab_size, torch.device(device))
    return t if t.bans[0].any() else None
