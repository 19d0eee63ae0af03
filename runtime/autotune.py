"""`--dtype auto`: pick the fast decoder's weight format for this machine by measuring it.

Which format is fastest depends on the CPU: with native bf16 arithmetic (AVX-512 BF16, AMX) a bf16
step with 4 rows costs about what a 1-row step costs; without it (AVX2) bf16 costs grow linearly in
rows, the int kernels dequantize again for every row, and fbgemm's float16 GEMM, which converts each
weight panel once for all rows, wins; a decode step is memory-bound either way, so fewer weight
bytes help everywhere. At first load the decoder is built in each candidate format and a serial (1
row) and a branch (4 rows) step are timed against a short cache, and a 64-row pass (a prefill); the
result is cached per model, CPU and torch version, so later loads cost nothing. A measurement taken
while other work shares the cores serves its own load only (under a training run the base model
measured int8 where an idle machine chooses int4). float32 is never chosen automatically (it is the
exact reference, always slower): ask for it with `--dtype float32`.

A quantized kernel's cost grows with rows faster than a float matmul's on CPUs with native bf16
arithmetic, so where bf16 runs the 64-row pass faster, prefills (passes of DENSE_ROWS rows or more)
run the model's bf16 weights, which stay loaded anyway, and decode steps the quantized ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from .quant import float16_supported
from .weight_format import WeightFormat

# Most precise first: float16 (fp32 activations) where fbgemm runs it, then bf16, int8, int4.
CANDIDATES = ((WeightFormat.FLOAT16,) if float16_supported() else ()) + (
    WeightFormat.BFLOAT16, WeightFormat.INT8, WeightFormat.INT4)
MIN_GAIN = 0.10  # a less precise format must be at least this much cheaper to be chosen
ROWS = (1, 4)  # a serial step and a 4-branch step: what the choice weighs
PREFILL_ROWS = 64  # a prefill-sized pass: decides DENSE_ROWS
DENSE_ROWS = 32
CACHE_FILE = "autotune.json"
BUSY_LOAD = 1.0  # 1-minute load average per core above which a measurement is not cached (more runnable
# threads than cores: another job shares them; a loading process alone adds little to a 1-minute average)
MEASURE_VERSION = 3  # bump when what `measure` times changes: older cached entries are then ignored


def cpu_flags() -> list[str]:
    """The CPU's feature flags that matter for matmul kernels (from /proc/cpuinfo on Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return sorted(f for f in line.split(":", 1)[1].split()
                          if f.startswith(("avx", "amx", "fma", "f16c", "sse4", "asimd", "sve", "bf16", "i8mm")))
    return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy() -> bool:
    """Were the cores busy with other work over the last minute (the measurement then misleads)?"""
    try:
        return os.getloadavg()[0] > BUSY_LOAD * (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


def model_key(name: str, adapter: str | None) -> str:
    """What a cached choice is for: the model and its adapter's shape (the machine is added by the
    cache). Step times depend on an adapter's ranks and target modules, not on its values or where
    it lies, so the key holds a digest of its config: another checkout or a retrained adapter of
    the same shape reuses the measurement."""
    if not adapter:
        return f"{name}+"
    try:
        config = (Path(adapter) / "adapter_config.json").read_bytes()
    except OSError:
        return f"{name}+{adapter}"
    return f"{name}+lora:{hashlib.sha1(config).hexdigest()[:12]}"


def machine_key() -> str:
    raw = json.dumps([MEASURE_VERSION, cpu_name(), cpu_flags(), torch.__version__, torch.get_num_threads()])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def cost(ms: dict[str, float]) -> float:
    """What a format costs: a serial step plus a 4-branch step (both are common in ASPD decoding)."""
    return sum(ms[str(r)] for r in ROWS)


def choose(timings: dict[str, dict[str, float]]) -> WeightFormat:
    """The format to run, from measured step times {format: {rows: ms}}: the most precise format
    unless a less precise one is at least MIN_GAIN cheaper. A pure function of the timings."""
    best = None
    for fmt in CANDIDATES:
        if fmt.value not in timings:
            continue
        if best is None or cost(timings[fmt.value]) < (1 - MIN_GAIN) * cost(timings[best.value]):
            best = fmt
    return best or WeightFormat.BFLOAT16


def dense_rows(timings: dict[str, dict[str, float]], fmt: WeightFormat) -> int | None:
    """DENSE_ROWS where a quantized format's prefill-sized pass is slower than bf16's, else None."""
    ms = timings.get(fmt.value, {}).get(str(PREFILL_ROWS))
    dense = timings.get(WeightFormat.BFLOAT16.value, {}).get(str(PREFILL_ROWS))
    return DENSE_ROWS if fmt.quantized and ms and dense and dense < ms else None


def measure(model, gguf: Path | None, lora: dict | None = None, repeats: int = 7,
            context: int = 64) -> dict[str, dict[str, float]]:
    """Fastest step time (ms) per candidate format and row count on the real model's decoder, the
    formats interleaved round by round (this machine's noise only ever adds time)."""
    from .fast_decoder import FastDecoder

    vocab = model.get_input_embeddings().weight.shape[0]
    decoders, caches = {}, {}
    for fmt in CANDIDATES:
        dec = decoders[fmt] = FastDecoder(model, fmt, gguf, lora)
        kv = caches[fmt] = dec.new_cache()
        dec.forward_many([kv], [torch.arange(context) * 7 % vocab], [torch.arange(context)], [None],
                         [torch.tensor([context - 1])])
    samples: dict[WeightFormat, dict[int, list[float]]] = {f: {r: [] for r in (*ROWS, PREFILL_ROWS)} for f in decoders}
    for round_ in range(repeats + 1):  # round 0 warms up
        for fmt, dec in decoders.items():
            for rows in samples[fmt]:
                kv = caches[fmt]
                kv.length = context  # every sample appends to the same 64-token prefix
                mask = torch.ones(1, 1, rows, context + rows, dtype=torch.bool)
                t = time.perf_counter()
                dec.forward_many([kv], [torch.arange(rows) * 11 % vocab], [torch.full((rows,), context)], [mask],
                                 [torch.arange(min(rows, 4))])
                if round_:
                    samples[fmt][rows].append((time.perf_counter() - t) * 1000)
    return {f.value: {str(r): round(min(v), 3) for r, v in by_rows.items()} for f, by_rows in samples.items()}


def choose_format(model, gguf: Path | None, lora: dict | None, key: str,
                  fmt: WeightFormat | None = None) -> tuple[WeightFormat, int | None]:
    """The weight format (`fmt`, or the cached choice for this model on this machine, measured at
    first use) and its `dense_rows`. Models the fast decoder cannot run, and non-CPU devices, run
    bf16 (or `fmt`) without dense passes."""
    from . import fast_decoder
    from .model_loader import cache_dir

    if not fast_decoder.supported(model) or next(model.parameters()).device.type != "cpu":
        return fmt or WeightFormat.BFLOAT16, None
    if fmt is not None and not fmt.quantized:
        return fmt, None
    path = cache_dir() / CACHE_FILE
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry_key = f"{key}@{machine_key()}"
    entry = cache.get(entry_key)
    if entry is None:
        entry = {"timings_ms": measure(model, gguf, lora), "cpu": cpu_name(), "flags": cpu_flags(),
                 "torch": torch.__version__, "threads": torch.get_num_threads()}
        entry["choice"] = choose(entry["timings_ms"]).value
        if not busy():
            cache[entry_key] = entry
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes may measure at once
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(path)
    fmt = fmt or WeightFormat(entry["choice"])
    return fmt, dense_rows(entry["timings_ms"], fmt)


def cached_entry(key: str) -> dict | None:
    """The cached measurement behind a choice (for benchmark records), if any."""
    from .model_loader import cache_dir

    try:
        return json.loads((cache_dir() / CACHE_FILE).read_text()).get(f"{key}@{machine_key()}")
    except (OSError, ValueError):
        return None
