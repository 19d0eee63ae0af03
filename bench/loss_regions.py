"""Where the base model's extra loss on ASPD answers sits: the quality proxy of `aspd bench` split by
the part of the answer each token belongs to.

`aspd bench` reports the base model's mean loss per token on each system's answers against its own
answers (`hf`). This splits that loss over an answer's pieces (`Response.answer_pieces`): serial
text, each branch's first line up to its first colon (the restated title: "2. **Sleep**:"; the
"opening title line" where the answer starts with it), the rest of each branch (its body, the first
branch of a block apart from its siblings; each body's first sentence or line its "opening"), and
what the answer adds around branches ("title: " leads, line breaks). Serial text splits the same way
where it holds a list ("list title", "list opening", "list body"), so that the lists every system
writes serially compare like for like with branches. It also
counts branches cut mid-sentence, which happens when the answer's token budget runs out inside a
block, and splits the branch tokens by their branch's place in its block ("title line 2", "body 5";
the sixth branch on pooled). Token-weighted means; excess nats against the reference system's mean
loss per token. The base model scores in `--dtype` (float32 by default: exact, and fast on any CPU).

    .venv/bin/python bench/loss_regions.py --answers bench/results/vicuna80/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, shown  # noqa: E402
from bench.questions import VICUNA80, load  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "loss_regions.json"
ENDS = tuple(".!?:;)\"'*\n")  # how a finished branch ends; anything else was cut mid-sentence
POSITIONS = 6  # the split by branch position pools the sixth branch and later


ITEM = re.compile(r"[ \t]*(?:\d+[.)]|[-*•])[ \t]+\S")  # a list item's first line: "2. **Sleep**: ..."


def title_cut(text: str) -> int:
    """Where an item's title line ends: after its first colon, or at its line's end."""
    return min([i for i in (text.find(":"), text.find("\n")) if i >= 0] or [len(text)]) + 1


# Where a sentence or a line may end: ".", "!" or "?" (closing quotes, brackets or bold marks kept)
# before a space or the text's end, or a newline; `stops.ends_sentence` (the budget cut's rule) decides.
BOUNDARY = re.compile(r"[.!?][\"')\]*]*(?=\s|$)|\n")


def opening(kind: str, text: str) -> list[tuple[str, str]]:
    """A body split after its first sentence or line: its opening ("sibling body" -> "sibling opening"),
    where an item written apart from its siblings and one written after them differ most, and the rest."""
    from runtime.stops import ends_sentence

    lead = len(text) - len(text.lstrip())
    cut = next((m.end() for m in BOUNDARY.finditer(text, lead) if ends_sentence(text[:m.end()])), len(text))
    return [(k, t) for k, t in ((kind.replace("body", "opening"), text[:cut]), (kind, text[cut:])) if t]


def serial_pieces(text: str) -> list[tuple[str, str]]:
    """Serial text split like a block's branches, so that list items written serially (every answer
    of `hf` and `ar`) compare with branches: each item's "list title" line, its "list opening" and
    "list body" up to the next item or blank line, and the rest "serial"."""
    out: list[tuple[str, str]] = []
    in_item = opened = False
    for line in text.splitlines(keepends=True):
        if ITEM.match(line):
            cut = title_cut(line)
            opened = bool(line[cut:].strip())  # the body starts on the title's line, or on the next one
            body = opening("list body", line[cut:]) if opened else [("list body", line[cut:])]
            out += [("list title", line[:cut]), *body]
            in_item = True
        else:
            in_item = in_item and bool(line.strip())
            if in_item and not opened:
                out += opening("list body", line)
                opened = True
            else:
                out.append(("list body" if in_item else "serial", line))
    return [(k, t) for k, t in out if t]


def placed(row: dict) -> list[tuple[str, str, int]]:
    """(region, text, branch) pieces whose concatenation is the answer's text; `branch` is the piece's
    branch's place in its block (1: the first), 0 outside branches. Serial text starts a new block, so
    two blocks with no text between them count on as one (none of the committed answers has such a pair)."""
    from runtime.protocol import parse

    if not row.get("markup") or not row.get("blocks"):
        return [(r, t, 0) for r, t in serial_pieces(row["text"])]
    out: list[tuple[str, str, int]] = []
    k, led = 0, False
    for kind, text in parse(row["markup"]).answer_pieces():
        if kind == "serial":
            out += [(r, t, 0) for r, t in serial_pieces(text)]
            k, led = 0, False
            continue
        if kind != "branch":
            out.append(("added", text, 0))
            led = kind == "lead"
            continue
        k += 1
        body = "first branch body" if k == 1 else "sibling body"
        if led:  # the answer added the title: the branch's own text is all body
            parts = opening(body, text)
        else:  # the branch restates its title first: "2. **Sleep well**: ..."
            cut = title_cut(text)
            # an answer that opens with its block opens with "1.", which the base model seldom writes first
            parts = [("opening title line" if not out else "title line", text[:cut]), *opening(body, text[cut:])]
        out += [(r, t, k) for r, t in parts]
        led = False
    return out


def pieces(row: dict) -> list[tuple[str, str]]:
    """(region, text) pieces whose concatenation is the answer's text."""
    return [(r, t) for r, t, _ in placed(row)]


def position_key(region: str, k: int) -> str | None:
    """A branch token's key in the split by position ("title line 2", "body 5"; 6 stands for 6 and
    later), None outside branches."""
    if not k:
        return None
    return f"{'title line' if region.endswith('title line') else 'body'} {min(k, POSITIONS)}"


def cut_branches(row: dict) -> tuple[int, int]:
    """(branches cut mid-sentence, branches) of an answer."""
    from runtime.protocol import parse

    if not row.get("markup") or not row.get("blocks"):
        return 0, 0
    bodies = [b.text.rstrip(" ") for blk in parse(row["markup"]).blocks for b in blk.branches]
    return sum(1 for t in bodies if not t.endswith(ENDS)), len(bodies)


def main() -> None:
    from runtime.weight_format import DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=Path, default=OUT.parent / "vicuna80" / "answers.jsonl")
    ap.add_argument("--systems", default="hf,ar,aspd")
    ap.add_argument("--reference", default="hf")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dtype", default="float32", choices=DTYPES,
                    help="the scorer's weight format (float32: exact, fast on any CPU)")
    args = ap.parse_args()

    from bench.quality import token_nll
    from runtime.engine import Engine
    from runtime.model_loader import DEFAULT_MODEL, use_all_cores
    from runtime.model_loader import load as load_model

    systems = args.systems.split(",")
    questions = {q.key: q for q in load(VICUNA80)}
    rows = [json.loads(x) for x in args.answers.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["system"] in systems and not r.get("error") and str(r["question_id"]) in questions]
    use_all_cores()
    eng = Engine(load_model(DEFAULT_MODEL, dtype=args.dtype, adapter="none"))  # the base model
    model = eng.loaded.model
    sums: dict = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    cuts: dict = defaultdict(lambda: [0, 0])
    by_pos: dict = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))  # branch tokens by title/body and position
    for r in rows:
        prompt = eng.chat_prompt(questions[str(r["question_id"])].text)
        chars = [(kind, k) for kind, text, k in placed(r) for _ in text]  # each character's region and branch
        if len(chars) != len(r["text"]):
            raise SystemExit(f"q{r['question_id']} {r['system']}: its markup does not give its text")
        # tokenised whole, as the bench scores it; each token counts where its first character is
        enc = eng.tok(r["text"], add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if not ids:
            continue
        nll = token_nll(model, prompt, ids).tolist()
        for (start, _), v in zip(enc["offset_mapping"], nll):
            reg, k = chars[start] if start < len(chars) else ("added", 0)
            for key in (reg, "all"):
                sums[r["system"]][key][0] += v
                sums[r["system"]][key][1] += 1
            if (key := position_key(reg, k)) is not None:
                by_pos[r["system"]][key][0] += v
                by_pos[r["system"]][key][1] += 1
        c, n = cut_branches(r)
        cuts[r["system"]][0] += c
        cuts[r["system"]][1] += n
    ref = sums[args.reference]["all"]
    ref_mean = ref[0] / ref[1]
    out = {}
    for s in systems:
        regions = {k: {"tokens": n, "loss": total / n, "excess_nats": total - n * ref_mean}
                   for k, (total, n) in sorted(sums[s].items())}
        excess = regions["all"]["excess_nats"]
        for k, v in regions.items():
            v["share_of_excess"] = v["excess_nats"] / excess if k != "all" and excess > 0 else None
        out[s] = {"answers": sum(1 for r in rows if r["system"] == s), "regions": regions,
                  "cut_branches": cuts[s][0], "branches": cuts[s][1]}
        if by_pos[s]:
            out[s]["positions"] = {k: {"tokens": n, "loss": total / n} for k, (total, n) in sorted(by_pos[s].items())}
    result = {"meta": {"command": "bench/loss_regions.py " + " ".join(sys.argv[1:]), "answers": shown(args.answers),
                       "reference": args.reference, "reference_loss": ref_mean, "dtype": args.dtype,
                       "pooled_from": POSITIONS, "environment": environment()},
              "systems": out}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for s, e in out.items():
        print(s, {k: (v["tokens"], round(v["loss"], 3)) for k, v in e["regions"].items()},
              f"cut branches {e['cut_branches']}/{e['branches']}")


if __name__ == "__main__":
    main()
