"""Evaluate the shipped ASPD adapter: does the model fork where it should, and how fast and how good
are its answers?

1. Held-out split (`data/aspd/prompts_eval.jsonl`, never trained on): the merged model answers every
   prompt in ASPD mode; fork rate on list-like prompts and on the others; every output's markup
   must parse back to the same structure.
2. Vicuna-80, one question at a time (latency), interleaved: the merged model with parallel markup
   disallowed (AR) and in ASPD mode, same greedy settings; speedup AR/ASPD per answer, share of
   answers that forked. Quality proxies against the base model's own AR answers (no adapter):
   all-MiniLM-L6-v2 cosine, and the base model's per-token loss on each answer.

    .venv/bin/python bench/adapter.py        # writes bench/results/adapter.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import environment  # noqa: E402
from bench.quality import answer_loss, cosine  # noqa: E402
from runtime import protocol as P  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.model_loader import find_adapter, load  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime.serving import complete  # noqa: E402


def batch_answers(eng: Engine, prompts: list[str], params: SamplingParams, mode: str) -> list:
    """Answers for many prompts through the serving loop (throughput; no latency measured here)."""
    out = [None] * len(prompts)
    for i, ev in complete(eng, [eng.chat_prompt(p) for p in prompts], params, mode):
        if ev.error:
            raise RuntimeError(ev.error)
        out[i] = ev.result.output
    return out


def wellformed(o) -> bool:
    try:
        return P.parse(o.markup) == o.response
    except P.ProtocolError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default=None, help="default: the shipped adapter")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1, help="every k-th Vicuna question (default all 80)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adapter.json")
    args = ap.parse_args()
    console = Console()
    torch.set_num_threads(2)
    adapter = args.adapter or find_adapter()
    if adapter is None:
        raise SystemExit("no adapter: train one with `aspd train` or pass --adapter")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, repetition_penalty=1.2)
    merged = Engine(load(adapter=adapter))

    # 1. the held-out split
    evals = [json.loads(x) for x in (ROOT / "data" / "aspd" / "prompts_eval.jsonl").read_text().splitlines()]
    console.print(f"held-out split: {len(evals)} prompts, ASPD mode")
    outs = batch_answers(merged, [e["text"] for e in evals], params, "aspd")
    rate = {}
    for kind in ("listlike", "other"):
        sel = [o for e, o in zip(evals, outs) if e["kind"] == kind]
        rate[kind] = sum(bool(o.blocks) for o in sel) / len(sel)
    wf = sum(wellformed(o) for o in outs) / len(outs)

    # 2. Vicuna-80: AR vs ASPD, one at a time, interleaved
    qs = [json.loads(x) for x in (ROOT / "bench" / "data" / "vicuna80" / "question.jsonl").read_text().splitlines()]
    qs = qs[::args.stride]
    merged.generate(merged.new_sequence("warm up"), SamplingParams(max_new_tokens=4), "ar")
    rows = []
    for k, q in enumerate(qs):
        text = q["turns"][0]
        res = {}
        for mode in (("ar", "aspd") if k % 2 == 0 else ("aspd", "ar")):
            t0 = time.perf_counter()
            o = merged.generate(merged.new_sequence(merged.chat_prompt(text)), params, mode)
            res[mode] = (o, time.perf_counter() - t0)
        ar, aspd = res["ar"], res["aspd"]
        rows.append({"question_id": q["question_id"], "category": q["category"], "ar_s": ar[1], "aspd_s": aspd[1],
                     "speedup": ar[1] / aspd[1], "forked": bool(aspd[0].blocks), "ar_tokens": ar[0].completion_tokens,
                     "aspd_tokens": aspd[0].completion_tokens, "blocks": len(aspd[0].blocks),
                     "ar_text": ar[0].text, "aspd_text": aspd[0].text, "aspd_markup": aspd[0].markup})
        console.print(f"[{k + 1}/{len(qs)}] {q['category']}: AR {ar[1]:.1f} s, ASPD {aspd[1]:.1f} s "
                      f"({rows[-1]['speedup']:.2f}x, {len(aspd[0].blocks)} blocks)")
    del merged

    # quality proxies against the base model's AR answers
    base = Engine(load(adapter="none"))
    base_ar = batch_answers(base, [q["turns"][0] for q in qs], params, "ar")
    cos_aspd = cosine([r["aspd_text"] for r in rows], [o.text for o in base_ar])
    cos_ar = cosine([r["ar_text"] for r in rows], [o.text for o in base_ar])
    enc = base.encode
    for r, q, b, ca, cr in zip(rows, qs, base_ar, cos_aspd, cos_ar):
        prompt = base.chat_prompt(q["turns"][0])
        r.update(base_ar_text=b.text, cos_aspd_vs_base=ca, cos_ar_vs_base=cr,
                 loss_aspd=answer_loss(base.loaded.model, prompt, enc(r["aspd_text"])),
                 loss_base_ar=answer_loss(base.loaded.model, prompt, enc(b.text)))
    sp = [r["speedup"] for r in rows]
    result = {
        "adapter": str(Path(adapter).relative_to(ROOT)) if Path(adapter).is_relative_to(ROOT) else adapter,
        "max_new_tokens": args.max_new_tokens, "repetition_penalty": 1.2, "decoding": "greedy",
        "fork_rate_listlike": round(rate["listlike"], 3), "fork_rate_other": round(rate["other"], 3),
        "wellformed_rate": round(wf, 3), "eval_prompts": len(evals),
        "vicuna_questions": len(rows), "vicuna_stride": args.stride,
        "vicuna_mean_speedup": round(statistics.mean(sp), 3), "vicuna_median_speedup": round(statistics.median(sp), 3),
        "vicuna_max_speedup": round(max(sp), 3),
        "vicuna_mean_speedup_forked": round(statistics.mean([r["speedup"] for r in rows if r["forked"]] or [0]), 3),
        "vicuna_fork_share": round(sum(r["forked"] for r in rows) / len(rows), 3),
        "cosine_aspd_vs_base_ar": round(statistics.mean(cos_aspd), 4),
        "cosine_ar_vs_base_ar": round(statistics.mean(cos_ar), 4),
        "loss_base_on_aspd": round(statistics.mean(r["loss_aspd"] for r in rows), 4),
        "loss_base_on_base_ar": round(statistics.mean(r["loss_base_ar"] for r in rows), 4),
        "environment": environment(), "answers": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if (Path(adapter) / "training.json").exists():
        from training.card import write

        write(Path(adapter), result)  # the model card carries the evaluation
    t = Table(title="ASPD adapter evaluation")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, (int, float)) and k != "max_new_tokens":
            t.add_row(k, str(v))
    console.print(t)


if __name__ == "__main__":
    main()
