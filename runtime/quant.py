"""Weight formats for the fast decoder: float (fp32, fp16, bf16) and weight-only int8 / int4 (gpt-fast style).

A decode step of a small model is memory-bound: it streams every weight once per step. Weight-only
quantization reads a half (int8) or about a third (int4 with its scales) of the bf16 bytes, and
torch's CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) dequantize on the fly.
They take bf16 activations (their fp32 path is 10-20x slower), so the int formats run the model in
bf16, and they dequantize again for every row: on a CPU without native bf16 arithmetic (AVX2) a
4-row matmul costs 2.3x a 1-row one.

float16 stores the weights in half precision and runs fbgemm's fp16 GEMM (`linear_dynamic_fp16`,
the kernel of torch's dynamic fp16 quantization): float32 activations and accumulation, each weight
panel converted once for all rows, so a 4-row matmul costs 1.5x a 1-row one on AVX2. It is also
the most precise of the fast formats (10-bit weights, fp32 activations). x86 only (fbgemm).

Int4 is group-wise and asymmetric: w = (q - 8) * scale + zero per group of 32 inputs, which holds a
GGUF Q4_1 block (w = d * q + m) exactly: scale = d, zero = m + 8d (`gguf_weights` builds the
embedded model's layers from its own blocks, so it runs on the weights it ships with).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weight_format import WeightFormat

GROUP = 32  # int4 group size: a GGUF Q4_1 block


def activations(fmt: WeightFormat) -> torch.dtype:
    """The activation dtype a format runs with: the int kernels take bf16, fbgemm's fp16 GEMM fp32."""
    return torch.float32 if fmt in (WeightFormat.FLOAT32, WeightFormat.FLOAT16) else torch.bfloat16


def float16_supported() -> bool:
    """fbgemm (x86) is built into this torch: the float16 format can run."""
    return "fbgemm" in torch.backends.quantized.supported_engines


@dataclass(frozen=True)
class Dense:
    """A float weight [out, in]."""

    w: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes


@dataclass(frozen=True)
class Half:
    """A float weight [out, in] stored in float16, packed for fbgemm; float32 in and out."""

    packed: torch.ScriptObject
    shape: tuple[int, int]

    @staticmethod
    def pack(w: torch.Tensor) -> Half:
        return Half(torch.ops.quantized.linear_prepack_fp16(w.float().contiguous(), None), tuple(w.shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 2


@dataclass(frozen=True)
class Int8:
    """int8 codes [out, in] and one scale per output channel: w = q * scale."""

    q: torch.Tensor
    scales: torch.Tensor

    @staticmethod
    def quantize(w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int8:
        w = w.float()
        scales = (w.abs().amax(1) / 127).clamp(min=1e-10)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return Int8(q.contiguous(), scales.to(dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return torch.ops.aten._weight_int8pack_mm(rows, self.q, self.scales).view(*x.shape[:-1], self.q.shape[0])

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scales.nbytes


@dataclass(frozen=True)
class Int4:
    """4-bit codes packed for torch's CPU kernel, with [in / 32, out, 2] (scale, zero) per group:
    w = (q - 8) * scale + zero."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor
    out_features: int

    @staticmethod
    def from_codes(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype,
                   out_features: int | None = None) -> Int4:
        """q: int codes 0..15 [out, in]; scales, zeros: [out, in / 32] (float32). `out_features`:
        fewer than q's rows when q was padded to the kernel's multiple of 16."""
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        sz = torch.stack([scales.t(), zeros.t()], -1).to(dtype).contiguous()
        return Int4(packed, sz, out_features or q.shape[0])

    @staticmethod
    def quantize(w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int4:
        """Group-wise min/max quantization of a float weight (the Q4_1 scheme)."""
        out, k = w.shape
        pad = -out % 16  # the kernel takes outputs in multiples of 16: zero rows, sliced off again
        w = torch.cat([w.float(), w.new_zeros(pad, k, dtype=torch.float32)]) if pad else w.float()
        g = w.view(out + pad, k // GROUP, GROUP)
        lo, hi = g.amin(-1), g.amax(-1)
        scales = ((hi - lo) / 15).clamp(min=1e-10)
        q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).view(out + pad, k)
        return Int4.from_codes(q, scales, lo + 8 * scales, dtype, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scales_zeros)
        if y.shape[1] != self.out_features:
            y = y[:, :self.out_features]
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_zeros.nbytes


@dataclass(frozen=True)
class LoRA:
    """A quantized base weight plus a low-rank adapter kept apart: y = base(x) + (x A^T) B^T, with
    the adapter's scaling folded into B. Merging a LoRA delta into int4 weights and requantizing
    would round most of it away (the delta is smaller than a quantization step), so quantized
    formats run an adapter this way, as QLoRA trains it."""

    base: Dense | Int8 | Int4
    a: torch.Tensor  # [rank, in], float32
    b: torch.Tensor  # [out, rank], float32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # float32: these matmuls are tiny, and fp32's take 3-5 us where bf16's take 15-25 us
        y = self.base(x)
        return y + F.linear(F.linear(x.float(), self.a), self.b).to(y.dtype)

    @property
    def nbytes(self) -> int:
        return self.base.nbytes + self.a.nbytes + self.b.nbytes


Linear = Dense | Half | Int8 | Int4 | LoRA


def int4_fits(in_features: int) -> bool:
    """The int4 kernel's shape rule: inputs in whole groups (outputs are padded to 16)."""
    return in_features % GROUP == 0


def linear(w: torch.Tensor, fmt: WeightFormat) -> Linear:
    """A float weight in `fmt` (quantized from it for the int formats; int4 falls back to int8 for
    a shape its kernel cannot take)."""
    if fmt is WeightFormat.INT4 and int4_fits(w.shape[1]):
        return Int4.quantize(w)
    if fmt.quantized:
        return Int8.quantize(w)
    if fmt is WeightFormat.FLOAT16:
        return Half.pack(w)
    return Dense(w.to(activations(fmt)))


def dequantize(lin: Linear) -> torch.Tensor:
    """The weight a linear computes with, [out, in], read back through its own kernel (an identity
    input), so tests compare what actually runs."""
    if isinstance(lin, Dense):
        return lin.w
    if isinstance(lin, Half):
        return lin(torch.eye(lin.shape[1])).t()
    if isinstance(lin, LoRA):
        base = dequantize(lin.base)
        return base + (lin.b @ lin.a).to(base.dtype)
    dtype = lin.scales.dtype if isinstance(lin, Int8) else lin.scales_zeros.dtype
    k = lin.q.shape[1] if isinstance(lin, Int8) else lin.scales_zeros.shape[0] * GROUP
    return lin(torch.eye(k, dtype=dtype)).t()
