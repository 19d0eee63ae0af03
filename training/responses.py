"""The base model's own answers to the training prompts, generated in batches by the serving loop
(continuous batching, shared chat-template prefix computed once), list-like prompts steered by a
forced opening (`steering`). Appends to a JSONL as answers finish, so an interrupted run resumes
where it stopped. `response` is the whole answer (opening included), `opening` the forced part.

With `own_intro` a list-like prompt's opening is the base model's own first line (decoded first,
greedy, up to its line break: `intro` in the row), then the list start (`steering.own_opening`);
only the list start is forced, so the training answer keeps the intro.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runtime.engine import Engine
from runtime.offline import complete, complete_all
from runtime.outputs import FinishReason
from runtime.sampling import SamplingParams

from .prompts import Prompt
from .steering import list_start, opening, own_intro, steered

# Greedy under the default anti-loop rule (plain greedy makes this model loop in half its answers).
PARAMS = SamplingParams(max_new_tokens=320, temperature=0.0)
INTRO = SamplingParams(max_new_tokens=80, temperature=0.0, stop=("\n",))  # the own first line, same rule


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


def own_starts(engine: Engine, prompts: list[Prompt], batch: int) -> list[tuple[str, str]]:
    """(intro, forced start) of each answer: for a steered prompt the base model's own first line
    (`steering.own_intro`) and the list start after it; ('', '') for the others, which stay unsteered."""
    listy = [p for p in prompts if steered(p)]
    lines = complete_all(engine, [engine.chat_prompt(p.text) for p in listy], INTRO, batch=batch)
    own = {p.id: own_intro(o.text, capped=o.finish_reason == FinishReason.LENGTH) for p, o in zip(listy, lines)}
    return [(own[p.id], list_start(own[p.id])) if p.id in own else ("", "") for p in prompts]


def generate(engine: Engine, prompts: list[Prompt], out: Path, params: SamplingParams = PARAMS,
             batch: int = 16, own_intro: bool = False, chunk: int = 256) -> int:
    """Answer every prompt not yet in `out` (`chunk` at a time: an own-intro run decodes a chunk's
    first lines, then its answers); returns how many were written now."""
    todo = interleaved([p for p in prompts if p.id not in done_ids(out)])
    t0 = time.perf_counter()
    written = 0
    with open(out, "a") as f, Progress(TextColumn("answers"), BarColumn(), MofNCompleteColumn(),
                                       TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=len(todo))
        for k in range(0, len(todo), chunk):
            written += _answer(engine, todo[k:k + chunk], f, params, batch, own_intro, lambda: bar.advance(task))
    print(f"{written} answers in {time.perf_counter() - t0:.0f} s")
    return written


def _answer(engine: Engine, todo: list[Prompt], f, params: SamplingParams, batch: int, own_intro: bool,
            advance) -> int:
    # the own line is not forced: `opening` holds only what follows it
    starts = own_starts(engine, todo, batch) if own_intro else [("", opening(p)) for p in todo]
    prompts = [engine.chat_prompt(p.text) + engine.encode(i + o) for p, (i, o) in zip(todo, starts)]
    for i, ev in complete(engine, prompts, params, batch=batch):
        p, (intro, forced) = todo[i], starts[i]
        row = {"id": p.id, "kind": p.kind, "prompt": p.text, "opening": forced}
        if own_intro:
            row["intro"] = intro
        if ev.error:
            row["error"] = ev.error
        else:
            o = ev.result.output
            row.update(response=intro + forced + o.text, finish_reason=o.finish_reason, tokens=o.completion_tokens)
        f.write(json.dumps(row) + "\n")
        f.flush()
        advance()
    return len(todo)
