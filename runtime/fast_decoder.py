"""A direct forward for Llama-family decoders (gpt-fast style), used by the model runner when it can.

Same weights and the same math as transformers' Llama forward, with what a decode step does not
need taken out: q/k/v and gate/up run as one fused matmul each (4 matmuls a layer instead of 7), the
KV cache is preallocated (no per-step concatenation), and there is no module dispatch. The weights
run in one of `quant.WeightFormat`'s formats (float, or weight-only int8 / int4; int4 from the
GGUF's own blocks where the model is the embedded one). Any other architecture runs through
transformers; the transformers forward is also the reference the tests compare this one against.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from . import gguf_weights
from .quant import Linear, activations, linear
from .weight_format import WeightFormat

# The head's format per weight format. The head is a fifth of the model's weights. With int4 layers
# it runs in int8 (its vocabulary of 49,158 rows is no multiple of the int4 kernel's 16, and its
# GGUF source is Q8_0): against a bf16 head, half the bytes, loss delta +0.06% vs +0.10%
# (bench/formats.py, both measured on Vicuna-80).
HEAD_FORMAT = {WeightFormat.FLOAT32: WeightFormat.FLOAT32, WeightFormat.BFLOAT16: WeightFormat.BFLOAT16,
               WeightFormat.INT8: WeightFormat.INT8, WeightFormat.INT4: WeightFormat.INT8}


def supported(model: PreTrainedModel) -> bool:
    cfg = model.config
    return (getattr(cfg, "model_type", None) == "llama" and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False) and getattr(cfg, "hidden_act", None) == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1)


class StaticKV:
    """Per-layer K and V in preallocated buffers [layers, kv_heads, capacity, head_dim], grown by doubling."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 512):
        self.k = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def reserve(self, n: int) -> None:
        cap = self.k.shape[2]
        if self.length + n <= cap:
            return
        new = max(2 * cap, self.length + n)
        for name in ("k", "v"):
            old = getattr(self, name)
            buf = old.new_empty(old.shape[0], old.shape[1], new, old.shape[3])
            buf[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, buf)


class FastDecoder:
    def __init__(self, model: PreTrainedModel, fmt: WeightFormat = WeightFormat.BFLOAT16,
                 gguf: Path | None = None):
        """`fmt`: the weights' format; `gguf`: the GGUF the model's weights were read from unchanged
        (no adapter merged), whose Q4_1 blocks the int4 format then uses as they are."""
        cfg, core = model.config, model.model
        self.format = fmt
        self.dtype = activations(fmt)
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.embed = core.embed_tokens
        self.rotary = core.rotary_emb
        self.norm_w, self.eps = core.norm.weight, core.norm.variance_epsilon
        head = model.get_output_embeddings().weight
        self.device = head.device
        self.lm_head: Linear = linear(head, HEAD_FORMAT[fmt])
        exact = gguf_weights.int4_layers(gguf, cfg) if fmt is WeightFormat.INT4 and gguf else None
        self.layers: list[tuple] = []
        for i, layer in enumerate(core.layers):
            a, m = layer.self_attn, layer.mlp
            mats = (_fuse(a.q_proj, a.k_proj, a.v_proj), a.o_proj.weight, _fuse(m.gate_proj, m.up_proj),
                    m.down_proj.weight)
            qkv, o, gate_up, down = exact[i] if exact else (linear(w, fmt) for w in mats)
            self.layers.append((layer.input_layernorm.weight.to(self.dtype), qkv, o,
                                layer.post_attention_layernorm.weight.to(self.dtype), gate_up, down))
        self.norm_w = self.norm_w.to(self.dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes the matmuls read per step (every layer's weights and the head)."""
        return self.lm_head.nbytes + sum(lin.nbytes for layer in self.layers for lin in layer[1:] if
                                         not isinstance(lin, torch.Tensor))

    def new_cache(self) -> StaticKV:
        return StaticKV(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * h.to(x.dtype)

    @torch.inference_mode()
    def forward_many(self, caches: list[StaticKV], ids: list[torch.Tensor], pos: list[torch.Tensor],
                     masks: list[torch.Tensor | None], logits_at: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several sequences in one pass. ids, pos: [T_i] each; masks: bool [1, 1, T_i, past_i + T_i]
        or None (every query sees every key). The matmuls run over all sequences' tokens at once
        (that is where a decode step's time goes); attention runs per sequence over its own cache."""
        sizes = [x.shape[0] for x in ids]
        spans, at = [], 0
        for kv, t in zip(caches, sizes):
            kv.reserve(t)
            spans.append((at, at + t, kv.length, kv.length + t))
            at += t
        total = at
        x = self.embed(torch.cat(ids))[None].to(self.dtype)  # [1, T, hidden]
        cos, sin = self.rotary(x, torch.cat(pos)[None])  # [1, T, head_dim], in x's dtype
        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        for i, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = wqkv(self._rms(x, ln1))[0]  # [T, (hq + 2 hk) d]
            q = qkv[:, :hq * d].view(total, hq, d).transpose(0, 1)
            k = qkv[:, hq * d:(hq + hk) * d].view(total, hk, d).transpose(0, 1)
            v = qkv[:, (hq + hk) * d:].view(total, hk, d).transpose(0, 1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            outs = []
            for kv, mask, (a, b, start, end) in zip(caches, masks, spans):
                kv.k[i, :, start:end] = k[:, a:b]
                kv.v[i, :, start:end] = v[:, a:b]
                outs.append(F.scaled_dot_product_attention(
                    q[None, :, a:b], kv.k[i, None, :, :end], kv.v[i, None, :, :end],
                    attn_mask=mask, scale=self.scale, enable_gqa=hq != hk)[0])
            o = outs[0] if len(outs) == 1 else torch.cat(outs, 1)  # [hq, T, d]
            x = x + wo(o.transpose(0, 1).reshape(1, total, hq * d))
            gate, up = wgu(self._rms(x, ln2)).chunk(2, dim=-1)
            x = x + wdown(F.silu(gate) * up)
        rows = []
        for kv, (a, _, _, end), at_rows in zip(caches, spans, logits_at):
            kv.length = end
            rows.append(at_rows + a)
        h = self._rms(x[0, torch.cat(rows)], self.norm_w)
        logits = self.lm_head(h)
        return list(logits.split([r.shape[0] for r in rows]))


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """Concatenate the weights of linears that read the same input into one matrix, and make the
    modules' own weights views of it, so the model holds one copy and transformers still runs."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused[row:row + n], requires_grad=False)
        row += n
    return fused


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
