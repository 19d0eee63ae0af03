"""Render the README's benchmark table from bench/results/*.json (the README never holds hand-typed figures).

    .venv/bin/python bench/report.py          # rewrites the block between the markers in README.md
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench:engine:begin -->", "<!-- bench:engine:end -->"


def engine_table(r: dict) -> str:
    steps = r["step_ms"]
    rows = [
        "| metric | value |",
        "|---|---|",
        *(f"| decode step, {k} live branch{'es' if k != '1' else ''} | {v:.1f} ms |" for k, v in steps.items()),
        f"| serial decoding, engine | {r['serial_tok_s']:.2f} tok/s |",
        f"| serial decoding, transformers `generate` (same model, dtype, settings) | {r['hf_tok_s']:.2f} tok/s |",
        f"| engine / transformers | {r['serial_vs_hf']:.3f}x |",
        f"| serial decoding, engine on transformers' forward (any non-Llama model) | "
        f"{r['serial_tok_s_transformers_forward']:.2f} tok/s |",
        f"| 4-branch fork, 64 tokens each | {r['fork4_parallel_s']:.2f} s |",
        f"| same 4 branches one after another | {r['fork4_sequential_s']:.2f} s |",
        f"| fork speedup | {r['fork4_speedup']:.2f}x |",
        f"| peak RSS | {r['peak_rss_mb']:.0f} MB |",
    ]
    m, v = r["machine"], r["versions"]
    note = (f"\n{r['model']}, {r['dtype']}, {m['cores']} cores ({m['cpu']}), torch {v['torch']}, "
            f"transformers {v['transformers']}, best of {r['settings']['repeats']} interleaved runs, {r['date']}. "
            f"Serial runs (tok/s), engine: {r['serial_tok_s_runs']}; transformers: {r['hf_tok_s_runs']}; "
            f"ratio of medians {r['serial_vs_hf_median']}x.")
    return "\n".join(rows) + "\n" + note


def main() -> None:
    r = json.loads((ROOT / "bench" / "results" / "engine.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{engine_table(r)}\n{END}"
    readme.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print(block)


if __name__ == "__main__":
    main()
