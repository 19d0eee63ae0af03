"""The adapter's model card, written from its training record, the data statistics and (once
`bench/adapter.py` has run) the evaluation: every figure in it comes from those files."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.sampling import describe_anti_loop


def write(adapter: Path, evaluation: dict | None = None) -> Path:
    rec = json.loads((adapter / "training.json").read_text())
    cfg, hist, data = rec["config"], rec["history"], rec.get("data_stats") or {}
    losses = hist["losses"]
    tail = losses[-10:]
    lines = [
        "# smollm2-135m-aspd: the ASPD adapter for the embedded SmolLM2-135M-Instruct",
        "",
        "A LoRA adapter plus trained rows for the six ASPD markup tokens that teach the model to write",
        "parallel blocks (`<|title|>T<|/title|>... <|para|> <|branch|>T: ...<|/branch|>... <|/para|>`) where",
        "its answer has independent parts. Loaded by default for the embedded model (`--adapter none` to",
        "run without). Reproduce: `aspd data all && aspd train` (see the project README).",
        "",
        "## Data",
        f"- training samples: {rec['samples']} ({rec['parallel_samples']} parallel, the rest serial answers)",
    ]
    if data:
        steps = data["steps"]
        lines += [
            f"- answers generated: {steps.get('generated')}; not looping: {steps.get('not_looping')}; "
            f"with candidate groups: {steps.get('answers_with_candidates')}",
            f"- groups: {steps.get('candidate_groups')} candidates, {steps.get('roundtrip_groups')} lossless, "
            + (f"{steps.get('independent_groups')} independent (threshold {data['threshold_nats_per_token']} "
               "nats/token)" if data["threshold_nats_per_token"] is not None else "independence check skipped"),
            f"- PPD {data['ppd']:.1%}, parallel degree {data['parallel_degree']:.1%}, "
            f"{data['mean_branches_per_group']} branches per group",
        ]
        if b := data.get("blind"):
            lines.append(f"- branch bodies re-written blind (`aspd data blind`): {b.get('branches_rewritten', 0)} "
                         f"of the {b.get('branches', 0)} branches of {b['blind']} answers")
    lines += [
        "",
        "## Recipe",
        f"- LoRA rank {cfg['rank']}, alpha {cfg['alpha']}, on q/k/v/o/gate/up/down; trainable rows for the six "
        "markup tokens only (tied output layer)",
        f"- AdamW lr {cfg['lr']}, {cfg['epochs']} epoch(s), {cfg['accum']} samples per step, warmup {cfg['warmup']}, "
        f"linear decay, seed {cfg['seed']}; {rec.get('dtype', 'bfloat16')} on CPU",
        "- loss on the whole answer with markup except engine-fed tokens (branch seeds, `<|/para|>`); the",
        "  protocol's branch-isolating mask and position ids, built by the engine's own code",
        *([f"- anchored: on serial answers {cfg.get('anchor', 0):.0%} of each token's loss is the KL to the base "
           "model (adapter off, markup removed), which keeps the adapter's text near the base model's"
           + (f"; on answers with a block {float(cfg['anchor_branches']):.0%} of each loss on their branch bodies "
              "past their restated titles, the base model reading each body alone after the text before its block"
              if cfg.get("anchor_branches") and cfg.get("anchor_blind") else
              f"; on answers with a block {float(cfg['anchor_branches']):.0%} of each loss on their text (branch "
              "bodies past their restated titles included), the base model reading the joined answer"
              if cfg.get("anchor_branches") else "")]
          if cfg.get("anchor") or cfg.get("anchor_branches") else []),
        f"- {hist['step']} optimizer steps in {hist['seconds'] / 60:.0f} min; loss {losses[0]:.3f} at the first step, "
        f"{sum(tail) / len(tail):.3f} over the last {len(tail)} (curve: `loss.png`)",
    ]
    if rec.get("stage1"):
        c1, h1 = rec["stage1"]["config"], rec["stage1"]["history"]
        l1 = h1["losses"]
        lines += [
            f"- staged. Stage 1: lr {c1['lr']}, {c1['epochs']} epoch(s), {h1['step']} steps in "
            f"{h1['seconds'] / 60:.0f} min, loss {l1[0]:.3f} -> {sum(l1[-10:]) / len(l1[-10:]):.3f} "
            f"(markup rows at lr {c1.get('token_lr')}, markup tokens weighted x{c1.get('markup_weight')}).",
            f"  Each later stage started from the previous one's adapter; the last (the "
            f"figures above{', a family-balanced draw' if rec.get('balanced') else ''}) with markup rows at "
            f"lr {cfg.get('token_lr')}, markup tokens weighted x{cfg.get('markup_weight')})",
        ]
    if evaluation:
        e = evaluation
        lines += [
            "",
            f"## Evaluation (`bench/adapter.py`, greedy, {describe_anti_loop(e)})",
            f"- fork threshold: `<|title|>` logit offset {threshold(e)}, fitted by `aspd calibrate` "
            "on prompts the adapter never saw (`aspd_calibration.json`)",
            f"- held-out split: forks on {e['fork_rate_listlike']:.0%} of list-like prompts and "
            f"{e['fork_rate_other']:.0%} of the others; {e['wellformed_rate']:.0%} of outputs well-formed",
            f"- Vicuna-80 ({e['vicuna_questions']} questions, `aspd bench`): {e['vicuna_fork_share']:.0%} of answers "
            "forked; "
            f"latency speedup ASPD/AR mean "
            f"{e['vicuna_mean_speedup']:.2f}x, median {e['vicuna_median_speedup']:.2f}x, max "
            f"{e['vicuna_max_speedup']:.2f}x",
            f"- quality proxies against the base model's AR answers: MiniLM cosine {e['cosine_aspd_vs_base_ar']:.3f} "
            f"(the adapter's own AR answers: {e['cosine_ar_vs_base_ar']:.3f}); the base model's loss on ASPD "
            f"answers {e['loss_base_on_aspd']:.3f}, on the adapter's AR answers {e['loss_base_on_ar']:.3f}, on its "
            f"own {e['loss_base_on_base_ar']:.3f} nats/token",
        ]
    lines += ["", "Base model: SmolLM2-135M-Instruct (Apache-2.0). Adapter: Apache-2.0.", ""]
    path = adapter / "README.md"
    path.write_text("\n".join(lines))
    return path


def threshold(e: dict) -> str:
    """The fork offsets an evaluation ran with: the fork gate's range for chat answers, if any."""
    g = e.get("gate")
    one = f"{e.get('fork_bias', 0.0):+.2f}"
    return f"{g['low']:+.2f} .. {g['high']:+.2f} by the fork gate for chat answers ({one} elsewhere)" if g else one
