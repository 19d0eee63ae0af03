"""Probes: tokens fed past a sequence's end for their logits only, then hidden from the cache again
(the engine's `score`, SGLang's `select`: every choice read in one forward, none kept)."""

from __future__ import annotations

import torch

from .model_runner import ModelRunner
from .protocol import Tag
from .sequence import SeqState

Probe = tuple[Tag, list[int], list[int]]  # (tag, positions, tokens)


def probe(runner: ModelRunner, seq: SeqState, probes: list[Probe]) -> list[torch.Tensor]:
    """Feed the probes with logits at every row, then hide them again; each probe's log-softmax rows."""
    toks = [t for _, _, x in probes for t in x]
    if not toks:
        return [torch.empty(0, runner.vocab_size) for _ in probes]
    start = seq.kv.length
    logits = runner.forward(seq.kv, toks, [p for _, ps, _ in probes for p in ps],
                            [tag for tag, _, x in probes for _ in x], range(len(toks)))
    seq.hide(range(start, start + len(toks)))
    out, at = [], 0
    for _, _, x in probes:
        out.append(torch.log_softmax(logits[at:at + len(x)], -1))
        at += len(x)
    return out


def token_logprobs(first: torch.Tensor, rows: torch.Tensor, ids: list[int]) -> list[float]:
    """Log-prob of each token of `ids`: the first from `first`, the rest from the probe rows."""
    return [first[ids[0]].item(), *(rows[k, t].item() for k, t in enumerate(ids[1:]))]
