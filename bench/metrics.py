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


# Code is not prose: fenced blocks (to the end if unclosed), inline spans (to the line's end if the
# answer was cut inside one), C preprocessor lines outside a fence, URLs and e-mail addresses.
_CODE = re.compile(r"```.*?(```|\Z)|`[^`\n]*(`|$)"
                   r"|^[ \t]*#(include|define|undef|import|pragma|ifn?def|if|elif|else|endif|error)\b.*?$"
                   r"|https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+", re.S | re.M)
_LANGUAGE = re.compile(r"[A-Z]#")  # C#, F#: names, not stray symbols
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(\.\w|::\w|\()")  # file.is_open(), std::string, sort_rec(a: unfenced code
_TEXT_PUNCT = set(".,;:!?'\"()[]{}-/%&*+=<>$°…–—‘’“”^~≈≤≥≠±×÷√∑∏∆∞")  # prose, Markdown and math


def degenerate_words(text: str) -> list[str]:
    """The words of an answer that are broken text, the way a small model's text degrades under a
    harsh repetition penalty: run-on words glued from several (two or more lower-to-upper case
    changes: 'ThisOneIs', 'NotABoutMe'; 'JavaScript' and 'McDonald' have one), letter runs of 25 or
    more, and stray symbols ('#tag', '_x', '@', '|', '~', emoji). Code (`_CODE`, dotted names, calls), URLs,
    e-mail addresses, language names and Markdown's own marks (headings, bold, bullets) are not."""
    out = []
    for word in _CODE.sub(" ", text).split():
        core = word.strip(".,;:!?()[]\"'*")
        if not core or set(core) <= {"#"} or set(core) <= {"|"}:  # Markdown heading and table marks
            continue
        if _LANGUAGE.fullmatch(core) or _IDENTIFIER.match(core):
            continue
        run_on = len(re.findall(r"[a-z][A-Z]", core)) >= 2
        too_long = re.search(r"[^\W\d_]{25,}", core) is not None
        stray = any(not (c.isalnum() or c in _TEXT_PUNCT) for c in core)
        if run_on or too_long or stray:
            out.append(word)
    return out


DEGENERATE_MAX = 0.01  # an answer with more flagged words than this is broken text (the base model: ~0.2%)


def degenerate_rate(text: str) -> float:
    """Share of an answer's words that `degenerate_words` flags (0 for clean prose). Code counts among
    the words, as clean ones: an answer of code and three stray words is not 100% broken text."""
    words = text.split()
    return len(degenerate_words(text)) / len(words) if words else 0.0


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
