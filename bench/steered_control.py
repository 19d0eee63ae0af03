"""What steering costs in quality: the base model's own answers to Vicuna-80 with the training data's
forced opening (`training/steering.py`), scored the way `aspd bench` scores every system, next to its
unsteered answers (the bench's `hf` rows) on the same questions.

The adapter learns from steered answers (plain prompt -> opening + the base model's continuation), so
the base-model loss of those answers is about the floor of what imitating them can reach: the part of
the adapter's loss gap that the list style itself costs, as opposed to what training damaged.
Steered are the categories where the issue expects forks; the others stay unsteered, as in the data.
Three steered variants: the data's openings with their stock intro ("Here are the key points:"), the
same answers as the data holds them (intro dropped: they open with "1. **"), and the base model's own
first line (from its unsteered answer) followed by "1. **" (`steering.own_opening`, a candidate for
the next data). Every answer holds at most 256 tokens, its forced start included.

A fourth, the *blind-items* control, measures what parallel decoding itself costs this metric: each
item of an own-intro answer's numbered list re-written by the base model from its own header ("3.
**Title**:") with the text before the list in view but none of its siblings, as a branch is; joined
in order with the answer's own separators and tail. Its loss over the serial own-intro answers' (those
with such a list: `base_own_intro_listed`) is what a reader pays for items that cannot see each other,
in the base model's own words. (A branch also sees its siblings' titles; written out as a skeleton
before the header, they made the base model leave the bodies empty, so this control goes without.)

    .venv/bin/python bench/steered_control.py --answers bench/results/vicuna80/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import metrics  # noqa: E402
from bench.common import environment, shown  # noqa: E402
from bench.quality import answer_loss  # noqa: E402
from bench.questions import VICUNA80, load  # noqa: E402
from training.blind import ITEM_TOKENS, blind_body  # noqa: E402

STEERED = ("generic", "knowledge", "roleplay", "common-sense", "counterfactual", "writing")
OUT = Path(__file__).resolve().parent / "results" / "steered_control.json"
MAX_TOKENS = 256  # the bench's answer budget; a forced start counts in it
_HEADER = re.compile(r"[ \t]*\d+[.)][ \t]*\*\*[^*\n]+\*\*:?")  # "3. **Title**:", the list's bold title


def list_items(text: str) -> list[tuple[int, int, int, str, str]]:
    """(its group's start, start, end, header, separator) of each item of the answer's numbered lists whose
    every item opens with a bold title (`extract.find_groups`' groups: a long list is several), in order."""
    from training.extract import find_groups

    out = []
    for g in find_groups(text):
        heads = [_HEADER.match(text, a) for a, _ in g.items]
        if g.kind == "numbered" and all(h and h.end() <= b for h, (_, b) in zip(heads, g.items)):
            out += [(g.start, a, b, h.group(0), text[a:b][len(text[a:b].rstrip()):])
                    for h, (a, b) in zip(heads, g.items)]
    return out


def figures(rows: list[dict]) -> dict:
    """A control arm's means over its answers (`score` rows)."""
    return {"answers": len(rows), "loss": metrics.stats(r["loss"] for r in rows)["mean"],
            "repetition_4gram": metrics.stats(r["repetition"] for r in rows)["mean"],
            "degenerate": metrics.stats(r["degenerate"] for r in rows)["mean"],
            "tokens": metrics.stats(r["tokens"] for r in rows)["mean"]}


def score(eng, q, ids: list[int]) -> dict:
    """One answer (token ids after the chat prompt of question `q`) as the base engine `eng` scores it."""
    text = eng.decode(ids)
    return {"question_id": q.key, "category": q.category, "text": text,
            "loss": answer_loss(eng.loaded.model, eng.chat_prompt(q.text), ids),
            "repetition": metrics.repetition_rate(text), "degenerate": metrics.degenerate_rate(text),
            "tokens": len(ids)}


def report(figs: dict, vs: str, out: Path) -> None:
    """Print each arm's figures (`vs`: the key of its loss against the reference) and where they went."""
    for name, f in figs.items():
        print(f"{name:22s} loss {f['loss']:.3f} ({f[vs]:+.1%})  rep4 {f['repetition_4gram']:.3f}  "
              f"degenerate {f['degenerate']:.4f}  tokens {f['tokens']:.0f}")
    print(f"wrote {out}")


def main() -> None:
    from runtime.weight_format import DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=Path, default=OUT.parent / "vicuna80" / "answers.jsonl",
                    help="an `aspd bench` answers file holding scored hf, ar and aspd rows")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="only the first N steered questions (a smoke run)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="the base engine's weight format: the bench run's, for answers "
                    "comparable with its hf rows (auto: this machine's cached `autotune` choice)")
    args = ap.parse_args()

    from runtime.engine import Engine
    from runtime.model_loader import DEFAULT_MODEL, use_all_cores
    from runtime.model_loader import load as load_model
    from runtime.offline import complete_all
    from runtime.sampling import SamplingParams
    from training.prompts import Prompt
    from training.steering import answer, opening, own_opening

    rows = [json.loads(x) for x in args.answers.read_text().splitlines() if x.strip()]
    scored = {(str(r["question_id"]), r["system"]): r for r in rows if r.get("quality")}
    questions = [q for q in load(VICUNA80) if q.category in STEERED and (q.key, "hf") in scored][:args.limit]
    use_all_cores()
    eng = Engine(load_model(DEFAULT_MODEL, dtype=args.dtype, adapter="none"))  # the bench's base engine and scorer
    params = SamplingParams(max_new_tokens=MAX_TOKENS, temperature=0.0)  # the bench's decoding (default anti-loop)

    def score_row(q, text: str) -> dict:
        return score(eng, q, eng.encode(text))

    def steer(starts: list[str]) -> list[dict]:
        """The base model's answers after the forced `starts`, each at most MAX_TOKENS with its start."""
        prompts = [eng.chat_prompt(q.text) + eng.encode(o) for q, o in zip(questions, starts)]
        gens = complete_all(eng, prompts, params, batch=args.batch)
        return [score_row(q, eng.decode(eng.encode(start + g.text)[:MAX_TOKENS]))
                for q, start, g in zip(questions, starts, gens)]

    # the training data's openings ("Here are the key points:\n\n1. **"), scored with the intro and
    # as the data holds them (intro dropped); and the base model's own first line, then the list
    starts = [opening(Prompt(f"vicuna-{q.key}", q.text, "listlike", "vicuna80")) for q in questions]
    steered = steer(starts)
    as_trained = [score_row(q, answer(r["text"], o)) for q, r, o in zip(questions, steered, starts)]
    own = steer([own_opening(scored[(q.key, "hf")]["text"]) for q in questions])

    # blind items: every list item of an own-intro answer re-written from its header alone; a branch sees the
    # text before its block (a later block of a long list: the earlier ones as written)
    items = [list_items(r["text"]) for r in own]
    jobs = [(k, own[k]["text"][:g] + head) for k in range(len(own)) for g, _, _, head, _ in items[k]]
    gens = iter(complete_all(eng, [eng.chat_prompt(questions[k].text) + eng.encode(c) for k, c in jobs],
                             params.model_copy(update={"max_new_tokens": ITEM_TOKENS}), batch=args.batch))
    blind = []
    for q, r, its in zip(questions, own, items):
        if its:
            text, pos = "", 0
            for _, a, b, head, sep in its:  # each item its header, its blind body and its own separator
                text += r["text"][pos:a] + head + blind_body(next(gens).text) + sep
                pos = b
            blind.append(score_row(q, eng.decode(eng.encode(text + r["text"][pos:])[:MAX_TOKENS])))
    own_listed = [r for r, its in zip(own, items) if its]  # the serial answers the blind ones are made from

    def system(name: str) -> list[dict]:
        out = []
        for q in questions:
            r = scored.get((q.key, name))
            if r is not None:
                qual = r["quality"]
                out.append({"loss": qual["loss"], "repetition": qual["repetition"], "degenerate": qual["degenerate"],
                            "tokens": r["completion_tokens"]})
        return out

    figs = {"base_unsteered (hf)": figures(system("hf")), "base_steered": figures(steered),
            "base_steered_as_trained": figures(as_trained), "base_steered_own_intro": figures(own),
            "base_own_intro_listed": figures(own_listed), "base_own_intro_blind_items": figures(blind)}
    for name in ("ar", "aspd"):
        if any(k[1] == name for k in scored):
            figs[f"adapter_{name}"] = figures(system(name))
    ref = figs["base_unsteered (hf)"]["loss"]
    for f in figs.values():
        f["loss_vs_base"] = metrics.relative_delta(f["loss"], ref)
    result = {"meta": {"command": "bench/steered_control.py " + " ".join(sys.argv[1:]), "answers": shown(args.answers),
                       "steered_categories": list(STEERED), "questions": len(questions),
                       "weights": eng.loaded.weights,  # as bench/decoding.py records it
                       "sampling": {"max_new_tokens": MAX_TOKENS, "decoding": "greedy", "anti_loop": "default"},
                       "environment": environment()},
              "systems": figs, "steered_answers": steered, "own_intro_answers": own,
              "blind_item_answers": blind}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(figs, "loss_vs_base", args.out)


if __name__ == "__main__":
    main()
