"""Quality of each weight format against the float32 weights, on the Vicuna-80 prompts.

    .venv/bin/python bench/formats.py                   # -> bench/results/formats.json
    .venv/bin/python bench/formats.py --adapter auto    # the same with the shipped adapter merged

Per format (float16, bfloat16, int8, int4) and the float32 reference, all on the fast decoder:
* greedy agreement: each prompt decoded greedily for 128 tokens (no penalty, EOS ignored, all
  prompts batched in one forward per step); the share of prompts whose tokens equal float32's, and
  the mean number of tokens before the first difference;
* loss: the mean per-token loss of the base model's own answers (the `hf` answers of the committed
  Vicuna-80 run, first 256 tokens) given the question, and its delta against float32;
* for int4 on the embedded model without an adapter: the layers are the GGUF's Q4_1 blocks,
  checked here against gguf's own dequantization (max abs difference, fp32 kernel).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, questions  # noqa: E402
from runtime.autotune import CANDIDATES  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.model_loader import load  # noqa: E402
from runtime.model_runner import Forward  # noqa: E402
from runtime.protocol import SERIAL_TAG as SERIAL  # noqa: E402
from runtime.weight_format import WeightFormat  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "formats.json"
ANSWERS = Path(__file__).resolve().parent / "results" / "vicuna80" / "answers.jsonl"
FORMATS = (WeightFormat.FLOAT32, *CANDIDATES)  # float16 where fbgemm runs it
console = Console()


def greedy(eng: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy continuations of every prompt, all sequences in one forward per step."""
    runner = eng.runner
    kvs = [runner.new_kv() for _ in prompts]
    logits = runner.forward_many([Forward(kv, p, range(len(p)), [SERIAL] * len(p), [len(p) - 1])
                                  for kv, p in zip(kvs, prompts)])
    outs: list[list[int]] = [[] for _ in prompts]
    for step in range(n):
        nxt = [int(row[-1].argmax()) for row in logits]
        for o, t in zip(outs, nxt):
            o.append(t)
        if step == n - 1:
            break
        logits = runner.forward_many([Forward(kv, [t], [len(p) + step], [SERIAL], [0])
                                      for kv, p, t in zip(kvs, prompts, nxt)])
    return outs


def answer_loss(eng: Engine, prompt: list[int], answer: list[int]) -> tuple[float, int]:
    """Summed loss of `answer` after `prompt`, and its token count (one teacher-forced forward)."""
    ids = prompt + answer
    kv = eng.runner.new_kv()
    rows = range(len(prompt) - 1, len(ids) - 1)
    logits = eng.runner.forward(kv, ids, range(len(ids)), [SERIAL] * len(ids), rows)
    lp = torch.log_softmax(logits, -1)
    return float(-lp[torch.arange(len(answer)), torch.tensor(answer)].sum()), len(answer)


def gguf_exactness() -> float:
    """Max |int4 layer weight - gguf's dequantized Q4_1 weight| over all layers (fp32 kernel)."""
    import gguf as gg

    from runtime import gguf_weights
    from runtime.model_loader import embedded_gguf
    from runtime.quant import dequantize

    path = embedded_gguf()
    tensors = {t.name: t for t in gg.GGUFReader(str(path)).tensors}
    cfg = load(adapter="none", dtype="bfloat16").model.config
    worst = 0.0
    for i, (qkv, o, gu, down) in enumerate(gguf_weights.int4_layers(path, cfg, torch.float32)):
        ref = {}
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            t = tensors[f"blk.{i}.{name}.weight"]
            w = torch.from_numpy(gg.quants.dequantize(t.data, t.tensor_type)).reshape(int(t.shape[1]), -1)
            if name in ("attn_q", "attn_k"):
                heads = cfg.num_attention_heads if name == "attn_q" else cfg.num_key_value_heads
                w = w[torch.from_numpy(gguf_weights.rope_row_order(w.shape[0], heads))]
            ref[name] = w
        pairs = [(qkv, torch.cat([ref["attn_q"], ref["attn_k"], ref["attn_v"]])), (o, ref["attn_output"]),
                 (gu, torch.cat([ref["ffn_gate"], ref["ffn_up"]])), (down, ref["ffn_down"])]
        worst = max(worst, *(float((dequantize(lin) - w).abs().max()) for lin, w in pairs))
    return worst


def main() -> None:
    ap = common.parser(OUT, repeats=1)
    ap.add_argument("--adapter", default="none")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--formats", default=",".join(f.value for f in FORMATS),
                    help="comma-separated; float32 (the reference) always runs first")
    args = ap.parse_args()
    if args.adapter != "none" and args.out == OUT:
        args.out = OUT.with_name("formats_adapter.json")
    torch.set_num_threads(common.threads())
    qs = questions.load(questions.VICUNA80)[:args.limit]
    hf = {}
    for line in ANSWERS.read_text().splitlines():
        a = json.loads(line)
        if a["system"] == "hf" and not a.get("error"):
            hf[str(a["question_id"])] = a["text"]
    res: dict = {"model": args.model, "adapter": args.adapter, "tokens": args.tokens, "prompts": len(qs),
                 "formats": {}}
    ref_tokens, ref_loss = None, None
    chosen = [WeightFormat.FLOAT32] + [WeightFormat(f) for f in args.formats.split(",") if f != "float32"]
    for fmt in chosen:
        t = time.perf_counter()
        loaded = load(args.model, dtype=fmt.value, adapter=args.adapter)
        loaded.dense_rows = None  # every pass on the format's own weights (batched steps would go dense)
        eng = Engine(loaded)
        prompts = [eng.chat_prompt(q.text) for q in qs]
        toks = greedy(eng, prompts, args.tokens)
        total, count = 0.0, 0
        for q, p in zip(qs, prompts):
            if q.key in hf:
                s, c = answer_loss(eng, p, eng.encode(hf[q.key])[:256])
                total, count = total + s, count + c
        loss = total / count
        if ref_tokens is None:
            ref_tokens, ref_loss = toks, loss
        same = [a == b for a, b in zip(toks, ref_tokens)]
        first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(toks, ref_tokens)]
        res["formats"][fmt.value] = {
            "weight_mb": round(eng.runner.fast.weight_bytes / 1e6, 1),
            "greedy_identical": round(sum(same) / len(same), 3),
            "greedy_first_difference_mean": round(sum(first) / len(first), 1),
            "loss": round(loss, 4), "loss_delta_pct": round(100 * (loss / ref_loss - 1), 3),
            "answer_tokens": count, "seconds": round(time.perf_counter() - t, 1)}
        console.print(fmt.value, res["formats"][fmt.value])
        del eng
    if args.adapter == "none":
        res["int4_vs_gguf_max_abs_diff"] = gguf_exactness()
    res.update(common.environment())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    tab = Table(title=f"weight formats vs float32 ({args.model}, adapter {args.adapter})")
    for c in ("format", "weights MB", "greedy identical", "first difference", "loss", "loss delta"):
        tab.add_column(c)
    for name, r in res["formats"].items():
        tab.add_row(name, str(r["weight_mb"]), f"{r['greedy_identical']:.0%}", str(r["greedy_first_difference_mean"]),
                    f"{r['loss']:.4f}", f"{r['loss_delta_pct']:+.2f}%")
    console.print(tab)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
