"""Drafted header steps on and off (runtime/header_draft.py): the same ASPD answers, fewer forwards.

Each Vicuna question is answered in ASPD mode with the shipped adapter twice in a row, drafts off and
on (the order alternates per question, so drift on a shared machine hits both alike), with the bench's
decoding. Records per question both latencies and forward counts and whether the two answers are the
same text (they must be: a draft is kept only where the model samples it), and the totals.

    .venv/bin/python bench/drafts.py --limit 40
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import metrics  # noqa: E402
from bench.common import engine, environment, parser  # noqa: E402
from bench.questions import VICUNA80, load  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "drafts.json"


def answer(eng, question: str, params) -> dict:
    t0 = time.perf_counter()
    seq = eng.new_sequence(eng.chat_prompt(question))
    try:
        out = eng.generate(seq, params, "aspd")
    finally:
        eng.release(seq)
    return {"latency_s": time.perf_counter() - t0, "forward_passes": out.forward_passes, "markup": out.markup,
            "tokens": out.completion_tokens, "blocks": len(out.blocks)}


def main() -> None:
    ap = parser(OUT, repeats=1)
    ap.add_argument("--adapter", default="auto")
    ap.add_argument("--limit", type=int, default=None, help="the first N questions")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    from runtime.sampling import SamplingParams

    eng = engine(args)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    questions = load(VICUNA80)[:args.limit]
    answer(eng, questions[0].text, SamplingParams(max_new_tokens=8))  # warm-up
    rows = []
    for i, q in enumerate(questions):
        got = {}
        for drafts in ((False, True) if i % 2 == 0 else (True, False)):
            eng.drafts = drafts
            got[drafts] = answer(eng, q.text, params)
        off, on = got[False], got[True]
        rows.append({"question_id": q.question_id, "category": q.category, "blocks": on["blocks"],
                     "tokens": on["tokens"], "same_text": off["markup"] == on["markup"],
                     "latency_off_s": off["latency_s"], "latency_on_s": on["latency_s"],
                     "forwards_off": off["forward_passes"], "forwards_on": on["forward_passes"]})
        r = rows[-1]
        print(f"q{q.question_id} {q.category}: forwards {r['forwards_off']} -> {r['forwards_on']}, "
              f"{r['latency_off_s']:.2f} -> {r['latency_on_s']:.2f} s, same text {r['same_text']}", flush=True)
    forked = [r for r in rows if r["blocks"]]

    def summary(sel: list[dict]) -> dict:
        total = {k: sum(r[k] for r in sel) for k in ("forwards_off", "forwards_on", "latency_off_s", "latency_on_s")}
        return {"answers": len(sel), **total,
                "speedup": metrics.stats(r["latency_off_s"] / r["latency_on_s"] for r in sel)}

    result = {"meta": {"command": "bench/drafts.py " + " ".join(sys.argv[1:]), "model": args.model,
                       "adapter": args.adapter, "dtype": args.dtype, "format": str(eng.runner.weights),
                       "sampling": {"max_new_tokens": args.max_new_tokens, "decoding": "greedy",
                                    "anti_loop": "default"},
                       "environment": environment()},
              "same_text": sum(r["same_text"] for r in rows), "all": summary(rows), "forked": summary(forked),
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("same_text", "all", "forked")}, indent=1))


if __name__ == "__main__":
    main()
