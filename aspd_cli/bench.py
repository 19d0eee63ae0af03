"""`aspd bench`: speed and quality of several systems side by side on a question set.

    aspd bench                                   # Vicuna-80, hf,ar,aspd,sot -> bench/results/vicuna80/
    aspd bench --limit 5 --systems ar,aspd       # a quick look
    aspd bench --systems ar,aspd,sglang@http://127.0.0.1:30000 --judge-url http://judge:8000
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import bench
from bench.questions import VICUNA80
from runtime.sampling import anti_loop_args, anti_loop_from, structure_args, structure_from

from .common import add_model_args, console, load_model

RESULTS = Path(bench.__file__).resolve().parent / "results"


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmark hf / ar / aspd / sot / a server side by side on a question set")
    b.add_argument("--questions", type=Path, default=VICUNA80, help="FastChat question.jsonl (default: Vicuna-80)")
    b.add_argument("--systems", default="hf,ar,aspd,sot", help="comma-separated: hf, ar, aspd, sot, sglang@URL")
    b.add_argument("--max-new-tokens", type=int, default=256)
    b.add_argument("--limit", type=int, default=None, help="only the first K questions")
    b.add_argument("--out", type=Path, default=None,
                   help="default: bench/results/<questions file's folder>[-first<K> with --limit]")
    b.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for FastChat's 1-10 grading")
    b.add_argument("--judge-model", default="default")
    add_model_args(b, attention=False,
                   dtype_help="the engine's weight format (ar, aspd, sot); hf runs the format's float model")
    anti_loop_args(b)
    structure_args(b)
    b.add_argument("--temperature", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=None, help="sampling seed (recorded; greedy ignores it)")
    b.set_defaults(func=cmd_bench)


def _in_repo(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    root, path = RESULTS.parents[1], path.resolve()
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def cmd_bench(args: argparse.Namespace) -> int:
    from bench import harness, questions
    from runtime.engine import Engine
    from runtime.model_loader import DEFAULT_MODEL, resolve_adapter
    from runtime.sampling import SamplingParams

    names = harness.parse_systems(args.systems)
    qs = questions.load(args.questions)[:args.limit]
    name = args.questions.resolve().parent.name
    # a partial run never overwrites the full run's report
    out = args.out or RESULTS / (name if args.limit is None else f"{name}-first{args.limit}")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                            **anti_loop_from(args), **structure_from(args))
    model = args.model or DEFAULT_MODEL
    adapter = resolve_adapter(model, args.adapter)
    base = load_model(model, dtype=args.dtype, adapter="none")
    tuned = load_model(model, dtype=args.dtype, adapter=adapter) if adapter else base
    sampling = (params.model_dump(exclude_defaults=True) | params.anti_loop
                | {"decoding": "greedy" if params.greedy else "sampled"})
    meta = {"questions": _in_repo(args.questions), "command": "aspd " + shlex.join(sys.argv[1:]), "model": model,
            "adapter": adapter and _in_repo(Path(adapter)), "fork_bias": tuned.fork_bias,
            "gate": tuned.gate.offsets() if tuned.gate else None, "sampling": sampling}
    base_engine = Engine(base)
    models = harness.Models(base_engine, Engine(tuned) if tuned is not base else base_engine)
    harness.run(qs, names, models, params, out, meta, console,
                judge_url=args.judge_url, judge_model=args.judge_model)
    return 0
