"""`aspd demo`: a newcomer's first look. With the shipped adapter, the model's own forks against the
same answer decoded serially; without one, a fixed program (serial intro, one explicit fork, serial
conclusion) against the same program with its branches one after another."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.protocol import ParallelBlock, Response
from runtime.sampling import SamplingParams

from .common import UsageError, add_sampling_args, console, load_engine, sampling_from
from .render import render_response, render_stats

DEMO_PROMPT = "What are some tips for learning a new language?"
DEMO_TITLES = ("Exercise", "Sleep", "Diet", "Stress")


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="answer a prompt with parallel branches and time it against serial decoding")
    d.add_argument("--prompt", default=DEMO_PROMPT)
    d.add_argument("--titles", default=",".join(DEMO_TITLES), help="comma-separated branch titles (explicit fork)")
    d.add_argument("--branch-tokens", type=int, default=64)
    add_sampling_args(d)
    d.set_defaults(max_new_tokens=512, func=cmd_demo)


@dataclass(frozen=True)
class DemoRun:
    response: Response  # for display: serial parts and one block whose branches are the items
    answer: str  # the answer exactly as the sequence holds it (seeds and separators included)
    seconds: float
    tokens: int  # generated tokens


def demo_program(eng, prompt: str, titles: Sequence[str], params: SamplingParams, branch_tokens: int,
                 parallel: bool) -> DemoRun:
    """Intro (serial) -> one item per title (parallel fork, or one after another) -> conclusion (serial)."""
    chat = eng.chat_prompt(prompt)
    seq = eng.new_sequence(chat)
    t0 = time.perf_counter()
    intro = f"Here are {len(titles)} of them:\n\n"  # program text, serial
    eng.extend(seq, intro)
    seeds = [f"{'' if i == 0 else chr(10) * 2}{i + 1}. **{t}**:" for i, t in enumerate(titles)]
    branch = params.model_copy(update={"max_branch_tokens": branch_tokens, "max_new_tokens": branch_tokens,
                                       "stop": ("\n\n",)})
    if parallel:
        items = [b.body for b in eng.fork(seq, seeds, branch.model_copy(
            update={"max_new_tokens": branch_tokens * len(seeds)})).response.blocks[0].branches]
    else:
        items = []
        for s in seeds:
            eng.extend(seq, s)
            items.append(eng.generate(seq, branch, "ar").text)
    eng.extend(seq, "\n\nIn conclusion,")
    outro = eng.generate(seq, params.model_copy(update={"max_new_tokens": 48, "stop": ("\n\n",)}), "ar")
    elapsed = time.perf_counter() - t0
    resp = Response(segments=(
        {"text": intro},
        ParallelBlock(branches=tuple({"title": t, "body": b} for t, b in zip(titles, items))),
        {"text": "In conclusion," + outro.text},
    ))
    tokens = outro.completion_tokens + sum(len(eng.encode(b)) for b in items)
    return DemoRun(resp, eng.text(seq)[len(eng.decode(chat)):], elapsed, tokens)


def cmd_demo(args: argparse.Namespace) -> int:
    from runtime.model_loader import DEFAULT_MODEL, resolve_adapter

    titles = [t.strip() for t in args.titles.split(",") if t.strip()]
    if len(titles) < 2:
        raise UsageError("--titles needs at least two comma-separated titles")
    params = sampling_from(args)
    adapter = resolve_adapter(args.model or DEFAULT_MODEL, args.adapter)
    if adapter:
        args.adapter = adapter
    eng = load_engine(args)
    if adapter:  # the model decides where to fork
        seq = eng.new_sequence(eng.chat_prompt(args.prompt))
        out = eng.generate(seq, params, "aspd")
        base = eng.generate(eng.new_sequence(eng.chat_prompt(args.prompt)), params, "ar")
        console.print(render_response(out.response, "ASPD: the model's own forks"))
        # The two answers differ in length: compare the time per answer token, not the totals.
        console.print(render_stats([
            ("ASPD answer", f"{out.total_s:.2f} s, {out.completion_tokens} tokens ({len(out.blocks)} parallel blocks, "
                            f"{out.forward_passes} forward passes)"),
            ("AR answer", f"{base.total_s:.2f} s, {base.completion_tokens} tokens (parallel markup disallowed)"),
            ("speedup per answer token", f"{out.tokens_per_s / base.tokens_per_s:.2f}x "
                                         f"({out.tokens_per_s:.1f} vs {base.tokens_per_s:.1f} tok/s)"),
        ]))
        return 0
    eng.generate(eng.new_sequence("warm up"), SamplingParams(max_new_tokens=2), "ar")
    par = demo_program(eng, args.prompt, titles, params, args.branch_tokens, parallel=True)
    ser = demo_program(eng, args.prompt, titles, params, args.branch_tokens, parallel=False)
    console.print(render_response(par.response, "explicit fork (no ASPD adapter yet): serial intro, "
                                                f"{len(titles)} parallel branches, serial conclusion"))
    note = f"the same program with the branches decoded one after another ({ser.tokens} tokens)"
    console.print(render_stats([
        ("parallel program", f"{par.seconds:.2f} s"),
        ("serial baseline", f"{ser.seconds:.2f} s: {note}"),
        ("speedup", f"{ser.seconds / par.seconds:.2f}x"),
    ]))
    return 0
