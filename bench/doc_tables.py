"""Render the benchmark tables of README.md and docs/*.md from bench/results/*.json (no hand-typed figures).

    .venv/bin/python bench/doc_tables.py      # rewrites every marker block in README.md and docs/*.md

A table lives between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`; one block may appear in
several files (each gets the same table, its links made relative to that file). Every marker in `MARKERS`
must appear in at least one file, or nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from runtime.sampling import describe_anti_loop
from training.card import threshold

ROOT = Path(__file__).resolve().parents[1]


def engine_table(r: dict) -> str:
    fs = r["formats"]
    auto = r.get("auto") or {}

    def row(label, fmt):
        return f"| {label} | " + " | ".join(fmt(f) for f in fs.values()) + " |"

    head = [f"`{name}`" + (" (auto)" if name == auto.get("choice") else "") for name in fs]
    rows = [
        "| metric | " + " | ".join(head) + " |",
        "|---" * (len(fs) + 1) + "|",
        *(row(f"decode step, {k} live branch{'es' if k != '1' else ''}", lambda f, k=k: f"{f['step_ms'][k]:.1f} ms")
          for k in next(iter(fs.values()))["step_ms"]),
        row("4-branch step / serial step", lambda f: f"{f['step_4_vs_1']:.2f}x"),
        row("serial decoding, engine", lambda f: f"{f['serial_tok_s']:.1f} tok/s"),
        row("transformers `generate` on the format's float model, same run",
            lambda f: f"{f['hf_tok_s']:.1f} tok/s ({f.get('hf_dtype', 'bfloat16')})"),
        row("engine / transformers", lambda f: f"**{f['serial_vs_hf']:.2f}x**"),
        row("4-branch fork (64 tokens each) vs one after another", lambda f: f"**{f['fork4_speedup']:.2f}x**"),
        row("weights read per step", lambda f: f"{f['weight_mb']:.0f} MB"),
        row("peak RSS", lambda f: f"{f['peak_rss_mb']:.0f} MB"),
    ]
    m, v = r["machine"], r["versions"]
    tf = fs.get("bfloat16", {}).get("serial_tok_s_transformers_forward")
    note = (f"\n{r['model']}, {m['cores']} cores ({_cpu(m)}), torch {v['torch']}, "
            f"transformers {v['transformers']}, best of {r['settings']['repeats']} runs, {r['date']}. "
            f"`--dtype auto` chose `{auto.get('choice')}` from its own step timings {auto.get('timings_ms')}."
            + (f" The engine on transformers' forward (any non-Llama model), bf16: {tf:.1f} tok/s." if tf else ""))
    return "\n".join(rows) + "\n" + note


def engine_adapter_table(r: dict) -> str:
    fs = r["formats"]
    rows = ["| with the shipped adapter | " + " | ".join(f"`{n}`" for n in fs) + " |", "|---" * (len(fs) + 1) + "|"]
    for label, key, fmt in (("decode step, 1 / 4 live branches", None, None),
                            ("serial decoding vs transformers (the format's float model)", "serial_vs_hf", "{:.2f}x"),
                            ("4-branch fork vs one after another", "fork4_speedup", "{:.2f}x")):
        if key is None:
            cells = [f"{f['step_ms']['1']:.1f} / {f['step_ms']['4']:.1f} ms ({f['step_4_vs_1']:.2f}x)"
                     for f in fs.values()]
        else:
            cells = [fmt.format(f[key]) for f in fs.values()]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + (f"\n\n`bench/engine.py --adapter auto --formats {','.join(fs)}`, {r['machine']['cores']} "
                              f"cores ({_cpu(r['machine'])}), torch {r['versions']['torch']}, {r['date']}.")


def formats_table(base: dict, adapted: dict | None) -> str:
    rows = ["| model | format | weights read per step | greedy identical to float32 (128 tokens) | "
            "mean tokens before the first difference | loss on the base model's answers | delta |",
            "|---|---|---|---|---|---|---|"]
    for r, label in ((base, "base"), (adapted, "with the shipped adapter")):
        for name, f in (r or {}).get("formats", {}).items():
            rows.append(f"| {label} | `{name}` | {f['weight_mb']:.0f} MB | {f['greedy_identical']:.0%} | "
                        f"{f['greedy_first_difference_mean']:.1f} | {f['loss']:.4f} | {f['loss_delta_pct']:+.2f}% |")
    where = "; ".join(f"{label}: {_cpu(r['machine'])}, {r['date']}"
                      for r, label in ((base, "base"), (adapted, "adapter")) if r)
    note = (f"\n{base['prompts']} Vicuna-80 prompts, greedy, no penalty, all prompts batched in one forward per step; "
            f"loss over the first 256 tokens of each `hf` answer of the committed Vicuna-80 run "
            f"({next(iter(base['formats'].values()))['answer_tokens']} tokens); {where}. "
            f"int4 layers against gguf's own Q4_1 dequantization (fp32 kernel): max difference "
            f"{base.get('int4_vs_gguf_max_abs_diff')}.")
    return "\n".join(rows) + "\n" + note


def programs_table(r: dict) -> str:
    e = r["engine_backend"]
    rows = [
        "| backend | parallel blocks | `--serial` | speedup |",
        "|---|---|---|---|",
        f"| native (SGLang interpreter on NativeBackend) | {r['parallel_s']:.2f} s | {r['serial_s']:.2f} s | "
        f"**{r['speedup']:.2f}x** |",
        f"| engine (IR executor, no SGLang) | {e['parallel_s']:.2f} s | {e['serial_s']:.2f} s | {e['speedup']:.2f}x |",
    ]
    m, v = r["machine"], r["versions"]
    note = (f"\n{r['program']}; {r['model']}, {r['dtype']}, {m['cores']} cores, torch {v['torch']}, best of "
            f"{r['settings']['repeats']} interleaved runs, {r['date']}. Native runs (s), parallel: "
            f"{r['parallel_runs_s']}; serial: {r['serial_runs_s']}.")
    return "\n".join(rows) + "\n" + note


def serve_table(r: dict) -> str:
    on = r["fork_program"]["cache_on"]
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| errors | {r['errors']} of {r['requests_concurrent'] + r['requests_sequential']} requests |",
        f"| throughput, {r['clients']} concurrent clients | {r['throughput_rps']:.2f} req/s |",
        f"| throughput, the same requests one at a time | {r['sequential_rps']:.2f} req/s |",
        f"| concurrent / sequential | **{r['speedup_throughput']:.2f}x** |",
        f"| latency under load, p50 / p99 | {r['p50_s']:.2f} s / {r['p99_s']:.2f} s |",
        f"| latency alone, p50 | {r['sequential_p50_s']:.2f} s |",
        f"| mean requests per forward pass | {r['mean_batch']:.1f} |",
        f"| server peak RSS (bound) | {r['peak_rss_mb']:.0f} MB ({r['rss_bound_mb']:.0f} MB) |",
        f"| fork-heavy program (8 branches): prompt tokens computed, prefix cache on | "
        f"{r['prefill_tokens_cache_on']} ({on['cached_tokens']} reused) |",
        f"| the same, prefix cache off (`--cache-tokens 0`) | {r['prefill_tokens_cache_off']} |",
    ]
    e = r["environment"]
    m, v = e["machine"], e["versions"]
    note = (f"\nEmbedded SmolLM2-135M, {r.get('weights', 'bfloat16')}, greedy, {r['max_new_tokens']} new tokens "
            f"a request, {r['seconds']:.0f} s a phase; {m['cores']} cores, torch {v['torch']}, {e['date']}. "
            f"Server: `aspd serve "
            f"{' '.join(r['server_args'])}`.")
    return "\n".join(rows) + "\n" + note


def constrained_table(r: dict) -> str:
    s, st = r["summary"], r["settings"]
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| outputs that match their regex or validate against their schema | **{s['valid']} of {s['outputs']}** "
        f"({s['serial_valid']} serial, {s['branch_valid']} in branches) |",
        f"| tokens/s constrained / the same prompts unconstrained | {s['constrained_tok_s']:.1f} / "
        f"{s['unconstrained_tok_s']:.1f} ({s['constrained_vs_unconstrained']:.2f}x) |",
    ]
    note = (f"\n`python bench/constrained.py`: {st['cases']} regexes and schemas x {st['seeds']} seeds, temperature "
            f"{st['temperature']}, {st['branches_per_block']} grammars per block, {st['library']}; embedded "
            f"SmolLM2-135M (adapter: {r['adapter']}); {r['machine']['cores']} cores, torch {r['versions']['torch']}, "
            f"{r['date']}.")
    return "\n".join(rows) + "\n" + note


def cluster_table(r: dict) -> str:
    one, two = r["one_worker"], r["two_workers"]
    lat = one["latency"]

    def mix(x: dict) -> str:
        return (f"{x['programs_per_s']:.2f} programs/s, prefix hit rate {x['prefix_hit_rate']:.1%}, "
                f"{x['kv_joins']} KV / {x['text_joins']} text joins, {x['errors']} errors")

    rows = [
        "| metric | value |",
        "|---|---|",
        f"| short request p50 / p99, direct | {lat['direct_p50_s'] * 1000:.0f} ms / "
        f"{lat['direct_p99_s'] * 1000:.0f} ms |",
        f"| the same through the router | {lat['routed_p50_s'] * 1000:.0f} ms / {lat['routed_p99_s'] * 1000:.0f} ms "
        f"(overhead p50 {lat['overhead_p50_ms']:+.1f} ms) |",
        f"| 1 worker ({one['cores'][0]}), {r['clients']} clients: req/s direct / routed | "
        f"{one['direct']['throughput_rps']:.2f} / {one['routed']['throughput_rps']:.2f} |",
        f"| 2 workers ({' and '.join(two['cores'])}), routed: req/s | {two['routed']['throughput_rps']:.2f} "
        f"(**{r['two_over_one_throughput']:.2f}x** one worker) |",
        f"| errors under load (1 worker, 2 workers) | {one['routed']['errors']}, {two['routed']['errors']} |",
        f"| fork-heavy mix, 1 worker, `cache_aware` | {mix(one['fork_mix_cache_aware'])} |",
        f"| fork-heavy mix, 2 workers, `cache_aware` | {mix(two['fork_mix_cache_aware'])} |",
        f"| fork-heavy mix, 2 workers, `round_robin` | {mix(two['fork_mix_round_robin'])} |",
    ]
    note = (f"\n`python bench/serve_cluster.py`; embedded SmolLM2-135M, {r['weights']}, {r['max_new_tokens']} new "
            f"tokens a request, {r['seconds']:.0f} s a phase; workers `aspd serve {' '.join(r['server_args'])}`, "
            f"one core each when two (cores are the bound on this machine); {_machine(r['environment'])}.")
    return "\n".join(rows) + "\n" + note


def faults_table(r: dict) -> str:
    h, m, st = r["hostile"], r["memory"], r["stalls"]
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| hostile requests answered as they must be | {h['correct']} of {h['cases']} |",
        "| hangs (no answer within 60 s) / 5xx / 5xx not labelled `server_error` | "
        f"{h['hangs']} / {h['5xx']} / {h['unlabelled_5xx']} |",
        f"| sequences leaked after the round | {h['leaked_sequences']} |",
        f"| server RSS: start, after the hostile round | {m['rss_start_mb']:.0f} MB, "
        f"{m['rss_after_hostile_mb']:.0f} MB |",
        f"| after {m['forks']} fork sessions of a {m['parent_tokens']}-token parent (bound) | "
        f"{m['rss_after_forks_mb']:.0f} MB ({m['bound_mb']:.0f} MB) |",
    ]
    for name, x in st.items():
        rows.append(f"| short requests, p99 idle / while 4,000-token prompts prefill ({name}) | "
                    f"{x['idle_p99_s']:.2f} s / {x['during_p99_s']:.2f} s (**{x['p99_ratio']:.1f}x**) |")
        rows.append(f"| the long prompt's own time ({name}) | {x['long_prompt_s']:.1f} s |")
    note = (f"\n`python bench/serve_faults.py`; server `aspd serve {' '.join(r['server_args'])}`; "
            f"{_machine(r['environment'])}.")
    return "\n".join(rows) + "\n" + note


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


def _cpu(m: dict) -> str:
    """A benchmark machine's CPU and the flags that decide its matmul kernels."""
    flags = " ".join(x for x in m["flags"] if x.startswith(("avx512_bf16", "avx512f", "avx2", "amx")))
    return f"{m['cpu']}; {flags or 'no AVX2'}"


def _machine(e: dict) -> str:
    """Where and when a benchmark ran, as its table's note says it."""
    return f"{e['machine']['cores']} cores, torch {e['versions']['torch']}, {e['date']}"


def _opt(x, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or x != x else fmt.format(x)


def adapter_table(r: dict) -> str:
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| fork threshold (`<|title|>` logit offset, `aspd calibrate`) | {threshold(r)} |",
        f"| held-out split: forks on list-like prompts | {r['fork_rate_listlike']:.0%} |",
        f"| held-out split: forks on other prompts | {r['fork_rate_other']:.0%} |",
        f"| held-out split: outputs that parse as well-formed markup | {r['wellformed_rate']:.0%} |",
        f"| held-out split: branches per block | {_opt(r.get('branches_per_block'))} |",
        f"| held-out split: mean ideal speedup of the answers' structure | {_opt(r.get('ideal_speedup'), '{:.2f}x')} |",
        f"| held-out split: degenerate-text rate | {_opt(r.get('degenerate_rate'), '{:.2%}')} |",
        f"| Vicuna-80: answers that forked | {r['vicuna_fork_share']:.0%} |",
        f"| Vicuna-80: branches per block | {_opt(r.get('vicuna_branches_per_block'))} |",
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
            f"{r['max_new_tokens']} new tokens; {_machine(e)}.")
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
            f"{_machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def loss_regions_table(r: dict) -> str:
    """The base model's loss per answer region (bench/loss_regions.py)."""
    names = ["serial", "list title", "list body", "opening title line", "title line", "first branch body",
             "sibling body", "added", "all"]
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
    note = (f"\nToken-weighted means (nats/token) under the base model, on the answers of {m['answers']}; excess "
            f"against `{m['reference']}`'s mean ({m['reference_loss']:.3f}). Branches cut mid-sentence by the "
            f"answer's token budget: {', '.join(f'{s} {v}' for s, v in cut.items()) or 'none'}. "
            f"`{m['command']}`; {_machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


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
            f"{r['same_text']} of {r['all']['answers']}; {_cpu(m['environment']['machine'])}, "
            f"{_machine(m['environment'])}.")
    return "\n".join(rows) + "\n" + note


def vicuna_table(summary: dict) -> str:
    """The `aspd bench` run's speed and quality tables (the same rows as its report.md)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from bench import run_report

    m = summary["meta"]
    env = m["environment"]
    qual = [[txt + (" ⚠" if st == "red" else "") for txt, st in r] for r in run_report.quality_rows(summary)]
    sp = m["sampling"]
    decoding = (f"{sp.get('decoding')}, {describe_anti_loop(sp)}, at most "
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
            f"{again} {_machine(e)}.")
    return "\n".join(rows) + "\n" + note


MARKERS = ("engine", "engine-adapter", "formats", "decoding", "programs", "serve", "cluster", "constrained",
           "faults", "data", "adapter", "vicuna", "steered", "drafts",
           "loss-regions")


def markdown_files() -> list[Path]:
    """Where the tables live: the README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relink(table: str, path: Path) -> str:
    """A table's links are written relative to the repository root; make them relative to `path`."""

    def fix(m: re.Match) -> str:
        target = m.group(1)
        if re.match(r"[a-z]+:|/|#", target):
            return m.group(0)
        return "](" + Path(os.path.relpath(ROOT / target, path.parent)).as_posix() + ")"

    return re.sub(r"\]\(([^)\s]+)\)", fix, table)


def replace(text: str, name: str, table: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{table}\n{end}"
    return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def tables() -> dict[str, str]:
    """Every table whose results exist, by marker name."""
    results = ROOT / "bench" / "results"

    def load(path: Path) -> dict:
        return json.loads(path.read_text())

    out = {"engine": engine_table(load(results / "engine.json"))}
    if (results / "engine_adapter.json").exists():
        out["engine-adapter"] = engine_adapter_table(load(results / "engine_adapter.json"))
    if (results / "formats.json").exists():
        adapted = results / "formats_adapter.json"
        out["formats"] = formats_table(load(results / "formats.json"), load(adapted) if adapted.exists() else None)
    if (results / "decoding.json").exists():
        out["decoding"] = decoding_table(load(results / "decoding.json"))
    out["programs"] = programs_table(load(results / "programs.json"))
    if (results / "serve_load.json").exists():
        out["serve"] = serve_table(load(results / "serve_load.json"))
    if (results / "constrained.json").exists():
        out["constrained"] = constrained_table(load(results / "constrained.json"))
    if (results / "serve_cluster.json").exists():
        out["cluster"] = cluster_table(load(results / "serve_cluster.json"))
    if (results / "serve_faults.json").exists():
        out["faults"] = faults_table(load(results / "serve_faults.json"))
    # The data behind the shipped adapter: its build's statistics as `aspd train` recorded them.
    shipped = ROOT / "runtime" / "adapters" / "smollm2-135m-aspd" / "training.json"
    if shipped.exists() and (stats := load(shipped).get("data_stats")):
        out["data"] = data_table(stats)
    if (results / "adapter.json").exists():
        out["adapter"] = adapter_table(load(results / "adapter.json"))
    if (results / "steered_control.json").exists():
        out["steered"] = steered_table(load(results / "steered_control.json"))
    if (results / "loss_regions.json").exists():
        out["loss-regions"] = loss_regions_table(load(results / "loss_regions.json"))
    if (results / "drafts.json").exists():
        out["drafts"] = drafts_table(load(results / "drafts.json"))
    vicuna = results / "vicuna80" / "summary.json"
    if vicuna.exists():
        out["vicuna"] = vicuna_table(load(vicuna))
    return out


def main() -> None:
    texts = {path: path.read_text() for path in markdown_files()}
    placed = {name: [p for p, t in texts.items()
                     if f"<!-- bench:{name}:begin -->" in t and f"<!-- bench:{name}:end -->" in t] for name in MARKERS}
    if missing := [name for name, paths in placed.items() if not paths]:
        raise SystemExit(f"bench/doc_tables.py: no marker block for {', '.join(missing)} in README.md or docs/*.md")
    new = dict(texts)
    for name, table in tables().items():
        for path in placed[name]:
            new[path] = replace(new[path], name, relink(table, path))
    for path, text in new.items():
        if text != texts[path]:
            path.write_text(text)
    for name, paths in placed.items():
        print(f"{name}: " + ", ".join(str(p.relative_to(ROOT)) for p in paths))


if __name__ == "__main__":
    main()
