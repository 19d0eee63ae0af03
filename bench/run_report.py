"""What `aspd bench` hands back: `summary.json` (machine-readable), rich tables, `report.md`, plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import metrics

QUALITY = ("cosine", "loss", "repetition", "degenerate", "length_ratio", "redundancy", "judge")
# which way is better, for the quality delta against the reference (cosine has no delta: the
# reference's own cosine is 1 by definition). Loss and grade deltas are relative; the repetition
# and degenerate-text rates are themselves shares (often 0 for the reference), so their deltas are
# differences.
HIGHER_IS_BETTER = {"loss": False, "repetition": False, "degenerate": False, "judge": True}
ABSOLUTE = frozenset({"repetition", "degenerate"})
TOLERANCE = 0.01  # the paper's "within 1%" line


def _get(r: dict, group: str, key: str) -> float:
    v = (r.get(group) or {}).get(key)
    return math.nan if v is None else float(v)


def summarize(rows: list[dict], systems: list[str], meta: dict) -> dict:
    """Per system (and per category): speed and quality figures over its answers."""
    ok = [r for r in rows if not r.get("error")]
    out: dict = {"meta": meta, "systems": {}, "categories": {}}
    for s in systems:
        mine = [r for r in ok if r["system"] == s]
        entry = {
            "answers": len(mine),
            "errors": sum(1 for r in rows if r["system"] == s and r.get("error")),
            "latency_s": metrics.stats(r["latency_s"] for r in mine),
            "ttft_s": metrics.stats(r["ttft_s"] for r in mine),
            "completion_tokens": metrics.stats(r["completion_tokens"] for r in mine),
            "forward_passes": metrics.stats(r["forward_passes"] for r in mine if r.get("forward_passes")),
            "fork_share": sum(r["blocks"] > 0 for r in mine) / len(mine) if mine else math.nan,
            "branches_per_block": (sum(r["branches"] for r in mine) / sum(r["blocks"] for r in mine)
                                   if any(r["blocks"] for r in mine) else math.nan),
            "parallel_degree": metrics.stats(r["parallel_tokens"] / r["completion_tokens"]
                                             for r in mine if r["completion_tokens"]),
        }
        for key in ("tokens_per_s", "speedup_vs_ar", "speedup_vs_hf", "rate_speedup_vs_ar", "ideal_speedup",
                    "ideal_fraction"):
            entry[key] = metrics.stats(_get(r, "speed", key) for r in mine)
        entry["quality"] = {k: metrics.stats(_get(r, "quality", k) for r in mine)["mean"] for k in QUALITY}
        out["systems"][s] = entry
    ref = meta.get("reference")
    ref_q = out["systems"].get(ref, {}).get("quality") if ref else None
    if ref_q is None and ref:  # the untimed fallback reference is not a reported system
        ref_q = {k: metrics.stats(_get(r, "quality", k) for r in ok if r["system"] == ref)["mean"] for k in QUALITY}
    for entry in out["systems"].values():
        if ref_q:
            entry["quality_delta"] = {k: (entry["quality"][k] - ref_q[k]) if k in ABSOLUTE
                                      else metrics.relative_delta(entry["quality"][k], ref_q[k])
                                      for k in HIGHER_IS_BETTER}
    by_cat: dict = defaultdict(dict)
    for s in systems:
        for cat in sorted({r["category"] for r in ok}):
            sel = [r for r in ok if r["system"] == s and r["category"] == cat]
            by_cat[cat][s] = {"speedup_vs_ar": metrics.stats(_get(r, "speed", "speedup_vs_ar") for r in sel)["mean"],
                              "speedup_vs_hf": metrics.stats(_get(r, "speed", "speedup_vs_hf") for r in sel)["mean"],
                              "cosine": metrics.stats(_get(r, "quality", "cosine") for r in sel)["mean"],
                              "fork_share": sum(r["blocks"] > 0 for r in sel) / len(sel) if sel else math.nan}
    out["categories"] = dict(by_cat)
    return out


# --------------------------------------------------------------------------- tables


def _f(v: float, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _delta(v: float, better_up: bool, points: bool = False) -> tuple[str, str]:
    """(text, style): green within the 1% line (1 point for a share) or better, red beyond it."""
    if v is None or math.isnan(v):
        return "-", ""
    worse = -v if better_up else v
    return f"{v * 100:+.1f} pts" if points else f"{v:+.1%}", "green" if worse <= TOLERANCE else "red"


def speed_rows(summary: dict) -> list[list[str]]:
    rows = []
    for s, e in summary["systems"].items():
        rows.append([s, str(e["answers"]), _f(e["latency_s"]["mean"]), _f(e["ttft_s"]["mean"], "{:.3f}"),
                     _f(e["tokens_per_s"]["mean"], "{:.1f}"),
                     *(_f(e["speedup_vs_ar"][k]) + "x" for k in ("mean", "median", "max")),
                     _f(e["speedup_vs_hf"]["mean"]) + "x", _f(e["fork_share"], "{:.0%}"),
                     _f(e["ideal_speedup"]["mean"]) + "x", _f(e["ideal_fraction"]["mean"], "{:.0%}")])
    return rows


SPEED_HEAD = ["system", "answers", "latency s", "TTFT s", "tok/s", "vs ar mean", "median", "max", "vs hf mean",
              "forked", "ideal", "of ideal"]
QUALITY_HEAD = ["system", "cosine to ref", "base loss", "loss delta", "repetition", "rep. delta", "degenerate",
                "degen. delta", "length ratio", "sibling cos", "judge", "judge delta"]


def quality_rows(summary: dict) -> list[list[tuple[str, str]]]:
    rows = []
    for s, e in summary["systems"].items():
        q, d = e["quality"], e.get("quality_delta", {})
        rows.append([(s, ""), (_f(q["cosine"], "{:.3f}"), ""), (_f(q["loss"], "{:.3f}"), ""),
                     _delta(d.get("loss", math.nan), False), (_f(q["repetition"], "{:.3f}"), ""),
                     _delta(d.get("repetition", math.nan), False, points=True),
                     (_f(q.get("degenerate", math.nan), "{:.3f}"), ""),
                     _delta(d.get("degenerate", math.nan), False, points=True), (_f(q["length_ratio"]), ""),
                     (_f(q.get("redundancy", math.nan), "{:.3f}"), ""), (_f(q["judge"]), ""),
                     _delta(d.get("judge", math.nan), True)])
    return rows


def category_rows(summary: dict, systems: list[str]) -> list[list[str]]:
    return [[cat] + [_f(v.get(s, {}).get("speedup_vs_ar", math.nan)) + "x" for s in systems]
            for cat, v in summary["categories"].items()]


def print_tables(summary: dict, console: Console) -> None:
    systems = list(summary["systems"])
    t = Table(title="Speed (per answer, then averaged; speedup = ar's or hf's latency on the same question / this)")
    for h in SPEED_HEAD:
        t.add_column(h, justify="left" if h == "system" else "right")
    for r in speed_rows(summary):
        t.add_row(*r)
    console.print(t)
    t = Table(title=f"Quality proxies against {summary['meta'].get('reference')} (deltas: green within "
                    f"{TOLERANCE:.0%} or better)")
    for h in QUALITY_HEAD:
        t.add_column(h, justify="left" if h == "system" else "right")
    for r in quality_rows(summary):
        t.add_row(*(f"[{st}]{txt}[/]" if st else txt for txt, st in r))
    console.print(t)
    t = Table(title="Mean speedup against ar, by category")
    t.add_column("category")
    for s in systems:
        t.add_column(s, justify="right")
    for r in category_rows(summary, systems):
        t.add_row(*r)
    console.print(t)


# --------------------------------------------------------------------------- markdown and plots


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    m, systems = summary["meta"], list(summary["systems"])
    env = m.get("environment", {})
    qual = [[txt + (" ⚠" if st == "red" else "") for txt, st in r] for r in quality_rows(summary)]
    return "\n\n".join([
        f"# aspd bench: {m.get('questions')}",
        f"Command: `{m.get('command')}`  \nMachine: {json.dumps(env.get('machine'))}  \n"
        f"Versions: {json.dumps(env.get('versions'))}  \nDate: {env.get('date')}  \n"
        f"Decoding: {json.dumps(m.get('sampling'))}",
        "## Speed", SPEED_HEAD and md_table(SPEED_HEAD, speed_rows(summary)),
        f"## Quality proxies (against `{m.get('reference')}`, the base model's AR answer; ⚠ = worse by more "
        f"than {TOLERANCE:.0%})",
        "These are proxies, not a judge: MiniLM cosine to the reference answer, the base model's per-token "
        "loss on the answer given the question, the share of repeated word 4-grams, tokens over the "
        "reference's tokens" + (", and the LLM judge's 1-10 grade." if m.get("judge_url") else "."),
        md_table(QUALITY_HEAD, qual),
        "## Mean speedup against `ar`, by category", md_table(["category"] + systems, category_rows(summary, systems)),
        "## Plots", "![speedup by category](speedup_by_category.png)\n![latency](latency.png)\n"
        "![quality against speedup](quality_vs_speedup.png)",
    ]) + "\n"


def plots(rows: list[dict], summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(summary["systems"])
    ok = [r for r in rows if not r.get("error") and r["system"] in systems]
    files = []
    cats = list(summary["categories"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(systems), 1)
    for i, s in enumerate(systems):
        vals = [summary["categories"][c].get(s, {}).get("speedup_vs_ar", math.nan) for c in cats]
        ax.bar([x + i * width for x in range(len(cats))], vals, width, label=s)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(cats))], cats, rotation=30, ha="right")
    ax.set_ylabel("mean speedup vs ar")
    ax.legend()
    fig.tight_layout()
    files.append(out / "speedup_by_category.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([[r["latency_s"] for r in ok if r["system"] == s] for s in systems], tick_labels=systems)
    ax.set_ylabel("latency per answer (s)")
    fig.tight_layout()
    files.append(out / "latency.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for s in systems:
        pts = [(_get(r, "speed", "speedup_vs_ar"), _get(r, "quality", "cosine")) for r in ok if r["system"] == s]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=s, s=14, alpha=0.7)
    ax.set_xlabel("speedup vs ar")
    ax.set_ylabel(f"cosine to {summary['meta'].get('reference')}")
    ax.legend()
    fig.tight_layout()
    files.append(out / "quality_vs_speedup.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def _clean(x):
    """JSON without NaN (null instead), so every tool reads summary.json."""
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 4)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def write(rows: list[dict], summary: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    return [out / "summary.json", out / "report.md", *plots(rows, summary, out)]
