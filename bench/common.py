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


def threads() -> int:
    return os.cpu_count() or 1


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, where Linux has it: ru_maxrss survives fork and
    exec, so a benchmark's subprocess would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def environment() -> dict:
    from runtime.autotune import cpu_flags, cpu_name

    return {
        "machine": {"cpu": cpu_name(), "arch": platform.machine(), "flags": cpu_flags(),
                    "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "peak_rss_mb": peak_rss_mb(),
        "date": time.strftime("%Y-%m-%d"),
    }


def parser(out: Path, repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    from runtime.model_loader import DEFAULT_MODEL
    from runtime.weight_format import DTYPES

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--out", type=Path, default=out)
    return ap


def engine(args: argparse.Namespace):
    """The engine on the benchmark's model, all cores, no progress bars."""
    from runtime.engine import Engine
    from runtime.model_loader import load, use_all_cores

    use_all_cores()
    return Engine(load(args.model, dtype=args.dtype, adapter=getattr(args, "adapter", None)))


def shown(path: Path) -> str:
    """A path as a result file records it: relative to the repository when inside it."""
    root = Path(__file__).resolve().parents[1]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)
