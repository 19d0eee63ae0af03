"""From the base model's answers to the training set: filter, extract, validate, and count.

Steps, each counted: answers -> no generation error -> not looping -> non-empty after trimming a
capped answer to its last complete line -> candidate groups (extraction, list-like prompts only: an
arithmetic or code answer stays serial even where it holds a list) -> lossless round trip and
format identity (code) -> independence (the model's own losses) -> optional LLM judge. An answer
keeps the groups that pass; one without any becomes a serial sample.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from rich.table import Table

from runtime import protocol as P
from runtime.anti_loop import breaks_title_rule, word_mask
from runtime.roles import chat_ids  # the prompt as the model sees it (also imported from here)

from .extract import find_groups, loops, rewrite, thin, tidy, trim_to_line
from .independence import THRESHOLD, independent, sibling_gains
from .samples import build
from .steering import answer


def make(loaded, responses: Path, out: Path, threshold: float | None = THRESHOLD, judge=None,
         log=print) -> dict:
    """Write `out/dataset.jsonl` (one record per kept answer) and `out/data_stats.json`. `threshold`
    None skips the independence check (two forwards per answer; it kept 97% of the v1 groups)."""
    tok, ids = loaded.tokenizer, loaded.ids

    def enc(t: str) -> list[int]:
        return tok.encode(t, add_special_tokens=False)

    words = word_mask(tok, len(tok), exclude=ids.markup)

    def repeats(g) -> str | None:  # titles the decoder's title rule would not let the model write
        return "titles_repeat" if breaks_title_rule([enc(t) for t in g.titles], words, ids.end_title) else None

    c: Counter = Counter()
    gains_all, records, branch_tokens, all_tokens, branches = [], [], 0, 0, []
    rows = [json.loads(x) for x in responses.read_text().splitlines() if x.strip()]
    for n, row in enumerate(rows):
        c["answers"] += 1
        if "error" in row:
            continue
        c["generated"] += 1
        text, complete = tidy(answer(row["response"], row.get("opening", ""))), row["finish_reason"] == "stop"
        if not complete:
            text = trim_to_line(text)
        if not text.strip():
            continue
        c["non_empty"] += 1
        if loops(text):
            continue
        c["not_looping"] += 1
        groups = find_groups(text) if row["kind"] == "listlike" else []  # the others teach when not to fork
        reasons = [r for g in groups if (r := thin(text, g) or repeats(g))]
        if reasons:
            c[f"dropped_{reasons[0]}"] += 1
            continue
        c["candidate_groups"] += len(groups)
        c["answers_with_candidates"] += bool(groups)
        kept = []
        if groups:
            resp = rewrite(text, groups)
            if resp.plain_text() == text and P.parse(resp.markup()) == resp:  # lossless, well-formed
                c["roundtrip_groups"] += len(groups)
                if threshold is None:
                    kept = list(groups)
                else:
                    sample = build(chat_ids(tok, row["prompt"]), resp, enc, ids, None)
                    for g, gains in zip(groups, sibling_gains(loaded.model, sample)):
                        gains_all.append(sum(gains) / max(len(gains), 1))
                        if independent(gains, threshold):
                            kept.append(g)
        c["independent_groups"] += len(kept)
        if kept and judge is not None:
            kept = [g for g in kept if judge(row["prompt"], text, g)]
            c["judged_groups"] += len(kept)
        resp = rewrite(text, kept)
        c["parallel_answers"] += bool(kept)
        toks = len(enc(text))
        all_tokens += toks
        for blk in resp.blocks:
            branch_tokens += sum(len(enc(b.text)) for b in blk.branches)
            branches.append(len(blk.branches))
        records.append({"id": row["id"], "kind": row["kind"], "prompt": row["prompt"], "markup": resp.markup(),
                        "complete": complete, "parallel": bool(kept)})
        if (n + 1) % 100 == 0:
            log(f"{n + 1}/{len(rows)} answers: {c['parallel_answers']} parallel")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "dataset.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    stats = {
        "steps": dict(c), "kept_answers": len(records), "threshold_nats_per_token": threshold,
        "ppd": round(c["parallel_answers"] / max(len(records), 1), 3),
        "parallel_degree": round(branch_tokens / max(all_tokens, 1), 3),
        "mean_branches_per_group": round(sum(branches) / max(len(branches), 1), 2),
        "sibling_gain_mean": round(sum(gains_all) / len(gains_all), 3) if gains_all else None,
        "kinds": dict(Counter((r["kind"], r["parallel"]) for r in records).most_common()),
    }
    stats["kinds"] = {f"{k}/{'parallel' if p else 'serial'}": v for (k, p), v in stats["kinds"].items()}
    (out / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def stats_table(stats: dict) -> Table:
    t = Table(title="ASPD data: acceptance per step")
    t.add_column("step")
    t.add_column("count", justify="right")
    for k, v in stats["steps"].items():
        t.add_row(k.replace("_", " "), str(v))
    for k in ("kept_answers", "ppd", "parallel_degree", "mean_branches_per_group", "sibling_gain_mean"):
        t.add_row(k.replace("_", " "), str(stats[k]))
    return t


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def family(row_id: str) -> str:
    """A prompt's family: its id without the running number ("roleplay-12" -> "roleplay")."""
    return row_id.rsplit("-", 1)[0]


def balanced(rows: list[dict], n: int) -> list[dict]:
    """Up to `n` rows taken round-robin over prompt families, each family in its given order, so a
    small family (role-play, estimates) weighs as much as a big one until it runs out."""
    queues: dict[str, list[dict]] = {}
    for r in rows:
        queues.setdefault(family(r["id"]), []).append(r)
    out: list[dict] = []
    for k in range(max(map(len, queues.values()), default=0)):
        out += [q[k] for q in queues.values() if k < len(q)]
    return out[:n]


def draw(rows: list[dict], seed: int, n: int | None = None, balance: bool = False,
         serial_ratio: float = 1.0) -> list[dict]:
    """The training draw: every parallel row, then `serial_ratio` serial rows per parallel one, shuffled
    by `seed`; the first `n` (round-robin over families with `balance`; after a shuffle a random draw
    either way)."""
    rng = random.Random(seed)
    par = [r for r in rows if r["parallel"]]
    ser = [r for r in rows if not r["parallel"]]
    rng.shuffle(ser)
    take = balanced if balance else (lambda rs, k: rs[:k])
    chosen = par + take(ser, int(len(par) * serial_ratio))
    rng.shuffle(chosen)
    return take(chosen, n or len(chosen))
