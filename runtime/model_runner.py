"""The one place that builds tensors: packed forward passes over a flat KV cache.

A sequence's KV cache is one flat cache (batch 1): the fast decoder's preallocated buffers for
Llama-family models, a transformers `DynamicCache` for any other model. Serial tokens, the
tokens of every live branch, and joins all append to it; who may attend to whom is decided by
per-token tags and the protocol's `visible` rule, so branches decode together in one forward,
and a join needs no copy and no re-prefill: the branch KV is already where the next serial
token can see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from . import fast_decoder
from .protocol import DEAD, Tag, visible


@dataclass(frozen=True)
class KVSlice:
    """A copy of the K/V of a run of serial tokens: [layers, kv_heads, n, head_dim] each. The
    prefix cache stores these; a new sequence starts from them instead of recomputing."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def n(self) -> int:
        return self.k.shape[2]

    def split(self, at: int) -> tuple[KVSlice, KVSlice]:
        return KVSlice(self.k[:, :, :at], self.v[:, :, :at]), KVSlice(self.k[:, :, at:], self.v[:, :, at:])

    @staticmethod
    def concat(parts: Sequence[KVSlice]) -> KVSlice:
        return KVSlice(torch.cat([p.k for p in parts], 2), torch.cat([p.v for p in parts], 2))


class KVState:
    """A sequence's KV cache plus the tag of every cached token (for the mask)."""

    def __init__(self, cache, device: torch.device, capacity: int = 1024):
        self.cache = cache  # fast_decoder.StaticKV or transformers DynamicCache
        self.length = 0
        self.has_dead = False
        self._blocks = torch.zeros(capacity, dtype=torch.int32, device=device)
        self._branches = torch.zeros(capacity, dtype=torch.int32, device=device)

    def _reserve(self, n: int) -> None:
        cap = self._blocks.numel()
        if self.length + n > cap:
            new = max(cap * 2, self.length + n)
            for name in ("_blocks", "_branches"):
                old = getattr(self, name)
                buf = torch.zeros(new, dtype=old.dtype, device=old.device)
                buf[:cap] = old
                setattr(self, name, buf)

    def append_tags(self, tags: Sequence[Tag]) -> None:
        n = len(tags)
        self._reserve(n)
        self._blocks[self.length:self.length + n] = torch.tensor([t.block for t in tags], dtype=torch.int32)
        self._branches[self.length:self.length + n] = torch.tensor([t.branch for t in tags], dtype=torch.int32)
        self.length += n

    def export(self, end: int) -> KVSlice:
        """A copy of the K/V of cached tokens [0, end)."""
        if self.cache is None or end > self.length:
            raise ValueError(f"cannot export {end} tokens from a cache of {self.length}")
        if isinstance(self.cache, fast_decoder.StaticKV):
            return KVSlice(self.cache.k[:, :, :end].clone(), self.cache.v[:, :, :end].clone())
        layers = self.cache.layers
        return KVSlice(torch.stack([layer.keys[0, :, :end] for layer in layers]),
                       torch.stack([layer.values[0, :, :end] for layer in layers]))

    def load(self, prefix: KVSlice) -> None:
        """Fill an empty cache with a prefix's K/V (serial tokens)."""
        if self.length:
            raise ValueError("load needs an empty cache")
        n = prefix.n
        if isinstance(self.cache, fast_decoder.StaticKV):
            self.cache.reserve(n)
            self.cache.k[:, :, :n] = prefix.k
            self.cache.v[:, :, :n] = prefix.v
            self.cache.length = n
        else:
            for i in range(prefix.k.shape[0]):
                self.cache.update(prefix.k[i][None], prefix.v[i][None], i)
        self.append_tags([Tag(0, 0)] * n)

    def kill(self, index: int) -> None:
        """Hide a cached token from every later query."""
        self._blocks[index] = DEAD
        self.has_dead = True

    def mask(self, n_new: int) -> torch.Tensor:
        """Boolean mask [1, 1, n_new, length] for the last n_new tokens, from the protocol's rule."""
        blocks, branches = self._blocks[:self.length], self._branches[:self.length]
        k_idx = torch.arange(self.length, device=blocks.device)
        q = slice(self.length - n_new, self.length)
        m = visible(k_idx[q, None], blocks[q, None], branches[q, None], k_idx[None], blocks[None], branches[None])
        return m[None, None]


class ModelRunner:
    def __init__(self, model: PreTrainedModel, fast: bool | None = None):
        """`fast=None` uses the fast decoder where the architecture allows it; False forces transformers."""
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        self.forwards = 0  # forward passes run, for statistics
        use_fast = fast_decoder.supported(model) if fast is None else fast
        self.fast = fast_decoder.FastDecoder(model) if use_fast else None

    def new_kv(self) -> KVState:
        cache = self.fast.new_cache() if self.fast else DynamicCache(config=self.model.config)
        return KVState(cache, self.device)

    @torch.inference_mode()
    def forward(self, kv: KVState, tokens: Sequence[int], positions: Sequence[int], tags: Sequence[Tag],
                logits_at: Sequence[int]) -> torch.Tensor:
        """Feed `tokens` (appended to the cache) and return float32 logits at the given row indices."""
        n = len(tokens)
        self.forwards += 1
        kv.append_tags(tags)
        # Serial queries over a cache without dead tokens see everything before them: the model's own
        # causal mask is exact and cheaper. Branch queries get the protocol's explicit mask.
        plain_causal = not kv.has_dead and all(t.block == 0 for t in tags)
        if self.fast:
            attn = None if plain_causal and n == 1 else kv.mask(n)
            return self.fast.forward(kv.cache, self._long(tokens), self._long(positions), attn,
                                     self._long(logits_at)).float()
        attn = None if plain_causal else kv.mask(n)
        out = self.model(
            input_ids=self._long(tokens)[None],
            position_ids=self._long(positions)[None],
            attention_mask=attn,
            cache=kv.cache,
            use_cache=True,
            logits_to_keep=self._long(logits_at),
        )
        return out.logits[0].float()

    def _long(self, xs: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(xs), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def full_forward(self, tokens: Sequence[int], tags: Sequence[Tag], positions: Sequence[int]) -> torch.Tensor:
        """The reference for joins: one cache-free transformers forward of a whole written sequence
        with the protocol's mask and positions (never the fast decoder)."""
        kv = KVState(None, self.device, capacity=len(tokens))
        kv.append_tags(tags)
        out = self.model(input_ids=self._long(tokens)[None], position_ids=self._long(positions)[None],
                         attention_mask=kv.mask(len(tokens)), use_cache=False)
        return out.logits[0].float()
