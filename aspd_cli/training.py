"""`aspd data ...`, `aspd train`, `aspd calibrate`: reproduce the shipped adapter from scratch.

    aspd data all              # prompts -> the base model's answers -> extraction + validation
    aspd train                 # LoRA + markup rows on data/aspd/dataset.jsonl -> the shipped adapter
    aspd calibrate             # the adapter's fork threshold, on the calibration split

The training data lives in `training.prompts.DATA`, the adapter in `runtime.model_loader.SHIPPED_ADAPTER`.
Models load in `model_loader.training_dtype()` where the float model is what runs (training, the
independence check: bfloat16 where the hardware computes in it, else float32), in `auto` where the
engine decodes (answers, calibration).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.sampling import anti_loop_args, anti_loop_from
from training.prompts import DATA

from .common import UsageError, add_model_args, console, load_model


def add_parsers(sub) -> None:
    d = sub.add_parser("data", help="build the ASPD training data (prompts, answers, extraction, validation)")
    d.add_argument("step", choices=("prompts", "responses", "build", "all", "blind"),
                   help="blind: re-write a build's branch bodies blind (data v4, `training/blind.py`)")
    d.add_argument("--out", type=Path, default=DATA)
    add_model_args(d, adapter=False, dtype=False, attention=False)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int, default=None, help="answer only the first N training prompts")
    d.add_argument("--batch", type=int, default=32, help="answers decoded together")
    d.add_argument("--threshold", type=float, default=None, help="independence threshold (nats/token)")
    d.add_argument("--no-independence", action="store_true", help="skip the model's independence check")
    d.add_argument("--judge-url", default=None, help="optional LLM judge: an OpenAI-compatible server")
    d.add_argument("--judge-model", default="default")
    d.add_argument("--own-intro", action="store_true",
                   help="responses: list-like answers open with the model's own first line, then the list")
    d.add_argument("--kind", choices=("listlike", "other"), default=None, help="responses: only prompts of this kind")
    d.add_argument("--prompts", type=Path, default=None, help="the folder with prompts_train.jsonl (default: --out)")
    d.add_argument("--source", type=Path, default=None, help="blind: the build to re-write (its dataset.jsonl)")
    d.add_argument("--first-draw", type=int, default=None, metavar="N",
                   help="blind: first the rows of `aspd train --balance --seed SEED --max-samples N`'s draw "
                        "(at --serial-ratio 1)")
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("train", help="fine-tune the ASPD adapter (LoRA + the six markup token rows)")
    t.add_argument("--data", type=Path, default=DATA)
    t.add_argument("--out", type=Path, default=None, help="default: the shipped adapter's directory")
    add_model_args(t, adapter=False, dtype=False, attention=False)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--accum", type=int, default=8, help="samples per optimizer step")
    t.add_argument("--batch", type=int, default=4, help="samples per forward (padded, similar lengths)")
    t.add_argument("--serial-ratio", type=float, default=1.0, help="serial samples per parallel sample")
    t.add_argument("--max-samples", type=int, default=None)
    t.add_argument("--balance", action="store_true",
                   help="draw samples round-robin over prompt families (small families weigh as much as big ones)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--token-lr", type=float, default=None, help="learning rate of the markup rows")
    t.add_argument("--markup-weight", type=float, default=1.0, help="loss weight of markup tokens")
    t.add_argument("--anchor", type=float, default=0.0,
                   help="on serial answers, the share of the loss that is the KL to the base model (0: none)")
    t.add_argument("--anchor-branches", type=float, default=0.0, metavar="W",
                   help="on answers with a block, the share of the loss that is the KL to the base model reading "
                        "the joined text, branch bodies included (0: none)")
    t.add_argument("--anchor-blind", action="store_true",
                   help="with --anchor-branches: anchor only the branch bodies, each to the base model reading it "
                        "alone after the text before its block, as the branch is decoded")
    t.add_argument("--init", type=Path, default=None,
                   help="start from this adapter (a second stage): a checkpoint's state.pt or an adapter directory")
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("calibrate", help="fit the adapter's fork threshold on the calibration split")
    c.add_argument("--adapter", type=Path, default=None, help="the adapter to calibrate (default: the shipped one)")
    c.add_argument("--data", type=Path, default=DATA)
    add_model_args(c, adapter=False, dtype=False, attention=False)
    c.add_argument("--per-kind", type=int, default=60, help="prompts of each kind (list-like, other)")
    c.add_argument("--target", type=float, default=0.10, help="highest fork rate allowed on non-list prompts")
    c.add_argument("--margin", type=float, default=0.0,
                   help="score gate offsets with list-like prompts this much lower, the others this much higher")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--no-gate", dest="gate", action="store_false",
                   help="no fork gate: one offset for every answer (the gate is fitted on the training prompts' kinds)")
    anti_loop_args(c)
    c.set_defaults(func=cmd_calibrate)


def _shipped_adapter() -> Path:
    from runtime.model_loader import SHIPPED_ADAPTER

    return SHIPPED_ADAPTER


def cmd_data(args: argparse.Namespace) -> int:
    from training import prompts

    out: Path = args.out
    if args.step == "blind":
        return _blind(args)
    if args.step in ("prompts", "all"):
        counts = prompts.write(out, seed=args.seed)
        console.print(f"prompts: {counts} -> {out}")
    if args.step in ("responses", "all"):
        from runtime.engine import Engine
        from training.responses import generate

        source = (args.prompts or out) / "prompts_train.jsonl"
        if not source.is_file():
            raise UsageError(f"no {source}: run `aspd data prompts` first, or name its folder with --prompts")
        todo = [p for p in prompts.read(source)[:args.limit] if args.kind in (None, p.kind)]
        out.mkdir(parents=True, exist_ok=True)
        generate(Engine(load_model(args.model, adapter="none")), todo, out / "responses.jsonl", batch=args.batch,
                 own_intro=args.own_intro)
    if args.step in ("build", "all"):
        from runtime.model_loader import training_dtype
        from training.dataset import make, stats_table
        from training.group_judge import Judge
        from training.independence import THRESHOLD

        judge = Judge(args.judge_url, args.judge_model) if args.judge_url else None
        threshold = None if args.no_independence else args.threshold or THRESHOLD
        stats = make(load_model(args.model, dtype=training_dtype(), adapter="none"), out / "responses.jsonl", out,
                     threshold=threshold, judge=judge, log=console.print)
        console.print(stats_table(stats))
        console.print(f"wrote {out / 'dataset.jsonl'} and {out / 'data_stats.json'}")
    return 0


def _blind(args: argparse.Namespace) -> int:
    from runtime.engine import Engine
    from training import blind
    from training.dataset import draw, read

    if args.source is None or not (args.source / "dataset.jsonl").is_file():
        raise UsageError("blind needs --source DIR holding a build's dataset.jsonl (e.g. data/aspd_v3)")
    if args.source.resolve() == args.out.resolve():
        raise UsageError("blind writes a new build: --out must differ from --source")
    if args.first_draw is not None and args.first_draw < 1:
        raise UsageError("--first-draw N: the size of a training draw, at least 1")
    rows = read(args.source / "dataset.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if r["parallel"]]
    if args.first_draw:  # the rows a training run will read first, so a partial build already serves it
        first = {r["id"] for r in draw(rows, args.seed, args.first_draw, balance=True)}
        todo.sort(key=lambda r: r["id"] not in first)
    todo = todo[:args.limit]  # --limit: the first N parallel answers
    blind.generate(Engine(load_model(args.model, adapter="none")), todo, args.out / "blind.jsonl", batch=args.batch,
                   log=console.print)
    source_stats = args.source / "data_stats.json"
    stats = blind.assemble(rows, args.out / "blind.jsonl", args.out,
                           json.loads(source_stats.read_text()) if source_stats.exists() else None)
    console.print(f"wrote {args.out / 'dataset.jsonl'}: {stats}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if not (0 <= args.anchor <= 1 and 0 <= args.anchor_branches <= 1):
        raise UsageError("--anchor and --anchor-branches are shares of the loss: between 0 and 1")
    if args.anchor_blind and not args.anchor_branches:
        raise UsageError("--anchor-blind needs --anchor-branches W > 0 (the share it anchors)")
    from runtime import protocol as P
    from runtime.model_loader import training_dtype
    from training.card import write
    from training.dataset import chat_ids, draw, read
    from training.samples import build
    from training.train import TrainConfig, save_adapter, train

    out = args.out or _shipped_adapter()
    dtype = training_dtype()
    loaded = load_model(args.model, dtype=dtype, adapter="none")
    tok = loaded.tokenizer
    chosen = draw(read(args.data / "dataset.jsonl"), args.seed, args.max_samples, args.balance, args.serial_ratio)
    eos = tok.eos_token_id

    def enc(t: str) -> list[int]:
        return tok.encode(t, add_special_tokens=False)

    samples = [build(chat_ids(tok, r["prompt"]), P.parse(r["markup"]), enc, loaded.ids, eos if r["complete"] else None)
               for r in chosen]
    cfg = TrainConfig(rank=args.rank, lr=args.lr, epochs=args.epochs, accum=args.accum, batch=args.batch,
                      seed=args.seed, token_lr=args.token_lr, markup_weight=args.markup_weight,
                      anchor=args.anchor, anchor_branches=args.anchor_branches, anchor_blind=args.anchor_blind)
    init = None if args.init is None else _adapter_state(args.init)
    parallel = sum(r["parallel"] for r in chosen)
    console.print(f"training on {len(samples)} samples ({parallel} parallel) in {dtype}, {cfg}")
    ckpt = args.data / ("checkpoint" if init is None else "checkpoint-stage2")
    pm, hist = train(loaded.model, loaded.ids, samples, ckpt, cfg, log=console.print, init=init)
    stats_path = args.data / "data_stats.json"
    previous = out / "training.json"
    stage1 = None
    if init is not None and previous.exists():  # a second stage: keep the first stage's record
        rec = json.loads(previous.read_text())
        stage1 = rec.get("stage1") or {"config": rec["config"], "history": rec["history"]}
    extra = {"stage1": stage1, "samples": len(samples), "balanced": args.balance, "dtype": dtype,
             "parallel_samples": parallel,
             "data_stats": json.loads(stats_path.read_text()) if stats_path.exists() else None}
    save_adapter(pm, out, hist, cfg, extra)
    write(out)
    console.print(f"adapter saved to {out} (final loss {hist.losses[-1]:.3f})")
    return 0


def _adapter_state(path: Path) -> dict:
    """An adapter's trained tensors, from a checkpoint (`state.pt`) or a saved adapter directory."""
    import torch

    if path.is_dir():
        from peft.utils import load_peft_weights

        return {k: v.float() for k, v in load_peft_weights(str(path), device="cpu").items()}
    return torch.load(path, weights_only=False)["adapter"]


def cmd_calibrate(args: argparse.Namespace) -> int:
    from runtime.engine import Engine
    from runtime.sampling import SamplingParams
    from training import calibrate
    from training.dataset import read

    adapter = args.adapter or _shipped_adapter()
    rows = read(args.data / "dataset.jsonl")
    trained_on = {r["prompt"] for r in rows}
    train = [json.loads(x) for x in (args.data / "prompts_calib.jsonl").read_text().splitlines()]
    texts, kinds = calibrate.calibration_prompts(train, trained_on, args.per_kind)
    loaded = load_model(args.model, dtype="auto", adapter=str(adapter))
    probs = record = None
    if args.gate:  # before the engine: beside it, transformers' forward (the features) ran at half speed
        from training.gate import probabilities, train_gate

        gate_rows = [json.loads(x) for x in (args.data / "prompts_train.jsonl").read_text().splitlines()]
        record = train_gate(loaded, [r["text"] for r in gate_rows], [r["kind"] for r in gate_rows], log=console.print)
        probs = probabilities(loaded, texts, record)
    eng = Engine(loaded)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, **anti_loop_from(args))
    console.print(f"calibrating the fork bias of {adapter} on {len(texts)} calibration prompts")
    points, thresholds = calibrate.sweep(eng, texts, kinds, params, log=console.print)
    chosen = calibrate.choose(points, args.target)
    gate = None if probs is None else calibrate.choose_gate(thresholds, probs, kinds, args.target, margin=args.margin)
    path = calibrate.write(adapter, chosen, points, {
        "target_other": args.target, "margin": args.margin, "prompts_per_kind": args.per_kind,
        "max_new_tokens": args.max_new_tokens,
        **params.anti_loop, "decoding": "greedy"}, gate, record,
        [{"kind": k, "forks_at": t.forks_at, "not_at": t.not_at, "gate": None if p is None else round(p, 4)}
         for k, t, p in zip(kinds, thresholds, probs or [None] * len(kinds))])
    console.print(f"fork bias {chosen.bias:+.1f} (list-like {chosen.fork_rate['listlike']:.0%}, "
                  f"other {chosen.fork_rate['other']:.0%}) -> {path}")
    if gate is not None:
        console.print(f"gate offsets {gate.low:+.1f} .. {gate.high:+.1f} (predicted list-like "
                      f"{gate.fork_rate['listlike']:.0%}, other {gate.fork_rate['other']:.0%})")
    return 0
