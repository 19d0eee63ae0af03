"""`aspd bench`: answer a question set with several systems side by side, then score and report.

1. Answers: question by question, every system in turn (the order rotates with the question, so
   drift of the machine falls on all systems alike), each answer appended to `answers.jsonl` as soon
   as it exists. A rerun skips the answers already there (an interrupted run resumes).
2. Scores: per answer, speed against `ar` and `hf` on the same question, and quality proxies against
   the base model's AR answer (the `hf` system's; without `hf`, the engine's base-model AR answers,
   untimed). Written back into `answers.jsonl`.
3. Reports: `summary.json`, `report.md`, plots, rich tables (`bench/run_report.py`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.engine import Engine
from runtime.errors import UserError
from runtime.sampling import SamplingParams

from . import metrics
from .questions import Question
from .systems import Answer, EngineSystem, HFSystem, HTTPSystem, SoTSystem, System

LOCAL = ("hf", "ar", "aspd", "sot")
REFERENCE = "hf"  # quality is measured against the base model's own AR answer
FALLBACK_REFERENCE = "base-ar"  # the same answers from our engine when `hf` is not run


class BenchError(UserError, ValueError):
    """A bench invocation that cannot run (bad system name, unusable results file)."""


def parse_systems(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise BenchError("no systems given")
    for n in names:
        if n not in LOCAL and not (n.startswith("sglang@http://") or n.startswith("sglang@https://")):
            raise BenchError(f"unknown system {n!r}: use {', '.join(LOCAL)} or sglang@http://HOST:PORT")
    if len(set(names)) != len(names):
        raise BenchError(f"a system is named twice in {spec!r}")
    return names


@dataclass
class Models:
    """Engines on the base model (hf, sot, references, the loss proxy) and on the ASPD-tuned one
    (ar, aspd); the same engine twice when there is no adapter."""

    base: Engine
    tuned: Engine


def build(names: list[str], models: Models, params: SamplingParams) -> list[System]:
    out: list[System] = []
    for n in names:
        if n == "hf":
            out.append(HFSystem(models.base, params))
        elif n in ("ar", "aspd"):
            out.append(EngineSystem(n, models.tuned, params, n))
        elif n == "sot":
            out.append(SoTSystem(models.base, params))
        else:
            out.append(HTTPSystem(n.split("@", 1)[1], params))
    if REFERENCE not in names:
        out.append(EngineSystem(FALLBACK_REFERENCE, models.base, params, "ar"))
    return out


# --------------------------------------------------------------------------- the answers file


class Store:
    """`answers.jsonl`: one answer per line, appended as it is made; what a rerun resumes from."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, start=1):
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:
                    if n < len(lines):  # only the last line may be cut short (a run killed mid-write)
                        raise BenchError(f"{path}:{n}: not valid JSON; fix or delete the file") from None
            self.rewrite(self.rows)

    def done(self, question: Question, system: str) -> bool:
        return any(r["system"] == system and str(r["question_id"]) == question.key and not r.get("error")
                   for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows = [r for r in self.rows if not (r["system"] == row["system"]
                                                  and str(r["question_id"]) == str(row["question_id"]))]
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, rows: list[dict]) -> None:
        self.rows = rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.path)


def answer_all(questions: list[Question], systems: list[System], store: Store,
               on_answer: Callable[[Question, System, dict], None] = lambda q, s, r: None) -> None:
    """Every system answers every question, interleaved; finished answers are skipped."""
    warm = Question(question_id="warm-up", turns=["Say hello."])
    warmed: set[str] = set()
    for k, q in enumerate(questions):
        order = systems[k % len(systems):] + systems[:k % len(systems)]
        for s in order:
            if store.done(q, s.name):
                continue
            try:
                if s.name not in warmed:  # a first call pays one-off costs (allocations, thread pools)
                    s.answer(warm)
                    warmed.add(s.name)
                row = s.answer(q).model_dump()
            except Exception as e:  # kept in the file, retried by the next run
                row = Answer(question_id=q.question_id, category=q.category, system=s.name, text="",
                             latency_s=math.nan, ttft_s=None, completion_tokens=0, critical_path_tokens=0,
                             error=f"{type(e).__name__}: {e}").model_dump()
            store.add(row)
            on_answer(q, s, row)


# --------------------------------------------------------------------------- scores


def _by(rows: list[dict], system: str) -> dict[str, dict]:
    return {str(r["question_id"]): r for r in rows if r["system"] == system and not r.get("error")}


def speed(rows: list[dict]) -> None:
    """Per answer: tokens/s, speedups against `ar` and `hf` on the same question, ideal speedup of its
    structure and the share of it reached (its token rate over `ar`'s, over the ideal)."""
    ar, hf = _by(rows, "ar"), _by(rows, "hf")
    for r in rows:
        if r.get("error"):
            continue
        q = str(r["question_id"])
        rate = r["completion_tokens"] / r["latency_s"] if r["latency_s"] > 0 else math.nan
        ideal = metrics.ideal_speedup(r["completion_tokens"], r["critical_path_tokens"])
        s = {"tokens_per_s": rate, "ideal_speedup": ideal}
        for name, base in (("ar", ar.get(q)), ("hf", hf.get(q))):
            if base is not None:
                s[f"speedup_vs_{name}"] = base["latency_s"] / r["latency_s"]
                base_rate = base["completion_tokens"] / base["latency_s"]
                s[f"rate_speedup_vs_{name}"] = rate / base_rate if base_rate else math.nan
        if "rate_speedup_vs_ar" in s:
            s["ideal_fraction"] = s["rate_speedup_vs_ar"] / ideal
        r["speed"] = s


def quality(rows: list[dict], questions: dict[str, Question], eng: Engine, grader=None,
            log: Callable[[str], None] = print) -> None:
    """Per answer, against the reference system's answer to the same question: MiniLM cosine, the
    base model's (`eng`'s) per-token loss on the answer, repetition rate, degenerate-text rate, length
    ratio, cross-branch redundancy (answers with blocks), and the judge's grade."""
    from runtime.protocol import parse

    from .quality import answer_loss, cosine, sibling_similarity

    for r in rows:  # answers scored before the degenerate-text rate existed get it from their text
        if "quality" in r and "degenerate" not in r["quality"]:
            r["quality"]["degenerate"] = metrics.degenerate_rate(r["text"])
    ref_name = REFERENCE if any(r["system"] == REFERENCE for r in rows) else FALLBACK_REFERENCE
    refs = _by(rows, ref_name)
    todo = [r for r in rows if not r.get("error") and str(r["question_id"]) in refs
            and "quality" not in r and str(r["question_id"]) in questions]
    if not todo:
        return
    log(f"scoring {len(todo)} answers against {ref_name}")
    sims = cosine([r["text"] for r in todo], [refs[str(r["question_id"])]["text"] for r in todo])
    for r, sim in zip(todo, sims):
        q = questions[str(r["question_id"])]
        ref = refs[q.key]
        qual = {"reference": ref_name, "cosine": sim, "repetition": metrics.repetition_rate(r["text"]),
                "degenerate": metrics.degenerate_rate(r["text"]),
                "length_ratio": metrics.length_ratio(r["completion_tokens"], ref["completion_tokens"]),
                "loss": answer_loss(eng.loaded.model, eng.chat_prompt(q.text), eng.encode(r["text"]))}
        if r.get("markup") and r.get("blocks"):
            blocks = [[b.body for b in blk.branches] for blk in parse(r["markup"]).blocks]
            qual["redundancy"] = sibling_similarity(blocks)
        if grader is not None:
            qual["judge"] = grader.grade(q.key, q.category, q.text, r["text"])
        r["quality"] = qual


# --------------------------------------------------------------------------- the whole run


def run(questions: list[Question], names: list[str], models: Models, params: SamplingParams, out: Path,
        meta: dict, console, judge_url: str | None = None, judge_model: str = "default") -> dict:
    """Answer (resuming), score, summarise and report; returns the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import run_report
    from .common import environment

    store = Store(out / "answers.jsonl")
    systems = build(names, models, params)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=console) as bar:
        tasks = {s.name: bar.add_task(s.name, total=len(questions), last="",
                                      completed=sum(store.done(q, s.name) for q in questions)) for s in systems}

        def on_answer(q: Question, s: System, row: dict) -> None:
            last = row["error"] or (f"q{q.question_id} {q.category}: {row['latency_s']:.1f} s, "
                                    f"{row['completion_tokens']} tok, {row['blocks']} blocks")
            bar.update(tasks[s.name], advance=1, last=last)

        answer_all(questions, systems, store, on_answer)
    keys = {q.key for q in questions}
    rows = [r for r in store.rows if str(r["question_id"]) in keys]
    speed(rows)
    grader = None
    if judge_url:
        from .answer_grader import Grader

        grader = Grader(judge_url, judge_model)
    quality(rows, {q.key: q for q in questions}, models.base, grader, log=console.print)
    store.rewrite(store.rows)  # the scores go into answers.jsonl too
    errors = [r for r in rows if r.get("error")]
    meta = {**meta, "reference": REFERENCE if REFERENCE in names else FALLBACK_REFERENCE,
            "judge_url": judge_url, "question_count": len(questions), "environment": environment()}
    summary = run_report.summarize(rows, names, meta)
    files = run_report.write(rows, summary, out)
    run_report.print_tables(summary, console)
    if errors:
        console.print(f"[red]{len(errors)} answers failed[/] (kept in answers.jsonl; a rerun retries them): "
                      f"{errors[0]['error']}")
    console.print("wrote " + ", ".join(str(f) for f in files) + f", {store.path}")
    return summary
