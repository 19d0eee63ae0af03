"""The weight formats the fast decoder runs (torch-free, so the CLI can list them without torch)."""

from __future__ import annotations

from enum import StrEnum


class WeightFormat(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights, float32 activations: fbgemm's CPU GEMM (x86 only)
    BFLOAT16 = "bfloat16"
    INT8 = "int8"  # weight-only, per output channel, symmetric
    INT4 = "int4"  # weight-only, groups of 32 inputs, asymmetric (a GGUF Q4_1 block)

    @property
    def quantized(self) -> bool:
        return self in (WeightFormat.INT8, WeightFormat.INT4)

    @property
    def cpu_only(self) -> bool:
        """Runs on CPU kernels only (the int kernels, fbgemm's float16 GEMM)."""
        return self.quantized or self is WeightFormat.FLOAT16


DTYPES = ("auto", *(f.value for f in WeightFormat))  # the --dtype choices; auto: measured per machine
