"""The base model's own answers to the training prompts, generated in batches by the serving loop
(continuous batching, shared chat-template prefix computed once), list-like prompts steered by a
forced opening (`steering`). Appends to a JSONL as answers finish, so an interrupted run resumes
where it stopped. `response` is the whole answer (opening included), `opening` the forced part.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runtime.engine import Engine
from runtime.sampling import SamplingParams
from runtime.serving import complete

from .prompts import Prompt
from .steering import opening

# Greedy under the default anti-loop rule (plain greedy makes this model loop in half its answers).
PARAMS = SamplingParams(max_new_tokens=320, temperature=0.0)


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def interleaved(prompts: list[Prompt]) -> list[Prompt]:
    """Round-robin over the prompts' sources, so that any prefix of a run (a run stopped early) covers
    every kind of question alike instead of the first templates only."""
    by_source: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_source.setdefault(p.source, []).append(p)
    rounds = itertools.zip_longest(*by_source.values())
    return [p for r in rounds for p in r if p is not None]


def generate(engine: Engine, prompts: list[Prompt], out: Path, params: SamplingParams = PARAMS,
             batch: int = 16) -> int:
    """Answer every prompt not yet in `out`; returns how many were written now."""
    todo = interleaved([p for p in prompts if p.id not in done_ids(out)])
    if not todo:
        return 0
    t0 = time.perf_counter()
    written = 0
    with open(out, "a") as f, Progress(TextColumn("answers"), BarColumn(), MofNCompleteColumn(),
                                       TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=len(todo))
        starts = [opening(p) for p in todo]
        prompts = [engine.chat_prompt(p.text) + engine.encode(o) for p, o in zip(todo, starts)]
        for i, ev in complete(engine, prompts, params, batch=batch):
            p = todo[i]
            row = {"id": p.id, "kind": p.kind, "prompt": p.text, "opening": starts[i]}
            if ev.error:
                row["error"] = ev.error
            else:
                o = ev.result.output
                row.update(response=starts[i] + o.text, finish_reason=o.finish_reason, tokens=o.completion_tokens)
            f.write(json.dumps(row) + "\n")
            f.flush()
            written += 1
            bar.advance(task)
    print(f"{written} answers in {time.perf_counter() - t0:.0f} s")
    return written
