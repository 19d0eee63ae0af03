"""The weight formats the fast decoder runs (torch-free, so the CLI can list them without torch)."""

from __future__ import annotations

from enum import StrEnum


class WeightFormat(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"  # weight-only, per output channel, symmetric
    INT4 = "int4"  # weight-only, groups of 32 inputs, asymmetric (a GGUF Q4_1 block)

    @property
    def quantized(self) -> bool:
        return self in (WeightFormat.INT8, WeightFormat.INT4)


DTYPES = ("auto", *(f.value for f in WeightFormat))  # the --dtype choices; auto: measured per machine
