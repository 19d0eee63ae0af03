"""`aspd` command line: generate, demo, run (aspd_lang programs) and serve (the HTTP server)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from pydantic import ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .protocol import ParallelBlock, ProtocolError, Response
from .sampling import SamplingParams, anti_loop_args, anti_loop_from

console = Console()
err = Console(stderr=True)

DEMO_PROMPT = "What are some tips for learning a new language?"
DEMO_TITLES = ("Exercise", "Sleep", "Diet", "Stress")


class UsageError(ValueError):
    """Bad command-line input."""


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    anti_loop_args(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model", default=None, help="HF causal-LM directory or id (default: the embedded SmolLM2-135M)")
    p.add_argument("--adapter", default="auto",
                   help="ASPD adapter directory (PEFT); default: the shipped one for the embedded model; none: without")
    _dtype_arg(p)
    _attention_arg(p)


def _dtype_arg(p: argparse.ArgumentParser) -> None:
    from .weight_format import DTYPES

    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weight format: auto (default: the fastest on this machine, measured once and cached), "
                   "bfloat16, float32, int8 or int4 (weight-only)")


def _attention_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", choices=("auto", "sdpa", "flashinfer", "cascade"), default="auto",
                   help="attention backend: auto (FlashInfer's cascade on CUDA when installed, else SDPA)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aspd", description="Adaptive serial-parallel decoding")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="answer a prompt, forking where the model decides")
    g.add_argument("prompt")
    g.add_argument("--mode", choices=("aspd", "ar"), default="aspd")
    g.add_argument("--raw", action="store_true", help="no chat template")
    g.add_argument("--json", action="store_true", help="print the structured result as JSON")
    _sampling_args(g)
    d = sub.add_parser("demo", help="answer a prompt with parallel branches and time it against serial decoding")
    d.add_argument("--prompt", default=DEMO_PROMPT)
    d.add_argument("--titles", default=",".join(DEMO_TITLES), help="comma-separated branch titles (explicit fork)")
    d.add_argument("--branch-tokens", type=int, default=64)
    _sampling_args(d)
    d.set_defaults(max_new_tokens=512)
    from aspd_lang.cli_run import add_parser

    add_parser(sub, _sampling_args)
    from bench.cli import add_parser as add_bench
    from training.cli import add_parsers

    add_parsers(sub)
    add_bench(sub)
    sv = sub.add_parser("serve", help="serve the model over SGLang's and OpenAI's HTTP APIs")
    sv.add_argument("--model", default=None, help="HF causal-LM directory or id (default: the embedded SmolLM2-135M)")
    sv.add_argument("--adapter", default="auto", help="ASPD adapter (PEFT dir), auto (default) or none")
    _dtype_arg(sv)
    _attention_arg(sv)
    sv.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    sv.add_argument("--port", type=int, default=30000)
    sv.add_argument("--max-running", type=int, default=16, help="requests decoded together (one forward per step)")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get 429")
    sv.add_argument("--cache-tokens", type=int, default=32768, help="radix prefix cache budget; 0 turns it off")
    sv.add_argument("--max-sessions", type=int, default=256, help="held rid sessions (for joins), LRU")
    sv.add_argument("--session-tokens", type=int, default=32768, help="tokens of KV the held sessions may keep, LRU")
    sv.add_argument("--prefill-chunk", type=int, default=128,
                    help="prompt tokens per forward (long prompts interleave with running decodes)")
    sv.add_argument("--prefill-share", type=float, default=0.3,
                    help="while others decode, the share of time prompt chunks may take (0-1]")
    sv.add_argument("--api-key", action="append", default=None,
                    help="require 'Authorization: Bearer KEY' on every route but /health; repeat for several "
                    "clients, each with its own rids (env ASPD_API_KEY, comma-separated)")
    sv.add_argument("--allowed-hosts", default="", help="comma-separated Host names accepted "
                    "(default: loopback names when bound to loopback, any otherwise)")
    sv.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="larger request bodies get 413")
    anti_loop_args(sv)  # for requests that set none (SGLang's frontend never does)
    return ap


def sampling_from(args: argparse.Namespace, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, **anti_loop_from(args), **extra)


def load_engine(args: argparse.Namespace):
    import torch
    from transformers.utils import logging as hf_logging

    from .engine import Engine
    from .model_loader import DEFAULT_MODEL, load

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with console.status("loading model..."):
        return Engine(load(args.model or DEFAULT_MODEL, dtype=args.dtype, adapter=args.adapter),
                      attention=args.attention)


# --------------------------------------------------------------------------- rendering


def render_response(resp: Response, title: str) -> Panel:
    parts = []
    for seg in resp.segments:
        if isinstance(seg, ParallelBlock):
            t = Table(title=f"parallel block: {len(seg.branches)} branches decoded together", expand=True,
                      title_style="bold magenta", show_lines=True)
            for b in seg.branches:
                t.add_column(b.title.strip() or "branch", ratio=1)
            t.add_row(*(Text(b.text.strip()) for b in seg.branches))
            parts.append(t)
        else:
            parts.append(Panel(Text(seg.text.strip()), title="serial", title_align="left", border_style="cyan"))
    return Panel(Group(*parts), title=title, border_style="green")


def render_stats(rows: Seq[tuple[str, object]]) -> Table:
    t = Table(show_header=False, box=None)
    for k, v in rows:
        t.add_row(Text(k, style="bold"), str(v))
    return t


# --------------------------------------------------------------------------- commands


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


@dataclass(frozen=True)
class DemoRun:
    response: Response  # for display: serial parts and one block whose branches are the items
    answer: str  # the answer exactly as the sequence holds it (seeds and separators included)
    seconds: float
    tokens: int  # generated tokens


def demo_program(eng, prompt: str, titles: Seq[str], params: SamplingParams, branch_tokens: int,
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
    from .model_loader import DEFAULT_MODEL, resolve_adapter

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
    else:
        eng.generate(eng.new_sequence("warm up"), SamplingParams(max_new_tokens=2), "ar")
        par = demo_program(eng, args.prompt, titles, params, args.branch_tokens, parallel=True)
        ser = demo_program(eng, args.prompt, titles, params, args.branch_tokens, parallel=False)
        par_s, ser_s = par.seconds, ser.seconds
        console.print(render_response(par.response, "explicit fork (no ASPD adapter yet): serial intro, "
                                            f"{len(titles)} parallel branches, serial conclusion"))
        note = f"the same program with the branches decoded one after another ({ser.tokens} tokens)"
    console.print(render_stats([
        ("parallel program", f"{par_s:.2f} s"),
        ("serial baseline", f"{ser_s:.2f} s: {note}"),
        ("speedup", f"{ser_s / par_s:.2f}x"),
    ]))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from .guard import Access
    from .server import create_app
    from .serving import ServeConfig, ServingLoop

    if min(args.max_queue, args.cache_tokens, args.max_sessions, args.session_tokens) < 0 or \
            min(args.max_running, args.prefill_chunk) < 1 or not 0 < args.prefill_share <= 1:
        raise UsageError("--max-running and --prefill-chunk must be >= 1, --prefill-share in (0, 1]; --max-queue, "
                         "--cache-tokens, --max-sessions and --session-tokens >= 0")
    eng = load_engine(args)
    loop = ServingLoop(eng, ServeConfig(max_running=args.max_running, max_waiting=args.max_queue,
                                        cache_tokens=args.cache_tokens, max_sessions=args.max_sessions,
                                        session_tokens=args.session_tokens,
                                        prefill_chunk=args.prefill_chunk,
                                        prefill_share=args.prefill_share)).start()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    err.print(f"aspd serve: {eng.loaded.name} on http://{args.host}:{args.port} "
              f"(max running {args.max_running}, queue {args.max_queue}, prefix cache {args.cache_tokens} tokens)")
    try:
        keys = tuple(args.api_key or [k for k in os.environ.get("ASPD_API_KEY", "").split(",") if k])
        access = Access.for_bind(args.host, keys, tuple(h for h in args.allowed_hosts.split(",") if h),
                                 args.max_body_bytes)
        app = create_app(loop, eng.loaded.name, SamplingParams(**anti_loop_from(args)), access)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        loop.stop()
    return 0


def main(argv: Seq[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of waiting on the network
    args = parser().parse_args(argv)
    from aspd_lang.cli_run import cmd_run
    from aspd_lang.ir import ProgramError
    from aspd_lang.native_backend import BackendError
    from bench.cli import cmd_bench
    from bench.harness import BenchError
    from bench.questions import QuestionsError
    from training.calibrate import CalibrationError
    from training.cli import cmd_calibrate, cmd_data, cmd_train

    from .attention import AttentionUnavailable
    from .engine import EngineError
    from .model_loader import ModelLoadError

    commands = {"generate": cmd_generate, "demo": cmd_demo, "serve": cmd_serve,
                "data": lambda a: cmd_data(a, console), "train": lambda a: cmd_train(a, console),
                "calibrate": lambda a: cmd_calibrate(a, console), "bench": lambda a: cmd_bench(a, console),
                "run": lambda a: cmd_run(a, console, load_engine, sampling_from)}
    try:
        return commands[args.cmd](args)
    except ValidationError as e:
        first = e.errors()[0]
        err.print(f"[red]error:[/] invalid sampling parameter {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except (ModelLoadError, EngineError, ProtocolError, UsageError, ProgramError, BackendError, BenchError,
            QuestionsError, AttentionUnavailable, CalibrationError) as e:
        err.print(f"[red]error:[/] {e}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
