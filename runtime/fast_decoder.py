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
from .decode_group import DecodeGroup
from .quant import Dense, Linear, LoRA, activations, linear
from .weight_format import WeightFormat

# The head's format per weight format. The head is a fifth of the model's weights and sets the
# logits directly. With int4 layers it runs in int8 (its GGUF source is Q8_0). Measured with
# bench/formats.py: against a bf16 head, half the bytes, loss delta +0.06% vs +0.10% (80 prompts);
# an int4 head reads 11 MB less but costs +2.5% loss (24 prompts).
HEAD_FORMAT = {WeightFormat.FLOAT32: WeightFormat.FLOAT32, WeightFormat.FLOAT16: WeightFormat.FLOAT16,
               WeightFormat.BFLOAT16: WeightFormat.BFLOAT16,
               WeightFormat.INT8: WeightFormat.INT8, WeightFormat.INT4: WeightFormat.INT8}


def supported(model: PreTrainedModel) -> bool:
    cfg = model.config
    return (getattr(cfg, "model_type", None) == "llama" and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False) and getattr(cfg, "hidden_act", None) == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1)


class StaticKV:
    """Per-layer K and V in preallocated buffers [layers, kv_heads, capacity, head_dim], grown by a
    quarter (at least 256 tokens): few copies as a sequence grows, and a held sequence keeps at most
    a quarter more memory than its tokens need (doubling could keep twice as much)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 512):
        self.k = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, n: int) -> None:
        cap = self.k.shape[2]
        if self.length + n <= cap:
            return
        new = max(cap + max(cap // 4, 256), self.length + n)
        for name in ("k", "v"):
            old = getattr(self, name)
            buf = old.new_empty(old.shape[0], old.shape[1], new, old.shape[3])
            buf[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, buf)


# The decoder's four matmuls per layer and the modules each one fuses.
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
          ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))


class FastDecoder:
    def __init__(self, model: PreTrainedModel, fmt: WeightFormat = WeightFormat.BFLOAT16,
                 gguf: Path | None = None, lora: dict | None = None, dense_rows: int | None = None):
        """`fmt`: the weights' format. `gguf`: the GGUF the base weights were read from, whose Q4_1
        blocks the int4 format uses as they are. `lora`: the factors of an adapter merged into the
        model (`model_loader.LoRAFactors`); the float formats run the merged weights, the quantized
        ones the base weights plus the adapter as a low-rank side path (`quant.LoRA`). `dense_rows`:
        passes with at least this many rows (prefills) run the model's float weights instead, where
        a quantized kernel's cost grows faster in rows than a float matmul's (`autotune`)."""
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
        side = lora if fmt.quantized and lora else None
        self.layers: list[tuple] = []
        self.dense_layers: list[tuple] = []
        self.dense_rows = dense_rows if fmt.quantized else None
        self.dense_head = Dense(head.to(self.dtype)) if self.dense_rows else None  # a view in bf16
        self.group = DecodeGroup()
        for i, layer in enumerate(core.layers):
            lins, floats = [], []
            for g, (part, names) in enumerate(GROUPS):
                mods = [getattr(getattr(layer, part), n) for n in names]
                w = _fuse(*mods)
                if self.dense_rows:
                    floats.append(Dense(w.to(self.dtype)))
                factors = _lora_group(side, f"model.layers.{i}.{part}", names, mods) if side else None
                if exact:
                    lin = exact[i][g]
                else:  # quantize the base weights: the merged ones less the adapter's delta
                    lin = linear(w - factors[1] @ factors[0] if factors else w, fmt)
                lins.append(LoRA(lin, *factors) if factors else lin)
            norms = (layer.input_layernorm.weight.to(self.dtype), layer.post_attention_layernorm.weight.to(self.dtype))
            self.layers.append((norms[0], lins[0], lins[1], norms[1], lins[2], lins[3]))
            if self.dense_rows:  # views of the model's own float weights: no extra memory in bf16
                self.dense_layers.append((norms[0], floats[0], floats[1], norms[1], floats[2], floats[3]))
        self.norm_w = self.norm_w.to(self.dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes the matmuls read per step (every layer's weights and the head)."""
        return self.lm_head.nbytes + sum(lin.nbytes for layer in self.layers for lin in layer[1:] if
                                         not isinstance(lin, torch.Tensor))

    def new_cache(self) -> StaticKV:
        return StaticKV(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # transformers' LlamaRMSNorm (normalise in float32, round, then scale) in one kernel
        return w * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)

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
        layers = self.dense_layers if self.dense_rows and total >= self.dense_rows else self.layers
        # Decode steps of several sequences (one query each, no mask): one attention call (DecodeGroup).
        group = [j for j, (t, m) in enumerate(zip(sizes, masks)) if t == 1 and m is None]
        group = group if len(group) > 1 else []
        if group:
            self.group.prepare([caches[j] for j in group], [spans[j][2] for j in group])
            qrows = torch.tensor([spans[j][0] for j in group], device=x.device)
        else:
            self.group = DecodeGroup()  # nothing to keep: free the buffer
        alone = [j for j in range(len(caches)) if j not in set(group)]
        for i, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(layers):
            qkv = wqkv(self._rms(x, ln1))[0]  # [T, (hq + 2 hk) d]
            q = qkv[:, :hq * d].view(total, hq, d).transpose(0, 1)
            k = qkv[:, hq * d:(hq + hk) * d].view(total, hk, d).transpose(0, 1)
            v = qkv[:, (hq + hk) * d:].view(total, hk, d).transpose(0, 1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            outs: list[torch.Tensor | None] = [None] * len(caches)
            if group:
                o = self.group.attend(i, q[:, qrows].transpose(0, 1), k[:, qrows].transpose(0, 1),
                                      v[:, qrows].transpose(0, 1), self.scale)
                for r, j in enumerate(group):
                    outs[j] = o[r]  # [hq, 1, d]
            for j in alone:
                kv, (a, b, start, end) = caches[j], spans[j]
                kv.k[i, :, start:end] = k[:, a:b]
                kv.v[i, :, start:end] = v[:, a:b]
                outs[j] = F.scaled_dot_product_attention(
                    q[None, :, a:b], kv.k[i, None, :, :end], kv.v[i, None, :, :end],
                    attn_mask=masks[j], scale=self.scale, enable_gqa=hq != hk)[0]
            o = outs[0] if len(outs) == 1 else torch.cat(outs, 1)  # [hq, T, d]
            x = x + wo(o.transpose(0, 1).reshape(1, total, hq * d))
            gate, up = wgu(self._rms(x, ln2)).chunk(2, dim=-1)
            x = x + wdown(F.silu(gate) * up)
        if group:
            self.group.write_back()
        rows = []
        for kv, (a, _, _, end), at_rows in zip(caches, spans, logits_at):
            kv.length = end
            rows.append(at_rows + a)
        h = self._rms(x[0, torch.cat(rows)], self.norm_w)
        logits = (self.dense_head if self.dense_rows and h.shape[0] >= self.dense_rows else self.lm_head)(h)
        return list(logits.split([r.shape[0] for r in rows]))


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """Concatenate the weights of linears that read the same input into one matrix, and make the
    modules' own weights views of it, so the model holds one copy and transformers still runs.
    Idempotent: linears fused before give back the same matrix (several decoders, one copy)."""
    fused, row = getattr(linears[0], "_aspd_fused", None), 0
    if fused is not None:
        for lin in linears:  # still the views this function made?
            if row >= fused.shape[0] or lin.weight.data_ptr() != fused[row].data_ptr():
                break
            row += lin.weight.shape[0]
        if row == fused.shape[0]:
            return fused
    fused = torch.cat([lin.weight.detach() for lin in linears])
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused[row:row + n], requires_grad=False)
        row += n
    linears[0]._aspd_fused = fused
    return fused


def _lora_group(lora: dict, prefix: str, names: tuple[str, ...], mods: list) -> tuple | None:
    """One fused matmul's adapter: A stacked by rows [sum of ranks, in], B block-diagonal
    [sum of outs, sum of ranks] (a module without an adapter adds rank 0)."""
    parts = [lora.get(f"{prefix}.{n}") for n in names]
    if not any(parts):
        return None
    empty = [(m.weight.new_zeros(0, m.weight.shape[1], dtype=torch.float32),
              m.weight.new_zeros(m.weight.shape[0], 0, dtype=torch.float32)) for m in mods]
    parts = [p or e for p, e in zip(parts, empty)]
    return torch.cat([a for a, _ in parts]), torch.block_diag(*(b for _, b in parts))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
