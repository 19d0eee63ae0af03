"""Which anti-loop setting keeps the base model's text whole? Measured on Vicuna-80, AR, greedy.

For each (repetition penalty, no-repeat n-gram size) the base model answers every question (our
engine, batched; the rule is `runtime/anti_loop.py`), and each answer is scored on:
- loops: a sentence written 3+ times or a third of the sentences repeated (`training.extract.loops`);
- 4-gram repetition, degenerate-text rate (run-on words, stray symbols: `bench.metrics`);
- structure: answers with a parallel group (lists, bold or heading sections, paragraph runs, as the
  data pipeline finds them) and the ideal speedup if every group forked (the ceiling of the text);
- the base model's own loss per token on the answer (fluency; loops make it low, damage high).

The committed `hf` answers of `aspd bench` (penalty 1.2 on every token, the old default) were scored
the same way as the "before" row, once: it is kept when the file is re-run (those answers were since
answered again under the new default). `choose()` picks the default (see there).

    python bench/decoding.py            # -> bench/results/decoding.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, metrics  # noqa: E402
from bench.quality import answer_loss  # noqa: E402
from bench.questions import load as load_questions  # noqa: E402
from runtime.offline import complete_all  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from training.extract import find_groups, loops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "decoding.json"
QUESTIONS = ROOT / "bench" / "data" / "vicuna80" / "question.jsonl"
BEFORE = ROOT / "bench" / "results" / "vicuna80" / "answers.jsonl"
GRID = ((1.0, 0), (1.2, 0), (1.0, 4), (1.0, 5), (1.0, 6), (1.05, 5), (1.05, 8), (1.1, 6))
MAX_NEW = 256
LOOP_SLACK = 0.0  # a setting may loop on this share more answers than the best one (none: data must not loop)
DEGENERATE_SLACK = 0.002  # and have this much more degenerate text than plain greedy


def ceiling(text: str, count) -> tuple[bool, float]:
    """(has a parallel group, ideal speedup if every group forked) with `count(text)` = tokens."""
    groups = find_groups(text)
    total = count(text)
    saved = 0
    for g in groups:
        sizes = [count(text[a:b]) for a, b in g.items]
        saved += sum(sizes) - max(sizes)
    return bool(groups), total / max(total - saved, 1)


def structure(texts: list[str], eng) -> dict:
    """The text-only figures (no model): recomputed for stored answers when the extraction changes."""
    count = lambda t: len(eng.encode(t))  # noqa: E731
    ceil = [ceiling(t, count) for t in texts]
    return {
        "loops": statistics.fmean(loops(t) for t in texts),
        "repetition_4gram": statistics.fmean(metrics.repetition_rate(t) for t in texts),
        "degenerate": statistics.fmean(metrics.degenerate_rate(t) for t in texts),
        "with_groups": statistics.fmean(c[0] for c in ceil),
        "ceiling_mean": statistics.fmean(c[1] for c in ceil),
        "ceiling_max": max(c[1] for c in ceil),
        "tokens_mean": statistics.fmean(count(t) for t in texts),
    }


def score(texts: list[str], prompts: list[list[int]], eng) -> dict:
    losses = [answer_loss(eng.loaded.model, p, eng.encode(t)) for p, t in zip(prompts, texts)]
    return {**structure(texts, eng), "loss": statistics.fmean(x for x in losses if x == x)}


def choose(rows: list[dict]) -> dict:
    """The default: among settings that loop at most LOOP_SLACK more than the best and write no
    more degenerate text than plain greedy (+ DEGENERATE_SLACK), the one the base model finds most
    natural (lowest loss): the least intervention that stops the loops."""
    best_loops = min(r["loops"] for r in rows)
    plain = rows[0]  # GRID[0]: plain greedy
    ok = [r for r in rows if r["loops"] <= best_loops + LOOP_SLACK
          and r["degenerate"] <= plain["degenerate"] + DEGENERATE_SLACK]
    return min(ok or rows, key=lambda r: r["loss"])


def main() -> None:
    ap = common.parser(OUT, 1)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    eng = common.engine(args)
    qs = load_questions(QUESTIONS)[:args.limit]
    prompts = [eng.chat_prompt(q.text) for q in qs]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    done = {(r["repetition_penalty"], r["no_repeat_ngram_size"]): r for r in previous.get("settings", [])}
    today = time.strftime("%Y-%m-%d")
    rows = []
    for penalty, n in GRID:
        if (penalty, n) in done and done[(penalty, n)]["questions"] == len(qs):
            row = done[(penalty, n)]
            rows.append(row | structure([row["examples"][str(q.question_id)] for q in qs], eng)
                        | {"rescored": today})
            continue
        p = SamplingParams(max_new_tokens=MAX_NEW, repetition_penalty=penalty, no_repeat_ngram_size=n)
        t0 = time.perf_counter()
        outs = complete_all(eng, prompts, p, "ar", batch=16)
        texts = [o.text for o in outs]
        rows.append({"repetition_penalty": penalty, "no_repeat_ngram_size": n, "questions": len(qs),
                     "seconds": time.perf_counter() - t0, **score(texts, prompts, eng),
                     "examples": {str(q.question_id): t for q, t in zip(qs, texts)}})
        print(f"penalty {penalty} ngram {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()
                                                         if isinstance(v, float)), flush=True)
        _write(args.out, rows, None, eng, previous)
    old = previous.get("before")  # scored once: the committed answers have since been re-run under the default
    if old is None:
        before = [json.loads(x) for x in BEFORE.read_text().splitlines()]
        by_q = {r["question_id"]: r["text"] for r in before if r["system"] == "hf"}
        old = {"repetition_penalty": "1.2 on every token (before)", "no_repeat_ngram_size": 0, "questions": len(qs),
               "date": today, **score([by_q[q.question_id] for q in qs], prompts, eng)}
    _write(args.out, rows, old, eng, previous)


def _write(out: Path, rows: list[dict], before: dict | None, eng, previous: dict) -> None:
    chosen = choose(rows)
    out.write_text(json.dumps({
        # where the answers were generated: a run that only re-scores stored answers keeps the old machine
        "environment": common.environment() if any("rescored" not in r for r in rows) else previous["environment"],
        "weights": eng.loaded.weights, "max_new_tokens": MAX_NEW,
        "questions": "vicuna80", "mode": "ar, greedy, base model", "before": before,
        "chosen": {"repetition_penalty": chosen["repetition_penalty"],
                   "no_repeat_ngram_size": chosen["no_repeat_ngram_size"]},
        "settings": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
