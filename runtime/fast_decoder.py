"""A direct forward for Llama-family decoders (gpt-fast style), used by the model runner when it can.

Same weights and the same math as transformers' Llama forward, with what a decode step does not
need taken out: q/k/v and gate/up run as one fused matmul each (4 matmuls a layer instead of 7), the
KV cache is preallocated (no per-step concatenation), and there is no module dispatch. Any other
architecture runs through transformers; the transformers forward is also the reference the tests
compare this one against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


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
    def __init__(self, model: PreTrainedModel):
        cfg, core = model.config, model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.embed = core.embed_tokens
        self.rotary = core.rotary_emb
        self.norm_w, self.eps = core.norm.weight, core.norm.variance_epsilon
        self.lm_head = model.get_output_embeddings().weight
        self.layers = []
        for layer in core.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight,
                _fuse(a.q_proj, a.k_proj, a.v_proj),
                a.o_proj.weight,
                layer.post_attention_layernorm.weight,
                _fuse(m.gate_proj, m.up_proj),
                m.down_proj.weight,
            ))
        self.dtype = self.lm_head.dtype
        self.device = self.lm_head.device

    def new_cache(self) -> StaticKV:
        return StaticKV(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * h.to(x.dtype)

    @torch.inference_mode()
    def forward(self, kv: StaticKV, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                logits_at: torch.Tensor) -> torch.Tensor:
        """ids, pos: [T]; mask: bool [1, 1, T, past + T] or None (every query sees every key)."""
        t = ids.shape[0]
        kv.reserve(t)
        start, end = kv.length, kv.length + t
        x = self.embed(ids)[None]  # [1, T, hidden]
        cos, sin = self.rotary(x, pos[None])  # [1, T, head_dim]
        hq, hk, d = self.heads, self.kv_heads, self.head_dim
        for i, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = F.linear(self._rms(x, ln1), wqkv)[0]  # [T, (hq + 2 hk) d]
            q = qkv[:, :hq * d].view(t, hq, d).transpose(0, 1)
            k = qkv[:, hq * d:(hq + hk) * d].view(t, hk, d).transpose(0, 1)
            v = qkv[:, (hq + hk) * d:].view(t, hk, d).transpose(0, 1)
            q = q * cos + _rotate_half(q) * sin
            kv.k[i, :, start:end] = k * cos + _rotate_half(k) * sin
            kv.v[i, :, start:end] = v
            o = F.scaled_dot_product_attention(q[None], kv.k[i, None, :, :end], kv.v[i, None, :, :end],
                                               attn_mask=mask, scale=self.scale, enable_gqa=hq != hk)
            x = x + F.linear(o[0].transpose(0, 1).reshape(1, t, hq * d), wo)
            gate, up = F.linear(self._rms(x, ln2), wgu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, wdown)
        kv.length = end
        h = self._rms(x[0, logits_at], self.norm_w)
        return F.linear(h, self.lm_head)


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
