"""What every benchmark records about the machine and the software it ran on."""

from __future__ import annotations

import os
import platform
import resource
import time

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
