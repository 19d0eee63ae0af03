"""What the subcommands share: the model flags (declared once, here), the sampling flags, and the one
way a command loads a model or the engine (all cores, no progress bars, a spinner)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

from runtime.errors import UserError
from runtime.sampling import SamplingParams, anti_loop_args, anti_loop_from, structure_args, structure_from
from runtime.weight_format import DTYPES

if TYPE_CHECKING:
    from runtime.engine import Engine
    from runtime.model_loader import LoadedModel

console = Console()
err = Console(stderr=True)

ATTENTION = ("auto", "sdpa", "flashinfer", "cascade")


class UsageError(UserError, ValueError):
    """Bad command-line input."""


def add_model_args(p: argparse.ArgumentParser, *, adapter: bool = True, dtype: bool = True, attention: bool = True,
                   dtype_help: str | None = None) -> None:
    """--model, and where the command has them --adapter, --dtype and --attention."""
    p.add_argument("--model", default=None, help="HF causal-LM directory or id (default: the embedded SmolLM2-135M)")
    if adapter:
        p.add_argument("--adapter", default="auto",
                       help="ASPD adapter directory (PEFT); default: the shipped one for the embedded model; "
                       "none: without")
    if dtype:
        p.add_argument("--dtype", choices=DTYPES, default="auto",
                       help=dtype_help or "weight format: auto (default: the fastest on this machine, measured once "
                       "and cached), bfloat16, float32, int8 or int4 (weight-only)")
    if attention:
        p.add_argument("--attention", choices=ATTENTION, default="auto",
                       help="attention backend: auto (FlashInfer's cascade on CUDA when installed, else SDPA)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling flags of the commands that decode one prompt or program, then the model flags."""
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    anti_loop_args(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--fork-bias", type=float, default=None,
                   help="ASPD mode: offset of the fork threshold (+2 forks more often, -2 less; "
                   "default: the adapter's calibrated value)")
    structure_args(p)
    add_model_args(p)


def sampling_from(args: argparse.Namespace, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, fork_bias=args.fork_bias, **anti_loop_from(args),
                          **structure_from(args), **extra)


def load_model(model: str | None, *, dtype: str = "auto", adapter: str | None = "auto") -> LoadedModel:
    """The one way a command loads a model: the embedded one by default, torch on all cores."""
    from runtime.model_loader import DEFAULT_MODEL, load, use_all_cores

    use_all_cores()
    return load(model or DEFAULT_MODEL, dtype=dtype, adapter=adapter)


def load_engine(args: argparse.Namespace) -> Engine:
    """The engine on the model the command's model flags name."""
    from runtime.engine import Engine

    with console.status("loading model..."):
        return Engine(load_model(args.model, dtype=args.dtype, adapter=args.adapter), attention=args.attention)
