"""Evaluate the shipped ASPD adapter: does the model fork where it should, and how fast and how good
are its answers?

1. Held-out split (`data/aspd/prompts_eval.jsonl`, never trained on, never used for calibration):
   the merged model answers every prompt in ASPD mode (its calibrated fork bias applies); fork
   rate on list-like prompts and on the others; every output's markup must parse back to the same
   structure.
2. Vicuna-80: the figures of the full `aspd bench` run (`bench/results/vicuna80/summary.json`),
   where the merged model with parallel markup disallowed (`ar`) and in ASPD mode (`aspd`) answered
   every question one at a time, interleaved, with the same greedy settings; quality proxies against
   the base model's own AR answers (`hf`).

    .venv/bin/aspd bench                      # Vicuna-80 -> bench/results/vicuna80/
    .venv/bin/python bench/adapter.py         # held-out split + the bench's figures -> bench/results/adapter.json

The held-out answers go to `adapter_answers.jsonl` beside the result (markup, text, the words the
degenerate-text detector flags), so that its rates can be read, not only counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import environment, shown  # noqa: E402
from bench.metrics import degenerate_rate, degenerate_words, ideal_speedup  # noqa: E402
from runtime import protocol as P  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.model_loader import find_adapter, load  # noqa: E402
from runtime.offline import complete_all  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

VICUNA = ROOT / "bench" / "results" / "vicuna80"


def wellformed(o) -> bool:
    try:
        return P.parse(o.markup) == o.response
    except P.ProtocolError:
        return False


def vicuna_figures(summary: dict, source: str = "bench/results/vicuna80/summary.json") -> dict:
    """The adapter's Vicuna-80 figures, read off the `aspd bench` summary."""
    sy = summary["systems"]
    aspd, ar, hf = sy["aspd"], sy["ar"], sy.get("hf", {})
    return {
        "vicuna_questions": aspd["answers"],
        "vicuna_mean_speedup": aspd["speedup_vs_ar"]["mean"], "vicuna_median_speedup": aspd["speedup_vs_ar"]["median"],
        "vicuna_max_speedup": aspd["speedup_vs_ar"]["max"], "vicuna_fork_share": aspd["fork_share"],
        "vicuna_mean_ideal_speedup": aspd["ideal_speedup"]["mean"],
        "vicuna_branches_per_block": aspd.get("branches_per_block"),
        "vicuna_fork_share_by_category": {c: v["aspd"].get("fork_share") for c, v in summary["categories"].items()
                                          if "aspd" in v},
        "quality_reference": summary["meta"]["reference"],
        "cosine_aspd_vs_base_ar": aspd["quality"]["cosine"], "cosine_ar_vs_base_ar": ar["quality"]["cosine"],
        "loss_base_on_aspd": aspd["quality"]["loss"], "loss_base_on_ar": ar["quality"]["loss"],
        "loss_base_on_base_ar": hf.get("quality", {}).get("loss"),
        "vicuna_source": f"{source} ({summary['meta']['command']})",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default=None, help="default: the shipped adapter")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adapter.json")
    ap.add_argument("--summary", type=Path, default=VICUNA / "summary.json",
                    help="the adapter's `aspd bench` summary; without one, the held-out split only")
    args = ap.parse_args()
    console = Console()
    torch.set_num_threads(2)
    adapter = args.adapter or find_adapter()
    if adapter is None:
        raise SystemExit("no adapter: train one with `aspd train` or pass --adapter")
    summary_path = args.summary
    if not summary_path.exists():
        console.print(f"no {summary_path}: the held-out split only (run `aspd bench` for Vicuna-80)")
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    loaded = load(adapter=adapter)
    merged = Engine(loaded)

    evals = [json.loads(x) for x in (ROOT / "data" / "aspd" / "prompts_eval.jsonl").read_text().splitlines()]
    gate = loaded.gate
    console.print(f"held-out split: {len(evals)} prompts, ASPD mode, fork bias {loaded.fork_bias:+.2f}"
                  + (f", gate offsets {gate.low:+.2f} .. {gate.high:+.2f}" if gate else ""))
    outs = complete_all(merged, [merged.chat_prompt(e["text"]) for e in evals], params, "aspd", batch=32)
    rate = {}
    for kind in ("listlike", "other"):
        sel = [o for e, o in zip(evals, outs) if e["kind"] == kind]
        rate[kind] = sum(bool(o.blocks) for o in sel) / len(sel)
    blocks = [len(b.branches) for o in outs for b in o.response.blocks]
    wf = sum(wellformed(o) for o in outs) / len(outs)
    result = {
        "adapter": shown(Path(adapter)),
        "fork_bias": loaded.fork_bias, "gate": gate.offsets() if gate else None,
        "max_new_tokens": args.max_new_tokens, **params.anti_loop,
        "decoding": "greedy", "fork_rate_listlike": round(rate["listlike"], 3),
        "fork_rate_other": round(rate["other"], 3), "wellformed_rate": round(wf, 3), "eval_prompts": len(evals),
        "branches_per_block": round(sum(blocks) / len(blocks), 2) if blocks else None,
        "degenerate_rate": round(sum(degenerate_rate(o.text) for o in outs) / len(outs), 4),
        "ideal_speedup": round(sum(ideal_speedup(o.completion_tokens, o.critical_path_tokens) for o in outs)
                               / len(outs), 3),
        **(vicuna_figures(json.loads(summary_path.read_text()), shown(summary_path)) if summary_path.exists() else {}),
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with open(args.out.with_name(args.out.stem + "_answers.jsonl"), "w") as f:
        for e, o in zip(evals, outs):
            f.write(json.dumps({"id": e["id"], "kind": e["kind"], "prompt": e["text"], "blocks": len(o.blocks),
                                "markup": o.markup, "text": o.text, "degenerate_words": degenerate_words(o.text)})
                    + "\n")
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
