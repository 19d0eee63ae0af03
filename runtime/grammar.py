"""Constrained generation: a regex or a JSON schema as a per-stream token mask (llguidance).

`check` validates a grammar once, where the request is made (`SamplingParams`), with an error that
names the field. A constrained stream owns a `Matcher`: before each token it gives the tokens the
grammar allows (`mask`), the sampler applies it, the stream feeds back the token it took
(`advance`). The grammar's end is the stream's own end: EOS (and the caller's stop ids) for serial
text and plain branches, `<|/branch|>` in a markup branch; it is allowed only where the grammar
accepts, and a grammar that can take no more tokens (`stopped`) ends its stream. Special tokens,
the ASPD markup among them, are never text: no grammar allows them.

llguidance (what vLLM's and SGLang's `guidance` backend use) rather than xgrammar: xgrammar's
wheel pulls triton here, llguidance has no dependencies and computes masks on the CPU.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from typing import Literal

import llguidance
import llguidance.hf
import torch

from .sequence import EngineError
from .vocab import token_texts

Kind = Literal["regex", "json_schema"]
# One line of JSON, spaced as json.dumps writes it: a small model given free whitespace can write
# newlines forever. A schema's own "x-guidance" options override these.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_BITS = torch.arange(32, dtype=torch.int32)


class GrammarError(EngineError):
    """A grammar llguidance rejects (a user error, a ValueError); the message names the sampling parameter."""


def ascii_digits(regex: str) -> str:
    """`\\d` as `[0-9]` (in a class: `0-9`). llguidance's `\\d`, like Python's, is any Unicode digit,
    and a sampled date came out in segmented digits; SGLang's grammar engine reads `\\d` as ASCII."""
    out, i, start = [], 0, None  # start: where the open character class's items begin
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex):
            out.append(("0-9" if start is not None else "[0-9]") if regex[i + 1] == "d" else regex[i:i + 2])
            i += 2
            continue
        if start is None and c == "[":
            start = i + 1 + (regex[i + 1:i + 2] == "^")
        elif start is not None and c == "]" and i > start:  # "]" first in a class is literal
            start = None
        out.append(c)
        i += 1
    return "".join(out)


def grammar_text(kind: Kind, source: str) -> str:
    """llguidance's grammar for a regex (`\\d` read as ASCII) or a JSON schema (as JSON text)."""
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(ascii_digits(source))
    try:
        schema = json.loads(source)
    except json.JSONDecodeError as e:
        raise GrammarError(f"json_schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise GrammarError("json_schema must be a JSON object (a schema)")
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


@functools.lru_cache(maxsize=256)
def check(kind: Kind, source: str) -> str:
    """The grammar text for `source`, or GrammarError naming `kind` (no tokenizer needed)."""
    text = grammar_text(kind, source)
    err = llguidance.LLMatcher.validate_grammar(text)
    if err:
        raise GrammarError(f"{kind} is not a grammar llguidance accepts: {_short(err)}")
    return text


def _short(err: str) -> str:
    """llguidance's message on one line: its first line and the regex parser's `error:` line."""
    lines = [x.strip() for x in err.splitlines() if x.strip()]
    detail = [x for x in lines[1:] if x.startswith("error:")]
    return " ".join(lines[:1] + detail[:1])


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer, n: int) -> llguidance.LLTokenizer:
    """The tokenizer as llguidance sees it (built once: ~1 s on a large vocabulary). A tokenizer
    whose decoder llguidance cannot read (the tests' character-level one) is given by its tokens' texts."""
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n)
    except ValueError:
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Texts(tokenizer)), n_vocab=n)


class _Texts:
    """What `llguidance.TokenizerWrapper` reads: each token's bytes, special ids, an encoder."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos_token_id, self.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
        self.tokens = [t.encode("utf-8") for t in token_texts(tokenizer)]
        self.special_token_ids = sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))

    def __call__(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)


@functools.lru_cache(maxsize=4)
def _special(tokenizer, n: int) -> tuple[int, ...]:
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return tuple(sorted(i for i in ids if i < n))


class Matcher:
    """One constrained stream's grammar state. `ends`: the tokens that end this stream (allowed
    only where the grammar accepts)."""

    def __init__(self, tokenizer, kind: Kind, source: str, ends: Collection[int], vocab_size: int):
        self.n = min(len(tokenizer), vocab_size)
        self.vocab_size = vocab_size
        self.ends = sorted(e for e in ends if e < vocab_size)
        self.special = _special(tokenizer, self.n)
        self.kind, self.taken = kind, 0
        self.m = llguidance.LLMatcher(_tokenizer(tokenizer, len(tokenizer)), check(kind, source), log_level=0)
        if self.m.is_error():
            raise GrammarError(f"{kind}: {self.m.get_error()}")

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[vocab] bool: the tokens the grammar allows next."""
        words = torch.frombuffer(bytearray(self.m.compute_bitmask()), dtype=torch.int32)
        bits = ((words[:, None] >> _BITS) & 1).flatten()[:self.n].bool()
        out = torch.zeros(self.vocab_size, dtype=torch.bool)
        out[:self.n] = bits
        out[list(self.special)] = False  # EOS as llguidance sees it included: the stream's `ends` stand for it
        out[self.ends] = self.m.is_accepting()
        if not out.any():  # e.g. a character no token of this vocabulary holds
            raise GrammarError(f"{self.kind}: no token of this model's vocabulary can continue the output "
                               f"after {self.taken} tokens")
        return out.to(device)

    def advance(self, token: int) -> bool:
        """The stream took `token`; True when the grammar can take no more (the stream ends here)."""
        if token in self.ends:
            return True
        if not self.m.consume_token(token):
            raise GrammarError(f"{self.kind}: the grammar refused token {token}: {self.m.get_error()}")
        self.taken += 1
        return self.m.is_stopped()


def matcher(params, tokenizer, ends: Collection[int], vocab_size: int) -> Matcher | None:
    """The stream's matcher for `params` (a `SamplingParams`), None when it has no grammar."""
    g = params.grammar
    return None if g is None else Matcher(tokenizer, *g, ends=ends, vocab_size=vocab_size)
