"""`aspd run PROGRAM.py`: run an aspd_lang program file on a backend, render it with rich (roles,
parallel blocks as tables, variables) and time it against the same program with `--serial`."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from aspd_lang import ir

from .common import UsageError, add_sampling_args, console, load_engine, sampling_from
from .serve import DEFAULT_URL

if TYPE_CHECKING:
    from aspd_lang.executor import RunResult
    from aspd_lang.runner import Piece


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run an aspd_lang program file (parallel blocks vs. --serial)")
    r.add_argument("file", help="a program file, e.g. programs/tips.py")
    r.add_argument("--arg", action="append", default=[], metavar="K=V",
                   help="program argument (repeatable): a string, or JSON (a list, object or number)")
    r.add_argument("--backend", choices=("engine", "native", "sglang"), default="native",
                   help="engine: IR on the in-process engine; native: SGLang interpreter on the in-process "
                        "engine (default); sglang: SGLang interpreter against --url")
    r.add_argument("--url", default=DEFAULT_URL, help="SGLang-compatible server for --backend sglang")
    r.add_argument("--serial", action="store_true", help="run parallel blocks one branch after another")
    r.add_argument("--no-compare", action="store_true", help="skip the --serial baseline run")
    r.add_argument("--json", action="store_true", help="print the results as JSON")
    add_sampling_args(r)
    r.set_defaults(func=cmd_run)


def _kv(items: list[str]) -> dict[str, Any]:
    """`--arg K=V`: V is a string, or a JSON list, object or number (`--arg cities='["Lima", "Oslo"]'`);
    a JSON string (`--arg n='"12"'`) keeps digits text."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--arg needs K=V, got {item!r}")
        out[k.strip()] = _value(v)
    return out


def _value(v: str) -> Any:
    try:
        parsed = json.loads(v)
    except ValueError:
        return v
    return parsed if isinstance(parsed, list | dict | int | float | str) and not isinstance(parsed, bool) else v


def render(name: str, prog: ir.Program, res: RunResult) -> Panel:
    from aspd_lang.runner import display_pieces

    parts = [_piece(p) for p in display_pieces(prog, res)]
    title = f"{name} on {res.backend}{' (serial)' if res.serial else ''}"
    return Panel(Group(*parts), title=title, border_style="green")


def _piece(p: Piece):
    if p.kind == "role":
        return Rule(p.text, style="dim", align="left")
    if p.kind == "parallel":
        t = Table(title=f"parallel block: {len(p.branches)} branches", title_style="bold magenta", expand=True,
                  show_lines=True)
        for title in p.titles:
            t.add_column(title, ratio=1)
        t.add_row(*(Text(b.strip()) for b in p.branches))
        return t
    return Text(p.text.strip())


def _stats(res: RunResult, base: RunResult | None) -> Table:
    t = Table(show_header=False, box=None)
    rate = res.completion_tokens / res.seconds if res.seconds else 0.0
    t.add_row(Text("tokens", style="bold"), f"{res.completion_tokens} generated, {rate:.1f} tok/s")
    t.add_row(Text("time", style="bold"), f"{res.seconds:.2f} s")
    if base is not None:
        t.add_row(Text("serial baseline", style="bold"), f"{base.seconds:.2f} s (same program, branches one by one)")
        t.add_row(Text("speedup", style="bold"), f"{base.seconds / res.seconds:.2f}x")
    vars_ = {k: v for k, v in res.variables.items() if k not in ("question",)}
    t.add_row(Text("variables", style="bold"), ", ".join(f"{k}={clip(v)}" for k, v in vars_.items()))
    return t


def clip(value: Any, width: int = 60) -> str:
    """A value as shown in the stats: whole up to `width` characters, else cut with an explicit
    ellipsis and its full length (`--json` has every value whole)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= width:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:width]!r}… ({len(text)} chars)"


def summary(results: list[tuple[RunResult, RunResult | None]]) -> Table:
    """A batch: one row per run and the totals (tokens, time, throughput)."""
    t = Table(title=f"batch: {len(results)} runs", title_style="bold")
    for col in ("#", "tokens", "time (s)", "tok/s", "serial (s)", "speedup"):
        t.add_column(col, justify="right")
    for i, (r, b) in enumerate(results, start=1):
        t.add_row(str(i), str(r.completion_tokens), f"{r.seconds:.2f}",
                  f"{r.completion_tokens / r.seconds:.1f}" if r.seconds else "-",
                  f"{b.seconds:.2f}" if b else "-", f"{b.seconds / r.seconds:.2f}x" if b and r.seconds else "-")
    tokens, secs = sum(r.completion_tokens for r, _ in results), sum(r.seconds for r, _ in results)
    bases = [b for _, b in results if b]
    base = sum(b.seconds for b in bases) if len(bases) == len(results) else None
    t.add_row("total", str(tokens), f"{secs:.2f}", f"{tokens / secs:.1f}" if secs else "-",
              f"{base:.2f}" if base is not None else "-", f"{base / secs:.2f}x" if base and secs else "-",
              style="bold")
    return t


def cmd_run(args: argparse.Namespace) -> int:
    from aspd_lang.program_file import load_program_file  # no torch or SGLang yet: checks fail fast

    # SGLang warns with a traceback when a branch fails; the error itself is reported in one line.
    warnings.filterwarnings("ignore", message="Error in stream_executor")
    pf = load_program_file(args.file)
    base_args = {**pf.args, **_kv(args.arg)}
    arg_sets = pf.batch(**base_args) if pf.batch else [base_args]
    progs = [pf.main.ir(**a) for a in arg_sets]  # every check (and argument) before any model loads
    from aspd_lang.runner import Runner
    from runtime.sampling import SamplingParams

    engine = load_engine(args) if args.backend in ("engine", "native") else None
    if engine is not None:  # first-call overheads (allocations, kernels) are not the program's
        engine.generate(engine.new_sequence("warm up"), SamplingParams(max_new_tokens=2), "ar")
    runner = Runner(args.backend, sampling_from(args), engine=engine, url=args.url)
    results = []
    for a, prog in zip(arg_sets, progs):
        res = runner.run(pf.main, a, serial=args.serial)
        base = None
        if any(isinstance(n, ir.Parallel) for n in _flatten(prog.body)) and not args.serial and not args.no_compare:
            base = runner.run(pf.main, a, serial=True)
        results.append((res, base))
        if not args.json:
            console.print(render(pf.path.stem, prog, res))
            console.print(_stats(res, base))
    if len(results) > 1 and not args.json:
        console.print(summary(results))
    if args.json:
        dump = [{"run": r.model_dump(mode="json"), "serial_baseline": b.model_dump(mode="json") if b else None}
                for r, b in results]
        print(json.dumps(dump, indent=2))
    return 0


def _flatten(nodes):
    for n in nodes:
        yield n
        if isinstance(n, ir.Role):
            yield from _flatten(n.body)
