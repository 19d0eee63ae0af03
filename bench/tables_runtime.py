"""The runtime's benchmark tables (engine, formats, programs, serving, constrained decoding, cluster,
faults) as `bench/doc_tables.py` writes them into README.md and docs/, and the machine notes every table
carries."""

from __future__ import annotations


def cpu(m: dict) -> str:
    """A benchmark machine's CPU and the flags that decide its matmul kernels."""
    flags = " ".join(x for x in m["flags"] if x.startswith(("avx512_bf16", "avx512f", "avx2", "amx")))
    return f"{m['cpu']}; {flags or 'no AVX2'}"


def machine(e: dict) -> str:
    """Where and when a benchmark ran, as its table's note says it."""
    return f"{e['machine']['cores']} cores, torch {e['versions']['torch']}, {e['date']}"


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
    note = (f"\n{r['model']}, {m['cores']} cores ({cpu(m)}), torch {v['torch']}, "
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
                              f"cores ({cpu(r['machine'])}), torch {r['versions']['torch']}, {r['date']}.")


def formats_table(base: dict, adapted: dict | None) -> str:
    rows = ["| model | format | weights read per step | greedy identical to float32 (128 tokens) | "
            "mean tokens before the first difference | loss on the base model's answers | delta |",
            "|---|---|---|---|---|---|---|"]
    for r, label in ((base, "base"), (adapted, "with the shipped adapter")):
        for name, f in (r or {}).get("formats", {}).items():
            rows.append(f"| {label} | `{name}` | {f['weight_mb']:.0f} MB | {f['greedy_identical']:.0%} | "
                        f"{f['greedy_first_difference_mean']:.1f} | {f['loss']:.4f} | {f['loss_delta_pct']:+.2f}% |")
    where = "; ".join(f"{label}: {cpu(r['machine'])}, {r['date']}"
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
            f"one core each when two (cores are the bound on this machine); {machine(r['environment'])}.")
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
            f"{machine(r['environment'])}.")
    return "\n".join(rows) + "\n" + note
