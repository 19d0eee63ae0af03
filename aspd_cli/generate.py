"""`aspd generate PROMPT`: answer a prompt, forking where the model decides."""

from __future__ import annotations

import argparse
import json

from .common import add_sampling_args, console, load_engine, sampling_from
from .render import render_response, render_stats


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="answer a prompt, forking where the model decides")
    g.add_argument("prompt")
    g.add_argument("--mode", choices=("aspd", "ar"), default="aspd")
    g.add_argument("--raw", action="store_true", help="no chat template")
    g.add_argument("--json", action="store_true", help="print the structured result as JSON")
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    params = sampling_from(args)
    eng = load_engine(args)
    prompt = args.prompt if args.raw else eng.chat_prompt(args.prompt)
    seq = eng.new_sequence(prompt)
    out = eng.generate(seq, params, args.mode)
    if args.json:
        print(json.dumps(out.model_dump(mode="json"), indent=2))
        return 0
    console.print(render_response(out.response, f"aspd generate ({args.mode})"))
    console.print(render_stats([
        ("finish", out.finish_reason), ("prompt tokens", out.prompt_tokens),
        ("tokens", f"{out.completion_tokens} ({out.serial_tokens} serial, {out.parallel_tokens} in branches)"),
        ("parallel blocks", len(out.blocks)), ("forward passes", out.forward_passes),
        ("time", f"{out.total_s:.2f} s ({out.tokens_per_s:.1f} tok/s, first token {out.ttft_s * 1000:.0f} ms)"),
    ]))
    return 0
