"""The decode steps of several sequences as one attention call (continuous batching on the CPU).

Each sequence has its own cache, so attention per sequence costs one small call per sequence and
layer, more overhead than math. Instead the group's caches are held padded side by side in one
buffer [layers, G, kv_heads, capacity, head_dim], kept across steps: while the same sequences go on
decoding one token each, a step only writes the new token there (one indexed store per layer) and
copies it back to each cache; the buffer is rebuilt only when the group changes. The attention is
two batched matmuls with the query heads grouped per key head (no repeated K/V), on the CPU about
ten times faster than SDPA's path for a boolean mask with grouped heads.
"""

from __future__ import annotations

import torch

HEADROOM = 64  # positions reserved past the longest member: a rebuild at most every 64 steps


class DecodeGroup:
    def __init__(self) -> None:
        self.caches: list = []
        self.ends: list[int] = []
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def prepare(self, caches: list, pasts: list[int]) -> None:
        """The members (StaticKV caches, in order) and their lengths before this step's token."""
        same = (self.keys is not None and len(caches) == len(self.caches) and pasts == self.ends
                and all(a is b for a, b in zip(caches, self.caches)) and max(pasts) < self.keys.shape[3])
        if not same:
            first = caches[0].k  # [layers, kv_heads, capacity, head_dim]
            cap = max(pasts) + 1 + HEADROOM
            self.keys = first.new_empty(first.shape[0], len(caches), first.shape[1], cap, first.shape[3])
            self.values = torch.zeros_like(self.keys)  # padding is masked, but 0 * NaN would still be NaN
            for r, (c, p) in enumerate(zip(caches, pasts)):
                self.keys[:, r, :, :p] = c.k[:, :, :p]
                self.values[:, r, :, :p] = c.v[:, :, :p]
        self.caches, self.ends = list(caches), [p + 1 for p in pasts]
        dev = self.keys.device
        ends = torch.tensor(self.ends, device=dev)
        self.longest = max(self.ends)
        self.visible = (torch.arange(self.longest, device=dev) < ends[:, None])[:, None, None, :]  # [G, 1, 1, L]
        self.members, self.at = torch.arange(len(caches), device=dev), ends - 1

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q [G, hq, d], this step's k and v [G, hk, d] -> [G, hq, 1, d]."""
        self.keys[layer, self.members, :, self.at] = k
        self.values[layer, self.members, :, self.at] = v
        keys, values = self.keys[layer, :, :, :self.longest], self.values[layer, :, :, :self.longest]
        g, hq, d = q.shape
        hk = keys.shape[1]
        scores = torch.matmul(q.view(g, hk, hq // hk, d), keys.transpose(-1, -2)).float() * scale  # [G, hk, rep, L]
        probs = torch.softmax(scores.masked_fill(~self.visible, float("-inf")), -1).to(values.dtype)
        return torch.matmul(probs, values).view(g, hq, 1, d)

    def write_back(self) -> None:
        """This step's K/V into each member's own cache."""
        for r, (c, end) in enumerate(zip(self.caches, self.ends)):
            c.k[:, :, end - 1] = self.keys[:, r, :, end - 1]
            c.v[:, :, end - 1] = self.values[:, r, :, end - 1]
