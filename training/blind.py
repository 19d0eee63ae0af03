"""Data v4: every branch body of a parallel training answer re-written by the base model *blind*, as the
branch is decoded: from the text before its block and its own lead ("3. **Sleep**"), none of its
siblings in view. Each block is decoded by the engine as an explicit fork (`Engine.fork_steps`, the
leads as plain-text seeds), many answers' blocks in one forward, under the anti-loop rule that links
sibling branches as in every ASPD block.

Why: the answers of data v3 are the base model's serial text, so a branch body's label was written
after its earlier siblings, which a branch never sees. Its labels are then out of reach, and what the
adapter writes instead costs the base model's reading of the joined answer +24% loss (v13 on the 60
chat questions), where the base model's own blind items cost +8.5% (`bench/steered_control.py`). Blind
bodies are labels a branch can reach, and they agree with the blind branch anchor (`train.Anchor`).

Titles, the serial text and the block structure stay as data v3 holds them; a branch whose lead cannot
be found in its body, or whose blind body comes out empty, keeps its old body. Resumable: `blind.jsonl`
holds one row per finished answer; `dataset.jsonl` is the source build with those answers replaced.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from runtime.engine import Engine
from runtime.outputs import GenerationOutput
from runtime.protocol import Branch, ParallelBlock, Response, parse
from runtime.run_kind import Steps, drive_all
from runtime.sampling import SamplingParams

ITEM_TOKENS = 128  # a blind body at most (it ends at its first empty line or next item before that)
# greedy under the default anti-loop rule, which links sibling branches as in every ASPD block: no branch
# repeats an n-gram its siblings wrote (blind items written one by one retell each other word for word)
PARAMS = SamplingParams(max_new_tokens=ITEM_TOKENS, max_branch_tokens=ITEM_TOKENS, temperature=0.0, stop=("\n\n",))
# " 3. **Sleep**:", " 3. **Sleep** -": the lead with its own separator, which the body goes on after
_BOLD_LEAD = re.compile(r"\s*(?:\d+[.)]\s*|[-*•]\s+)?\*\*[^*\n]+\*\*(?::|\s+[-–—:](?=\s))?")
_NEXT_ITEM = re.compile(r"\n\s*\d+[.)]\s")  # a body running on into another numbered item
LEAD_SLACK = 8  # a prose branch's body restates its title within this many characters of its start


def lead(branch: Branch) -> str | None:
    """The part of a branch's body that restates its item's lead, which its blind body goes on from: a
    bold lead (" 3. **Sleep**:"), else the title's own words at the body's start (" * The film is a")."""
    if m := _BOLD_LEAD.match(branch.body):
        return m.group(0)
    at = branch.body.find(branch.title)
    return branch.body[:at + len(branch.title)] if 0 <= at <= LEAD_SLACK else None


def blind_body(generated: str, marker: str = "") -> str:
    """A blind body as a branch would end it: at its first empty line or next numbered item (or, for a
    bullet item, its next line opening with the same `marker`); empty where it holds "<|"."""
    cuts = [generated.find("\n\n"), *(m.start() for m in _NEXT_ITEM.finditer(generated))]
    if marker:
        cuts.append(generated.find(f"\n{marker} "))
    body = generated[:min([i for i in cuts if i >= 0], default=len(generated))].rstrip()
    return "" if "<|" in body else body  # markup-like text would not parse: the branch keeps its old body


def _marker(head: str) -> str:
    first = head.strip()[:1]
    return first if first in "-*•" and not head.strip().startswith("**") else ""


def before(resp: Response, seg: int) -> str:
    """What a block's branches read before their leads: the answer's plain text up to segment `seg`."""
    return Response(segments=resp.segments[:seg]).plain_text()


def rebuild(resp: Response, bodies: dict[tuple[int, int], str]) -> Response:
    """`resp` with the branches of `bodies` (segment, branch -> blind text after the lead) re-written; each
    keeps its lead and its own trailing line breaks, an empty blind body its old text."""
    segs = []
    for s, seg in enumerate(resp.segments):
        if isinstance(seg, ParallelBlock):
            seg = ParallelBlock(branches=tuple(
                Branch(title=br.title, body=lead(br) + bodies[(s, b)] + br.body[len(br.body.rstrip()):])
                if bodies.get((s, b)) else br for b, br in enumerate(seg.branches)))
        segs.append(seg)
    return Response(segments=tuple(segs))


def written(path: Path) -> list[dict]:
    """The rows of `blind.jsonl`; a last line cut short by a killed run is left out (resume redoes it)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def done_ids(path: Path) -> set[str]:
    return {r["id"] for r in written(path)}


def _fork(engine: Engine, prompt: str, resp: Response, seg: int, linked: bool = True) -> Steps[GenerationOutput] | None:
    """The block `seg` of `resp` decoded anew as an explicit fork with its branches' leads for seeds (None:
    a branch has no lead, the block stays as it is); `linked`: under the ASPD block's anti-loop rule."""
    leads = [lead(br) for br in resp.segments[seg].branches]
    if any(x is None for x in leads):
        return None
    answer = engine.encode(before(resp, seg))
    seq = engine.new_sequence(engine.chat_prompt(prompt) + answer)
    engine.prefill(seq)
    seq.serial.history.extend(answer)  # the answer wrote that text: as in ASPD, no branch repeats its n-grams
    n = len(leads)
    params = PARAMS.model_copy(update={"max_new_tokens": ITEM_TOKENS * n, "max_branches": max(n, 2)})
    return engine.fork_steps(seq, [x.removeprefix(" ") for x in leads], params, linked=linked)


def generate(engine: Engine, rows: list[dict], out: Path, batch: int = 16, log=print, linked: bool = True) -> int:
    """Re-write the branch bodies of the parallel `rows` not yet in `out` (blind.jsonl), `batch` answers'
    blocks decoded together (one forward per step over all their branches); returns how many answers
    were written now. An answer's blocks go in order, a later one reading the earlier ones re-written.
    `linked=False` lets siblings repeat each other's n-grams (a control: no ASPD block decodes so)."""
    done = done_ids(out)
    todo = [r for r in rows if r["parallel"] and r["id"] not in done]
    total, count = sum(r["parallel"] for r in rows), len(done)
    with open(out, "a") as f:
        for k in range(0, len(todo), batch):
            part = [(r, parse(r["markup"])) for r in todo[k:k + batch]]
            now = [resp for _, resp in part]
            # block positions: rebuild re-writes bodies only, so they hold through every round
            segs = [[i for i, g in enumerate(resp.segments) if isinstance(g, ParallelBlock)] for resp in now]
            for round_ in range(max(len(resp.blocks) for resp in now)):
                work = [(n, segs[n][round_]) for n in range(len(part)) if round_ < len(segs[n])]
                runs = [(n, seg, _fork(engine, part[n][0]["prompt"], now[n], seg, linked)) for n, seg in work]
                outs = drive_all(engine.runner.forward_many, [steps for _, _, steps in runs if steps is not None])
                for (n, seg), o in zip([(n, seg) for n, seg, steps in runs if steps is not None], outs):
                    (block,) = o.response.blocks
                    old = now[n].segments[seg].branches
                    marker = [_marker(lead(br)) for br in old]
                    now[n] = rebuild(now[n], {(seg, b): blind_body(br.body, m)
                                              for b, (br, m) in enumerate(zip(block.branches, marker))})
            for (r, resp), new in zip(part, now):
                changed = sum(a.body != b.body for x, y in zip(resp.blocks, new.blocks)
                              for a, b in zip(x.branches, y.branches))
                f.write(json.dumps({"id": r["id"], "markup": new.markup(), "rewritten": changed,
                                    "branches": sum(len(g.branches) for g in resp.blocks)}) + "\n")
            f.flush()
            count += len(part)
            log(f"{count} of {total} parallel answers re-written blind")
    return len(todo)


def assemble(rows: list[dict], blind: Path, out: Path, source_stats: dict | None = None) -> dict:
    """Write `out/dataset.jsonl` (the source `rows`, each re-written answer replaced) and
    `out/data_stats.json` (the source build's stats, which still hold for its rows and titles, with
    this step's counts under "blind"); returns this step's counts."""
    new = {r["id"]: r for r in written(blind)}
    c: Counter = Counter(rows=len(rows), parallel=sum(r["parallel"] for r in rows), blind=len(new))
    with open(out / "dataset.jsonl", "w") as f:
        for r in rows:
            if r["id"] in new:
                b = new[r["id"]]
                c["branches"] += b["branches"]
                c["branches_rewritten"] += b["rewritten"]
                c["chars_before"] += len(parse(r["markup"]).plain_text())
                c["chars_after"] += len(parse(b["markup"]).plain_text())
                r = {**r, "markup": b["markup"]}
            f.write(json.dumps(r) + "\n")
    stats = dict(c)
    (out / "data_stats.json").write_text(json.dumps({**(source_stats or {}), "blind": stats}, indent=2) + "\n")
    return stats
