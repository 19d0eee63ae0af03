"""The base model's own answers to the training prompts, generated in batches by the serving loop
(continuous batching, shared chat-template prefix computed once). Appends to a JSONL as answers
finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runtime.engine import Engine
from runtime.sampling import SamplingParams
from runtime.serving import complete

from .prompts import Prompt

# Greedy with a repetition penalty: plain greedy makes this model loop in over half its answers.
PARAMS = SamplingParams(max_new_tokens=320, temperature=0.0, repetition_penalty=1.2)


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def generate(engine: Engine, prompts: list[Prompt], out: Path, params: SamplingParams = PARAMS,
             batch: int = 16) -> int:
    """Answer every prompt not yet in `out`; returns how many were written now."""
    todo = [p for p in prompts if p.id not in done_ids(out)]
    if not todo:
        return 0
    t0 = time.perf_counter()
    written = 0
    with open(out, "a") as f, Progress(TextColumn("answers"), BarColumn(), MofNCompleteColumn(),
                                       TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=len(todo))
        for i, ev in complete(engine, [engine.chat_prompt(p.text) for p in todo], params, batch=batch):
            p = todo[i]
            row = {"id": p.id, "kind": p.kind, "prompt": p.text}
            if ev.error:
                row["error"] = ev.error
            else:
                o = ev.result.output
                row.update(response=o.text, finish_reason=o.finish_reason, tokens=o.completion_tokens)
            f.write(json.dumps(row) + "\n")
            f.flush()
            written += 1
            bar.advance(task)
    print(f"{written} answers in {time.perf_counter() - t0:.0f} s")
    return written
