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
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from . import attention, attention_plan, fast_decoder
from .protocol import DEAD, Tag, visible
from .weight_format import WeightFormat


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


@dataclass(frozen=True)
class Forward:
    """One sequence's share of a forward pass: tokens appended to its cache, logits wanted at some rows."""

    kv: KVState
    tokens: Sequence[int]
    positions: Sequence[int]
    tags: Sequence[Tag]
    logits_at: Sequence[int]


class KVState:
    """A sequence's KV cache plus the tag of every cached token (for the mask)."""

    def __init__(self, cache, device: torch.device, capacity: int = 1024):
        self.cache = cache  # fast_decoder.StaticKV or transformers DynamicCache
        self.length = 0
        self.has_dead = False
        self._blocks = torch.zeros(capacity, dtype=torch.int32, device=device)
        self._branches = torch.zeros(capacity, dtype=torch.int32, device=device)

    @property
    def capacity(self) -> int:
        """Tokens its K/V memory holds room for (what a memory budget must charge)."""
        return self.cache.capacity if isinstance(self.cache, fast_decoder.StaticKV) else self.length

    def _reserve(self, n: int) -> None:  # tags grow by doubling
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
        return self.gather(range(end))

    def load(self, prefix: KVSlice) -> None:
        """Fill an empty cache with a prefix's K/V (serial tokens)."""
        if self.length:
            raise ValueError("load needs an empty cache")
        self.append(prefix, [Tag(0, 0)] * prefix.n)

    def copy_into(self, out: KVState) -> KVState:
        """Copy K/V, tags and dead marks into an empty cache: a sequence forked at its current end."""
        if out.length:
            raise ValueError("copy_into needs an empty cache")
        if self.length:
            tags = [Tag(b, j) for b, j in zip(self._blocks[:self.length].tolist(),
                                               self._branches[:self.length].tolist())]
            out.append(self.gather(range(self.length)), tags)
            out.has_dead = self.has_dead
        return out

    def gather(self, indices: Sequence[int]) -> KVSlice:
        """A copy of the K/V of the cached tokens at `indices`."""
        idx = torch.tensor(list(indices), dtype=torch.long, device=self._blocks.device)
        if isinstance(self.cache, fast_decoder.StaticKV):
            return KVSlice(self.cache.k[:, :, idx], self.cache.v[:, :, idx])
        layers = self.cache.layers
        return KVSlice(torch.stack([layer.keys[0, :, idx] for layer in layers]),
                       torch.stack([layer.values[0, :, idx] for layer in layers]))

    def append(self, kv: KVSlice, tags: Sequence[Tag]) -> None:
        """Append K/V computed elsewhere (a prefix from the cache, a branch from another sequence)."""
        n = kv.n
        if isinstance(self.cache, fast_decoder.StaticKV):
            self.cache.reserve(n)
            self.cache.k[:, :, self.cache.length:self.cache.length + n] = kv.k
            self.cache.v[:, :, self.cache.length:self.cache.length + n] = kv.v
            self.cache.length += n
        else:
            for i in range(kv.k.shape[0]):
                self.cache.update(kv.k[i][None], kv.v[i][None], i)
        self.append_tags(tags)

    def tags(self) -> tuple[Tag, ...]:
        """Every cached token's tag (for attention planning; a device sync on CUDA)."""
        blocks, branches = self._blocks[:self.length].tolist(), self._branches[:self.length].tolist()
        return tuple(Tag(b, j) for b, j in zip(blocks, branches))

    def truncate(self, n: int) -> None:
        """Drop the last n cached tokens: the cache is as if they had never been appended."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot drop {n} tokens from a cache of {self.length}")
        self.length -= n
        if isinstance(self.cache, fast_decoder.StaticKV):
            self.cache.length -= n
        elif self.cache is not None:
            self.cache.crop(-n)  # transformers: a negative count drops that many from the end

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
    def __init__(self, model: PreTrainedModel, fast: bool | None = None, attention_backend: str = "auto",
                 weights: WeightFormat | None = None, gguf: Path | None = None, lora: dict | None = None,
                 dense_rows: int | None = None):
        """`fast=None` uses the fast decoder where the architecture allows it; False forces transformers.
        `weights`, `gguf`, `lora`, `dense_rows`: the fast decoder's weight format (None: the model's
        float dtype), exact int4 source, adapter factors and prefill rule (`FastDecoder`); the
        transformers path always runs the model's float (merged) weights.
        `attention_backend` (`runtime.attention`): sdpa with the protocol's dense mask, or the two-level
        cascade (flashinfer on CUDA; `cascade` is its torch reference) through transformers' forward."""
        self.model = model
        self.device = next(model.parameters()).device
        self.attention = attention.choose(attention_backend, self.device)
        if self.attention != "sdpa":
            fast = False  # the fast decoder has its own attention; the cascade runs inside transformers'
            model.set_attn_implementation(attention.register())
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        self.forwards = 0  # forward passes run, for statistics
        use_fast = fast_decoder.supported(model) if fast is None else fast
        float_format = WeightFormat.FLOAT32 if model.dtype == torch.float32 else WeightFormat.BFLOAT16
        self.fast = (fast_decoder.FastDecoder(model, weights or float_format, gguf, lora, dense_rows)
                     if use_fast else None)
        self.weights = self.fast.format if self.fast else float_format

    def new_kv(self) -> KVState:
        cache = self.fast.new_cache() if self.fast else DynamicCache(config=self.model.config)
        return KVState(cache, self.device)

    def forward(self, kv: KVState, tokens: Sequence[int], positions: Sequence[int], tags: Sequence[Tag],
                logits_at: Sequence[int]) -> torch.Tensor:
        """Feed `tokens` (appended to the cache) and return float32 logits at the given row indices."""
        return self.forward_many([Forward(kv, tokens, positions, tags, logits_at)])[0]

    @torch.inference_mode()
    def forward_many(self, batch: Sequence[Forward]) -> list[torch.Tensor]:
        """One forward pass over several sequences (continuous batching): their tokens are packed
        into one row block for every matmul, and each attends over its own cache. Float32 logits
        at each one's `logits_at` rows. Without the fast decoder, sequences run one after another."""
        self.forwards += 1
        masks = [self._mask(f, any_length=self.fast is None) for f in batch]
        if self.fast:
            out = self.fast.forward_many([f.kv.cache for f in batch], [self._long(f.tokens) for f in batch],
                                         [self._long(f.positions) for f in batch], masks,
                                         [self._long(f.logits_at) for f in batch])
            return [o.float() for o in out]
        return [self._hf_forward(f, m) for f, m in zip(batch, masks)]

    @staticmethod
    def _mask(f: Forward, any_length: bool) -> torch.Tensor | None:
        """Append the tags; None where the model's own causal rule is exact: serial queries over a
        cache without dead tokens see everything before them (the fast decoder has no causal rule of
        its own, so only for one query). Branch queries get the protocol's explicit mask."""
        n = len(f.tokens)
        f.kv.append_tags(f.tags)
        if not f.kv.has_dead and all(t.block == 0 for t in f.tags) and (n == 1 or any_length):
            return None
        return f.kv.mask(n)

    def _hf_forward(self, f: Forward, attn: torch.Tensor | None) -> torch.Tensor:
        if self.attention == "sdpa":
            how = {"attention_mask": attn}
        else:  # one plan per step, shared by every layer
            how = {"aspd_plan": attention_plan.plan([attention_plan.SeqStep(f.kv.tags(), len(f.tokens))])}
        out = self.model(
            input_ids=self._long(f.tokens)[None],
            position_ids=self._long(f.positions)[None],
            **how,
            cache=f.kv.cache,
            use_cache=True,
            logits_to_keep=self._long(f.logits_at),
        )
        return out.logits[0].float()

    def _long(self, xs: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(xs), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def full_forward(self, tokens: Sequence[int], tags: Sequence[Tag], positions: Sequence[int]) -> torch.Tensor:
        """The reference for joins: one cache-free transformers forward of a whole written sequence
        with the protocol's mask and positions (never the fast decoder)."""
        out = self.model(input_ids=self._long(tokens)[None], position_ids=self._long(positions)[None],
                         attention_mask=sequence_mask(tags, self.device), use_cache=False)
        return out.logits[0].float()


def sequence_mask(tags: Sequence[Tag], device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool attention mask [1, 1, n, n] of a whole written sequence, from the protocol's rule: the
    mask training uses, built by the same code as the engine's incremental masks."""
    kv = KVState(None, torch.device(device), capacity=max(len(tags), 1))
    kv.append_tags(tags)
    return kv.mask(len(tags))
