"""The model's benchmark tables (training data, adapter, steered control, loss regions, drafts, the
Vicuna-80 run, decoding) as `bench/doc_tables.py` writes them into README.md and docs/."""

from __future__ import annotations

from bench.tables_runtime import cpu, machine
from runtime.sampling import describe_anti_loop, describe_structure
from training.card import threshold


def opt(x, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or x != x else fmt.format(x)


def data_table(st: dict) -> str:
    rows = ["| step | answers or groups |", "|---|---|"]
    rows += [f"| {k.replace('_', ' ')} | {v} |" for k, v in st["steps"].items()]
    rows += [f"| answers kept (parallel + serial samples) | {st['kept_answers']} |",
             f"| PPD (answers with a parallel group) | {st['ppd']:.1%} |",
             f"| parallel degree (branch tokens / all tokens) | {st['parallel_degree']:.1%} |",
             f"| mean branches per group | {st['mean_branches_per_group']} |",
             "| independence threshold (sibling loss gain, nats/token) | "
             f"{st['threshold_nats_per_token'] or 'not checked'} |"]
    return "\n".join(rows)


def adapter_table(r: dict) -> str:
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| fork threshold (`<|title|>` logit offset, `aspd calibrate`) | {threshold(r)} |",
        f"| held-out split: forks on list-like prompts | {r['fork_rate_listlike']:.0%} |",
        f"| held-out split: forks on other prompts | {r['fork_rate_other']:.0%} |",
        f"| held-out split: outputs that parse as well-formed markup | {r['wellformed_rate']:.0%} |",
        f"| held-out split: branches per block | {opt(r.get('branches_per_block'))} |",
        f"| held-out split: mean ideal speedup of the answers' structure | {opt(r.get('ideal_speedup'), '{:.2f}x')} |",
        f"| held-out split: degenerate-text rate | {opt(r.get('degenerate_rate'), '{:.2%}')} |",
        f"| Vicuna-80: answers that forked | {r['vicuna_fork_share']:.0%} |",
        f"| Vicuna-80: branches per block | {opt(r.get('vicuna_branches_per_block'))} |",
        f"| Vicuna-80: latency speedup ASPD / AR, mean (median) | **{r['vicuna_mean_speedup']:.2f}x** "
        f"({r['vicuna_median_speedup']:.2f}x) |",
        f"| Vicuna-80: max speedup | {r['vicuna_max_speedup']:.2f}x |",
        f"| Vicuna-80: mean ideal speedup of the ASPD answers' structure | {r['vicuna_mean_ideal_speedup']:.2f}x |",
        f"| MiniLM cosine to the base model's AR answer: ASPD (adapter AR) | {r['cosine_aspd_vs_base_ar']:.3f} "
        f"({r['cosine_ar_vs_base_ar']:.3f}) |",
        f"| base model's loss on the answers: ASPD, adapter AR, base AR (nats/token) | {r['loss_base_on_aspd']:.3f}, "
        f"{r['loss_base_on_ar']:.3f}, {r['loss_base_on_base_ar']:.3f} |",
    ]
    e = r["environment"]
    note = (f"\n{r['eval_prompts']} held-out prompts (`bench/adapter.py`) and {r['vicuna_questions']} Vicuna questions "
            f"(from {r['vicuna_source']}); greedy, {describe_anti_loop(r)}, at most "
            f"{r['max_new_tokens']} new tokens; {machine(e)}.")
    return "\n".join(rows) + "\n" + note


def steered_table(r: dict) -> str:
    rows = ["| answers to the same questions | base-model loss (nats/token) | vs base | repeated 4-grams | "
            "degenerate | tokens |", "|---|---|---|---|---|---|"]
    rows += [f"| {name.replace('_', ' ')} | {f['loss']:.3f} | {f['loss_vs_base']:+.1%} | {f['repetition_4gram']:.1%} | "
             f"{f['degenerate']:.2%} | {f['tokens']:.0f} |" for name, f in r["systems"].items()]
    m = r["meta"]
    note = (f"\n{m['questions']} Vicuna-80 questions of the categories where forks are expected "
            f"({', '.join(m['steered_categories'])}); greedy, default anti-loop, at most "
            f"{m['sampling']['max_new_tokens']} tokens (a forced start included)"
            + (f"; base answers decoded in {m['weights']}" if m.get("weights") else "")
            + f"; adapter rows from {m['answers']}; "
            f"{machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def blind_control_table(r: dict) -> str:
    """The forked ASPD answers with their bodies re-written blind (bench/blind_control.py)."""
    names = {"hf": "base model's own answers (hf)", "aspd": "adapter's ASPD answers",
             "base_blind": "their titles, bodies by the base model blind (siblings linked)",
             "base_blind_unlinked": "their titles, bodies by the base model blind, unlinked",
             "adapter_blind": "their titles, bodies by the adapter blind in plain view (linked)",
             "own_hf": "base model's own answers (hf), own-list questions",
             "own_lists": "base model's own-intro lists, written serially",
             "own_lists_blind": "their titles, bodies by the base model blind (siblings linked)",
             "run_hf": "base model's own answers (hf), whole run",
             "run_aspd": "adapter's ASPD answers, whole run",
             "run_own_lists": "base model's own-intro lists where it wrote one, its own answers elsewhere",
             "run_own_lists_blind": "the same, list bodies by the base model blind (siblings linked)"}
    rows = ["| answers to the same questions | base-model loss (nats/token) | vs hf | repeated 4-grams | tokens |",
            "|---|---|---|---|---|"]
    rows += [f"| {names.get(k, k)} | {f['loss']:.3f} | {f['loss_vs_hf']:+.1%} | {f['repetition_4gram']:.1%} | "
             f"{f['tokens']:.0f} |" for k, f in r["systems"].items()]
    m = r["meta"]
    adapter = "the shipped one" if m["adapter"] == "auto" else m["adapter"]
    note = (f"\nThe {m['questions']} Vicuna-80 questions the adapter's ASPD answers fork on ({m['answers']}; adapter: "
            f"{adapter}), and the {m['own_questions']} own-intro answers of {m['own']} that hold a bold numbered list, "
            f"and the whole run's {m['run_questions']} questions; bodies at most {m['sampling']['body_tokens']} "
            f"tokens, answers at most {m['sampling']['max_new_tokens']}; greedy, default anti-loop; writers and "
            f"scorer in {m['weights']}; "
            f"`{m['command'].strip()}`; {machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def loss_regions_table(r: dict) -> str:
    """The base model's loss per answer region (bench/loss_regions.py)."""
    names = ["serial", "list title", "list opening", "list body", "opening title line", "title line",
             "first branch opening", "first branch body", "sibling opening", "sibling body", "added", "all"]
    systems = r["systems"]
    rows = ["| region | " + " | ".join(f"{s}: tokens, loss" for s in systems) + " | share of aspd's excess |",
            "|---|" + "---|" * (len(systems) + 1)]
    for name in names:
        cells = []
        for e in systems.values():
            g = e["regions"].get(name)
            cells.append("-" if g is None else f"{g['tokens']}, {g['loss']:.3f}")
        share = (systems.get("aspd", {}).get("regions", {}).get(name) or {}).get("share_of_excess")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'n/a' if share is None else f'{round(share * 100)}%'} |")
    cut = {s: f"{e['cut_branches']} of {e['branches']}" for s, e in systems.items() if e["branches"]}
    m = r["meta"]
    dtype = f" ({m['dtype']} weights)" if m.get("dtype") else ""
    note = (f"\nToken-weighted means (nats/token) under the base model{dtype}, on the answers of {m['answers']}; "
            f"excess "
            f"against `{m['reference']}`'s mean ({m['reference_loss']:.3f}). Branches cut mid-sentence by the "
            f"answer's token budget: {', '.join(f'{s} {v}' for s, v in cut.items()) or 'none'}. "
            f"`{m['command']}`; {machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def loss_positions_table(r: dict, system: str = "aspd") -> str:
    """The base model's loss on branch title lines and bodies by the branch's place in its block."""
    pos = r["systems"].get(system, {}).get("positions") or {}
    n = max((int(k.rsplit(" ", 1)[1]) for k in pos), default=0)
    rows = [f"| {system}: branch in its block | title line: tokens, loss | body: tokens, loss |", "|---|---|---|"]
    for k in range(1, n + 1):
        got = [pos.get(f"{part} {k}") for part in ("title line", "body")]
        cells = [f"{g['tokens']}, {g['loss']:.3f}" if g else "-" for g in got]
        rows.append(f"| {k}{' and later' if k == r['meta'].get('pooled_from') else ''} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + f"\n\nSame run and scorer as the table above (`{r['meta']['command'].strip()}`)."


def drafts_table(r: dict) -> str:
    rows = ["| ASPD answers, shipped adapter | answers | forwards, drafts off -> on | latency, off -> on | "
            "speedup per answer, mean (median, max) |", "|---|---|---|---|---|"]
    parts = [("every question", r["all"])]
    if r["forked"]["answers"] != r["all"]["answers"]:
        parts.append(("questions whose answer forks", r["forked"]))
    for name, s in parts:
        sp = s["speedup"]
        rows.append(f"| {name} | {s['answers']} | {s['forwards_off']} -> {s['forwards_on']} "
                    f"({s['forwards_on'] / s['forwards_off'] - 1:+.1%}) | {s['latency_off_s']:.0f} -> "
                    f"{s['latency_on_s']:.0f} s ({s['latency_on_s'] / s['latency_off_s'] - 1:+.1%}) | "
                    f"{sp['mean']:.3f}x ({sp['median']:.3f}x, {sp['max']:.2f}x) |")
    m = r["meta"]
    note = (f"\n`{m['command']}`: the first {r['all']['answers']} Vicuna-80 questions, each answered twice in a row "
            f"(drafts off and on, the order alternating), {m['format']} weights, greedy, default anti-loop, at most "
            f"{m['sampling']['max_new_tokens']} new tokens; the two answers are the same text for "
            f"{r['same_text']} of {r['all']['answers']}; {cpu(m['environment']['machine'])}, "
            f"{machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def vicuna_table(summary: dict) -> str:
    """The `aspd bench` run's speed and quality tables (the same rows as its report.md)."""
    from bench import run_report

    m = summary["meta"]
    env = m["environment"]
    qual = [[txt + (" ⚠" if st == "red" else "") for txt, st in r] for r in run_report.quality_rows(summary)]
    sp = m["sampling"]
    decoding = (f"{sp.get('decoding')}, {describe_anti_loop(sp)}{describe_structure(sp)}, at most "
                f"{sp.get('max_new_tokens')} new tokens")
    note = (f"\n`{m['command']}`: {m['question_count']} questions, {decoding}, one question at a time with "
            f"the systems interleaved; {env['machine']['cores']} cores, torch {env['versions']['torch']}, "
            f"transformers {env['versions']['transformers']}, {env['date']}. Full report: "
            f"[bench/results/vicuna80/report.md](bench/results/vicuna80/report.md).")
    return (run_report.md_table(run_report.SPEED_HEAD, run_report.speed_rows(summary)) + "\n\n"
            + run_report.md_table(run_report.QUALITY_HEAD, qual) + "\n" + note)


def decoding_table(r: dict) -> str:
    """The anti-loop settings measured on the base model's Vicuna-80 answers (bench/decoding.py)."""
    chosen = (r["chosen"]["repetition_penalty"], r["chosen"]["no_repeat_ngram_size"])
    rows = ["| repetition penalty (words only) | no repeated n-grams | loops | 4-gram repetition | degenerate words "
            "| answers with parallel groups | ceiling: mean / max | base model's loss |",
            "|---|---|---|---|---|---|---|---|"]
    for x in ([r["before"]] if r.get("before") else []) + r["settings"]:
        key = (x["repetition_penalty"], x["no_repeat_ngram_size"])
        mark = " **(default)**" if key == chosen else ""
        rows.append(f"| {x['repetition_penalty']}{mark} | {x['no_repeat_ngram_size'] or 'off'} | {x['loops']:.1%} | "
                    f"{x['repetition_4gram']:.3f} | {x['degenerate']:.2%} | {x['with_groups']:.0%} | "
                    f"{x['ceiling_mean']:.2f}x / {x['ceiling_max']:.2f}x | {x['loss']:.3f} |")
    e = r["environment"]
    rescored = sorted({x["rescored"] for x in r["settings"] if x.get("rescored")})
    again = (f" The text figures (loops, repetition, degenerate words, structure) re-scored on {', '.join(rescored)} "
             f"from the stored answers with the current metrics; the first row's, scored once, counted code as "
             f"degenerate." if rescored else "")
    note = (f"\nThe base model's greedy answers to the {r['settings'][0]['questions']} Vicuna-80 questions "
            f"(at most {r['max_new_tokens']} tokens, {r['weights']}); the first row is the committed `hf` answers of "
            f"the earlier default. Ceiling: the speedup if every parallel group the data pipeline finds forked."
            f"{again} {machine(e)}.")
    return "\n".join(rows) + "\n" + note
