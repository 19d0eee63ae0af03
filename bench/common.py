"""What every benchmark records about the machine and the software it ran on."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch
import transformers


def environment() -> dict:
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "date": time.strftime("%Y-%m-%d"),
    }


def parser(out: Path, repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    from runtime.model_loader import DEFAULT_MODEL

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--out", type=Path, default=out)
    return ap


def engine(args: argparse.Namespace):
    """The engine on the benchmark's model, all cores, no progress bars."""
    from runtime.engine import Engine
    from runtime.model_loader import load

    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()
    return Engine(load(args.model, dtype=getattr(torch, args.dtype)))
