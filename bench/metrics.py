"""Per-answer and per-system figures of `aspd bench`; plain Python (no torch), unit-tested directly."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable


def ideal_speedup(total_tokens: int, critical_path_tokens: int) -> float:
    """What perfectly parallel decoding of this answer's structure could give: total tokens over the
    tokens on its critical path (serial tokens plus each parallel block's longest branch)."""
    if critical_path_tokens <= 0:
        return 1.0
    return total_tokens / critical_path_tokens


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that already appeared earlier in it (0: no repeats; a
    looping answer approaches 1)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def length_ratio(tokens: int, reference_tokens: int) -> float:
    return tokens / reference_tokens if reference_tokens else math.nan


def stats(values: Iterable[float]) -> dict[str, float]:
    """mean / median / max / min over the finite values (NaN when there are none)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": math.nan, "median": math.nan, "max": math.nan, "min": math.nan, "n": 0}
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs), "max": max(xs), "min": min(xs),
            "n": len(xs)}


def relative_delta(value: float, reference: float) -> float:
    """(value - reference) / |reference|: the quality change against the reference system."""
    if not reference or not math.isfinite(reference) or not math.isfinite(value):
        return math.nan
    return (value - reference) / abs(reference)
