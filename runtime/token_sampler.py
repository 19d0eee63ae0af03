"""Turn logits into tokens: the anti-loop rule, the protocol constraint, a stream's grammar, then
greedy or sampled."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .anti_loop import History, apply
from .constraint import Allowed
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .grammar import Matcher


class Sampler:
    def __init__(self, params: SamplingParams, device: torch.device):
        self.params = params
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, history: Sequence[History], allowed: Sequence[Allowed],
                 grammar: Sequence[Matcher | None] = ()) -> list[int]:
        """logits [rows, vocab] float32 -> one token per row; `grammar[row]`: that row's matcher, if any."""
        p = self.params
        logits = logits.clone()
        plain = logits.clone() if any(g is not None for g in grammar) else None  # before the anti-loop rule
        apply(logits, history, p.repetition_penalty, p.no_repeat_ngram_size, [a.anti_loop for a in allowed])
        for row, a in enumerate(allowed):
            _constrain(logits[row], a)
            if row < len(grammar) and grammar[row] is not None:
                _grammar(logits[row], plain[row], a, grammar[row].mask(logits.device))
        if p.greedy:
            return logits.argmax(-1).tolist()
        return self._sample(logits)

    def _sample(self, logits: torch.Tensor) -> list[int]:
        p = self.params
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, -1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(-1, keepdim=True).values, 0.0)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) > p.top_p  # keep the smallest set reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).tolist()


@functools.lru_cache(maxsize=64)
def _index(ids: frozenset[int], device: torch.device) -> torch.Tensor:
    """The same few id sets recur every step (the markup tokens): build each index tensor once."""
    return torch.tensor(sorted(ids), dtype=torch.long, device=device)


def _constrain(row: torch.Tensor, allowed: Allowed) -> None:
    for token, offset in allowed.bias:
        row[token] += offset
    if allowed.only is not None:
        keep = torch.full_like(row, float("-inf"))
        idx = _index(allowed.only, row.device)
        keep[idx] = row[idx]
        row.copy_(keep)
    elif allowed.banned:
        row[_index(allowed.banned, row.device)] = float("-inf")


def _grammar(row: torch.Tensor, plain: torch.Tensor, allowed: Allowed, mask: torch.Tensor) -> None:
    """The grammar's mask on top of the rules. Where the anti-loop rule banned every token the
    grammar allows, the grammar wins (a forced repeat is still the only valid output); where the
    protocol forces a token the grammar forbids (a markup branch at its cap), the protocol wins and
    the text is cut there, as by a length cap."""
    out = row.masked_fill(~mask, float("-inf"))
    if not torch.isfinite(out).any():
        _constrain(plain, allowed)
        out = plain.masked_fill(~mask, float("-inf"))
    if torch.isfinite(out).any():
        row.copy_(out)
