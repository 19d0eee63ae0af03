"""What an ASPD answer's structure costs at fixed titles: the forked answers of an `aspd bench` run with
every branch body re-written *blind* (the text before its block and its own lead in view, none of its
siblings: `training/blind.py`), by the base model and by the adapter, scored as `aspd bench` scores.

The base model's loss on the adapter's ASPD answers is well above its loss on its own answers. This
control splits that excess between the adapter's *bodies* and the *structure* they fill (the title list
the adapter chose, and branches that cannot see each other): if the base model itself, writing every
body blind under the same titles, scores as high as the adapter, training the bodies cannot close the
gap; only the structure can. Arms, all on the same questions:

- `hf`: the base model's own answers (the run's rows), rescored here;
- `aspd`: the adapter's answers as the run holds them, rescored here;
- `base_blind`: the aspd answers with each body re-written by the base model under the engine's rule
  for a block (siblings linked: no branch repeats an n-gram a sibling wrote, as in every ASPD block);
- `base_blind_unlinked`: the same without that link (siblings may repeat each other word for word:
  what `bench/steered_control.py`'s blind items do, whose repetition the bench's 4-gram figure shows);
- `adapter_blind`: the bodies re-written by the adapter in plain view (an explicit fork: no title list,
  no markup before the lead), linked.

And the same for the base model's own titles: the own-intro answers of `bench/steered_control.py` (its
first line, then a bold numbered list it wrote serially), as they are (`own_lists`) and with each list
item's body re-written blind, linked (`own_lists_blind`), against `hf` on those questions (`own_hf`).

And the whole run, every question the run answered in both modes, against `hf` on all of them (`run_hf`):
the adapter's ASPD answers (`run_aspd`: the bench's loss figure, under this scorer), and the base model's own
lists where it wrote one with its own answers elsewhere, serial (`run_own_lists`) and with the list bodies
written blind (`run_own_lists_blind`): what the base model's own structure would score for the run if it
were decoded as ASPD, forking where it writes a list and nowhere else.

Texts hold at most 256 tokens (the bench's budget), the original answer's serial text after the block
included. One scorer (the base model, `--dtype`) for every arm.

    .venv/bin/python bench/blind_control.py --answers bench/results/vicuna80/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import metrics  # noqa: E402
from bench.common import environment, shown  # noqa: E402
from bench.questions import VICUNA80, load  # noqa: E402
from bench.steered_control import figures, list_items, report, score  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "blind_control.json"
MAX_TOKENS = 256  # the bench's answer budget
ARMS = ("hf", "aspd", "base_blind", "base_blind_unlinked", "adapter_blind")
OWN_ARMS = ("own_hf", "own_lists", "own_lists_blind")
RUN_ARMS = ("run_hf", "run_aspd", "run_own_lists", "run_own_lists_blind")


def as_blocks(text: str):
    """A serial answer with bold numbered lists as a `Response` whose every list is a block, each item a
    branch titled "N. Title" that restates its header ("N. **Title**: ..."): what ASPD would have written."""
    from runtime.protocol import Branch, ParallelBlock, Response, SerialSegment

    segs, pos, groups = [], 0, {}
    for g, a, b, head, _ in list_items(text):
        groups.setdefault(g, []).append((a, b, head))
    for items in groups.values():
        segs.append(SerialSegment(text=text[pos:items[0][0]]))
        segs.append(ParallelBlock(branches=tuple(
            Branch(title=head.strip().replace("**", "").rstrip(":").strip(), body=" " + text[a:b])
            for a, b, head in items)))
        pos = items[-1][1]
    segs.append(SerialSegment(text=text[pos:]))
    return Response(segments=tuple(x for x in segs if not (isinstance(x, SerialSegment) and not x.text)))


def merged(run: list[dict], some: list[dict]) -> list[dict]:
    """The run's scored rows with each question that `some` answered taken from `some` (a list where the
    base model wrote one, its own answer elsewhere)."""
    by = {r["question_id"]: r for r in some}
    return [by.get(r["question_id"], r) for r in run]


def _figures(rows: list[dict]) -> dict:
    return {**figures(rows), "loss_token_weighted": sum(r["loss"] * r["tokens"] for r in rows)
            / sum(r["tokens"] for r in rows)}


def main() -> None:
    from runtime.weight_format import DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=Path, default=OUT.parent / "vicuna80" / "answers.jsonl",
                    help="an `aspd bench` answers file holding hf and aspd rows")
    ap.add_argument("--adapter", default="auto", help="the adapter that answered the aspd rows (auto: the shipped one)")
    ap.add_argument("--own", type=Path, default=OUT.parent / "steered_control.json",
                    help="bench/steered_control.py's result, whose own-intro answers give the base model's own titles")
    ap.add_argument("--dtype", default="float32", choices=DTYPES,
                    help="the weight format of both engines and of the scorer")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for flag, path, what in (("answers", args.answers, "an `aspd bench` answers file"),
                             ("own", args.own, "bench/steered_control.py's result")):
        if not path.is_file():
            raise SystemExit(f"no {path}: --{flag} names {what}")

    from runtime.engine import Engine
    from runtime.model_loader import DEFAULT_MODEL, use_all_cores
    from runtime.model_loader import load as load_model
    from runtime.protocol import parse
    from training import blind

    questions = {q.key: q for q in load(VICUNA80)}
    rows = [json.loads(x) for x in args.answers.read_text().splitlines() if x.strip()]
    by = {(str(r["question_id"]), r["system"]): r for r in rows if not r.get("error")}
    forked = [r for (key, s), r in by.items() if s == "aspd" and r.get("blocks") and (key, "hf") in by]
    jobs = [{"id": str(r["question_id"]), "parallel": True, "markup": r["markup"],
             "prompt": questions[str(r["question_id"])].text} for r in forked]
    if not jobs:
        raise SystemExit(f"{args.answers}: no aspd answer that forks, with an hf answer to the same question")
    use_all_cores()
    base = Engine(load_model(DEFAULT_MODEL, dtype=args.dtype, adapter="none"))  # writer and scorer

    def rewritten(eng: Engine, linked: bool, todo: list[dict] = jobs) -> dict[str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blind.jsonl"
            blind.generate(eng, todo, path, batch=args.batch, linked=linked)
            return {w["id"]: parse(w["markup"]).answer_text() for w in blind.written(path)}

    texts = {"base_blind": rewritten(base, True), "base_blind_unlinked": rewritten(base, False)}
    own = {str(a["question_id"]): a["text"] for a in json.loads(args.own.read_text())["own_intro_answers"]}
    own_jobs = [{"id": k, "parallel": True, "markup": r.markup(), "prompt": questions[k].text}
                for k, t in own.items() if (k, "hf") in by and (r := as_blocks(t)).blocks]
    texts |= {"own_lists": {j["id"]: own[j["id"]] for j in own_jobs},
              "own_lists_blind": rewritten(base, True, own_jobs)}
    texts["adapter_blind"] = rewritten(Engine(load_model(DEFAULT_MODEL, dtype=args.dtype, adapter=args.adapter)), True)

    def scored_text(key: str, text: str) -> dict:
        return score(base, questions[key], base.encode(text)[:MAX_TOKENS])

    # The run's own answers, each scored once: the forked and own-list questions' hf and aspd arms are subsets.
    everyone = [k for k in questions if (k, "hf") in by and (k, "aspd") in by]
    run = {s: {k: scored_text(k, by[(k, s)]["text"]) for k in questions if (k, s) in by} for s in ("hf", "aspd")}
    scored = {"hf": [run["hf"][j["id"]] for j in jobs], "aspd": [run["aspd"][j["id"]] for j in jobs],
              "own_hf": [run["hf"][j["id"]] for j in own_jobs],
              "run_hf": [run["hf"][k] for k in everyone], "run_aspd": [run["aspd"][k] for k in everyone]}
    scored |= {arm: [scored_text(j["id"], texts[arm][j["id"]]) for j in todo]
               for arms, todo in ((ARMS[2:], jobs), (OWN_ARMS[1:], own_jobs)) for arm in arms}
    for arm in OWN_ARMS[1:]:
        scored["run_" + arm] = merged(scored["run_hf"], scored[arm])
    figs = {arm: _figures(scored[arm]) for arm in (*ARMS, *OWN_ARMS, *RUN_ARMS)}
    for arms, ref in ((ARMS, "hf"), (OWN_ARMS, "own_hf"), (RUN_ARMS, "run_hf")):
        for arm in arms:
            figs[arm]["loss_vs_hf"] = metrics.relative_delta(figs[arm]["loss"], figs[ref]["loss"])
    result = {"meta": {"command": "bench/blind_control.py " + " ".join(sys.argv[1:]), "answers": shown(args.answers),
                       "adapter": args.adapter, "weights": base.loaded.weights, "questions": len(jobs),
                       "own": shown(args.own), "own_questions": len(own_jobs), "run_questions": len(everyone),
                       "sampling": {"max_new_tokens": MAX_TOKENS, "body_tokens": blind.ITEM_TOKENS,
                                    "decoding": "greedy", "anti_loop": "default"},
                       "environment": environment()},
              "systems": figs, "answers": {arm: scored[arm] for arm in (*ARMS[2:], "own_lists_blind")}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(figs, "loss_vs_hf", args.out)


if __name__ == "__main__":
    main()
