"""Two `aspd bench` runs side by side: is a candidate adapter better than the shipped one?

Per run: the ASPD speed (measured, against its own run's `ar` answers, and the machine-free ideal:
tokens over forward passes), fork share per category against the model issue's bars, branches per
block, and the base model's loss on each system's answers against the reference (`hf`). Runs that
reuse one `hf` answer set compare their losses directly; the loss on the answers *both* runs fork
(a ratio of summed losses, as the bench's own delta) compares the branches' text like for like.
Measured speeds compare only between runs on one machine: the table says when the CPUs differ.

    .venv/bin/python bench/compare.py bench/results/vicuna80 /tmp/vic_candidate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

CHAT = ("generic", "knowledge", "roleplay", "common-sense", "counterfactual", "writing")  # fork share >= 60%
NOT_CHAT = ("math", "coding", "fermi")  # fork share <= 15%


def load(run: Path) -> tuple[dict, dict[tuple[str, int], dict]]:
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines() if line.strip()]
    return summary, {(r["system"], r["question_id"]): r for r in rows if not r.get("error")}


def loss_delta(rows: dict, system: str, ids: list[int], ref: str = "hf") -> float:
    """Relative excess of the base model's summed loss on `system`'s answers over `ref`'s, on `ids`."""
    got = [(rows[(system, q)]["quality"]["loss"], rows[(ref, q)]["quality"]["loss"]) for q in ids
           if (system, q) in rows and (ref, q) in rows]
    return sum(a for a, _ in got) / sum(b for _, b in got) - 1 if got else float("nan")


def figures(run: Path, both: list[int]) -> dict[str, str]:
    summary, rows = load(run)
    aspd, ar = summary["systems"]["aspd"], summary["systems"].get("ar", {})
    cats = summary["categories"]
    fork = {c: cats[c]["aspd"]["fork_share"] for c in (*CHAT, *NOT_CHAT) if c in cats and "aspd" in cats[c]}
    sp = aspd["speedup_vs_ar"]
    out = {
        "speedup mean (median, max)": f"{sp['mean']:.2f}x ({sp['median']:.2f}x, {sp['max']:.2f}x)"
        if sp and sp.get("mean") is not None else "- (no ar run)",
        "ideal speedup mean": f"{aspd['ideal_speedup']['mean']:.2f}x",
        "fork share": f"{aspd['fork_share']:.1%}",
        "chat forks (>= 60%)": " ".join(f"{fork[c]:.0%}" for c in CHAT if c in fork),
        "math/coding/fermi (<= 15%)": " ".join(f"{fork[c]:.0%}" for c in NOT_CHAT if c in fork),
        "branches per block": f"{aspd['branches_per_block']:.2f}",
        "loss ASPD (<= +10%)": f"{aspd['quality_delta']['loss']:+.1%}",
        "loss AR (<= +10%)": f"{ar['quality_delta']['loss']:+.1%}" if ar else "-",
        f"loss ASPD, both fork ({len(both)})": f"{loss_delta(rows, 'aspd', both):+.1%}",
        "repeated 4-grams ASPD (hf)": f"{aspd['quality']['repetition']:.2%} "
                                      f"({summary['systems']['hf']['quality']['repetition']:.2%})"
        if "hf" in summary["systems"] else f"{aspd['quality']['repetition']:.2%}",
        "cpu": machine(summary),
    }
    return out


def machine(summary: dict) -> str:
    m = summary["meta"]["environment"]["machine"]
    isa = "AVX-512" if "avx512f" in m["flags"] else "AVX2" if "avx2" in m["flags"] else "other"
    return f"{m['cpu']}, {isa}"


def forked(run: Path) -> set[int]:
    return {q for (s, q), r in load(run)[1].items() if s == "aspd" and r["blocks"] > 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="`aspd bench --out` folders, the baseline first")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (run / "summary.json").exists():
            print(f"error: {run}: no summary.json (not an `aspd bench` output folder)", file=sys.stderr)
            return 2
    both = sorted(set.intersection(*(forked(r) for r in args.runs)))
    cols = [figures(r, both) for r in args.runs]
    table = Table(title="aspd bench runs compared")
    table.add_column("")
    for r in args.runs:
        table.add_column(str(r))
    for key in cols[0]:
        table.add_row(key, *(c[key] for c in cols))
    Console().print(table)
    if len({c["cpu"] for c in cols}) > 1:
        print("note: the runs are from different CPUs: compare their measured speeds within each run only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
