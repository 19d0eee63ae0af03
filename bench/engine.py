"""Engine benchmark: step time vs live branches, serial tok/s vs transformers, 4-branch fork speedup.

    .venv/bin/python bench/engine.py            # writes bench/results/engine.json

Every figure is measured here, in one run, on the embedded model (bf16 unless --dtype).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

PROMPT = "Give some tips for staying healthy."
OUT = Path(__file__).resolve().parent / "results" / "engine.json"
console = Console()


def fixed(n: int, **kw) -> SamplingParams:
    """Fixed-length decoding (EOS ignored) so every system does exactly the same amount of work."""
    return SamplingParams(max_new_tokens=n, ignore_eos=True, repetition_penalty=1.2, **kw)


def step_ms(eng: Engine, prompt: list[int], branches: int, tokens: int) -> float:
    """Mean wall time of one decode step with `branches` live streams (prefill excluded)."""
    seq = eng.new_sequence(prompt)
    eng.prefill(seq)
    if branches == 1:
        out = eng.generate(seq, fixed(tokens), "ar")
    else:
        out = eng.fork(seq, [f"{i + 1}." for i in range(branches)],
                       fixed(tokens * branches, max_branch_tokens=tokens))
    return out.total_s / out.forward_passes * 1000


def engine_serial(eng: Engine, prompt: list[int], n: int) -> float:
    seq = eng.new_sequence(prompt)
    t = time.perf_counter()
    eng.generate(seq, fixed(n), "ar")
    return n / (time.perf_counter() - t)


def hf_serial(eng: Engine, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    t = time.perf_counter()
    with torch.inference_mode():
        out = eng.loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                        min_new_tokens=n, do_sample=False, repetition_penalty=1.2)
    assert out.shape[1] - ids.shape[1] == n
    return n / (time.perf_counter() - t)


def fork_vs_sequential(eng: Engine, prompt: list[int], k: int, n: int) -> tuple[float, float]:
    """Wall time of a k-branch fork (n tokens each) and of the same k branches one after another.
    The shared prompt is prefilled before the clock starts in both cases."""
    seeds = [f"\n\n{i + 1}." for i in range(k)]
    seq = eng.new_sequence(prompt)
    eng.prefill(seq)
    t = time.perf_counter()
    out = eng.fork(seq, seeds, fixed(n * k, max_branch_tokens=n))
    par = time.perf_counter() - t
    assert out.parallel_tokens == n * k
    ser = 0.0
    for s in seeds:
        one = eng.new_sequence(prompt)
        eng.prefill(one)
        t = time.perf_counter()
        eng.extend(one, s)
        eng.generate(one, fixed(n), "ar")
        ser += time.perf_counter() - t
    return par, ser


def main() -> None:
    ap = common.parser(OUT, repeats=7)
    ap.add_argument("--serial-tokens", type=int, default=128)
    args = ap.parse_args()
    eng = common.engine(args)
    prompt = eng.chat_prompt(PROMPT)
    step_ms(eng, prompt, 2, 4)  # warm up
    hf_serial(eng, prompt, 4)

    steps = {k: min(step_ms(eng, prompt, k, 32) for _ in range(args.repeats)) for k in (1, 2, 4, 8)}
    eng_hf = Engine(eng.loaded, fast=False)  # the engine on transformers' forward (non-Llama models)
    ours, hf, ours_hf = [], [], []
    for _ in range(args.repeats):  # interleaved so machine drift hits all alike
        ours.append(engine_serial(eng, prompt, args.serial_tokens))
        hf.append(hf_serial(eng, prompt, args.serial_tokens))
        ours_hf.append(engine_serial(eng_hf, prompt, args.serial_tokens))
    forks = [fork_vs_sequential(eng, prompt, 4, 64) for _ in range(args.repeats)]
    par = min(f[0] for f in forks)
    ser = min(f[1] for f in forks)
    res = {
        "model": args.model, "dtype": args.dtype, "prompt_tokens": len(prompt),
        "step_ms": {str(k): round(v, 2) for k, v in steps.items()},
        # Best of N: this shared 2-core machine only ever adds time (runs spread by +-10%), so the
        # fastest run of each system is the cleanest estimate; medians are kept for reference.
        "serial_tok_s": round(max(ours), 2), "hf_tok_s": round(max(hf), 2),
        "serial_vs_hf": round(max(ours) / max(hf), 3),
        "serial_vs_hf_median": round(statistics.median(ours) / statistics.median(hf), 3),
        "serial_tok_s_runs": [round(x, 2) for x in ours], "hf_tok_s_runs": [round(x, 2) for x in hf],
        "serial_tok_s_transformers_forward": round(max(ours_hf), 2),
        "fast_decoder": eng.runner.fast is not None,
        "fork4_parallel_s": round(par, 3), "fork4_sequential_s": round(ser, 3),
        "fork4_speedup": round(ser / par, 2),
        "settings": {"repeats": args.repeats, "serial_tokens": args.serial_tokens, "fork": "4 branches x 64 tokens",
                     "step_tokens_per_branch": 32, "repetition_penalty": 1.2, "greedy": True},
        **common.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    t = Table(title=f"engine benchmark ({args.dtype}, {args.model})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in steps.items():
        t.add_row(f"step time, {k} live branch{'es' if k > 1 else ''}", f"{v:.1f} ms")
    t.add_row("serial tok/s: engine / transformers", f"{res['serial_tok_s']} / {res['hf_tok_s']} "
              f"({res['serial_vs_hf']}x)")
    t.add_row("serial tok/s, engine on transformers' forward", f"{res['serial_tok_s_transformers_forward']}")
    t.add_row("4x64 fork vs one after another", f"{par:.2f} s vs {ser:.2f} s ({res['fork4_speedup']}x)")
    t.add_row("peak RSS", f"{res['peak_rss_mb']} MB")
    console.print(t)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
