"""The embedded model's transformer layers straight from its GGUF file, as int4 (Q4_1 blocks kept).

transformers dequantizes a GGUF on load; this reads the same file's Q4_1 blocks again and hands the
fast decoder int4 layers with those exact codes, scales and minimums, fused the way the decoder
runs them (q/k/v and gate/up concatenated by rows, which keeps each row's blocks intact). llama.cpp
stores the q and k rows permuted for its rotary layout; the same reverse permutation transformers
applies is applied here to whole rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .quant import GROUP, Int4

Q4_1 = 3  # ggml type id
Q4_1_BYTES = 20  # fp16 d, fp16 m, 16 bytes holding 32 four-bit codes


def q4_1_codes(blocks: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 bytes [rows, cols / 32 * 20] -> codes [rows, cols] (0..15), d and m [rows, cols / 32]
    (float32). In a block, byte j holds code j (low nibble) and code j + 16 (high nibble)."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(rows, cols // GROUP, Q4_1_BYTES)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    return torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(d), torch.from_numpy(m)


class GGUFLayoutError(ValueError):
    """The GGUF does not hold the expected Q4_1 tensors (a different quantization or architecture)."""


def rope_row_order(rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (transformers' `_reverse_permute_weights`)."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(2, 1).reshape(rows)


def read_q4_1(tensor, heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One GGUF tensor's codes [out, in] and d, m [out, in / 32], rows in transformers' order."""
    if int(tensor.tensor_type) != Q4_1:
        raise GGUFLayoutError(f"{tensor.name} is {tensor.tensor_type.name}, not Q4_1")
    cols, rows = (int(n) for n in tensor.shape)
    q, d, m = q4_1_codes(tensor.data, rows, cols)
    if heads:
        idx = torch.from_numpy(rope_row_order(rows, heads))
        q, d, m = q[idx], d[idx], m[idx]
    return q, d, m


def fused(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> Int4:
    q, d, m = (torch.cat(x) for x in zip(*parts))
    return Int4.from_codes(q, d, m + 8 * d, dtype)


def int4_layers(path: Path, config, dtype: torch.dtype = torch.bfloat16) -> list[tuple[Int4, Int4, Int4, Int4]]:
    """Per layer: (qkv, o, gate_up, down) as Int4 holding the GGUF's Q4_1 weights exactly."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    out = []
    for i in range(config.num_hidden_layers):
        try:
            t = {k: tensors[f"blk.{i}.{k}.weight"] for k in
                 ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
        except KeyError as e:
            raise GGUFLayoutError(f"{path.name} has no tensor {e.args[0]}") from None
        out.append((
            fused([read_q4_1(t["attn_q"], heads), read_q4_1(t["attn_k"], kv_heads), read_q4_1(t["attn_v"])], dtype),
            fused([read_q4_1(t["attn_output"])], dtype),
            fused([read_q4_1(t["ffn_gate"]), read_q4_1(t["ffn_up"])], dtype),
            fused([read_q4_1(t["ffn_down"])], dtype),
        ))
    return out
