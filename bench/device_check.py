"""The CUDA check of the FlashInfer attention backend: one prepared script for a GPU lent for minutes.

1. correctness: FlashInfer's two-level cascade (bf16) against an fp32 SDPA reference with the
   protocol's dense mask, on random inputs shaped like ASPD steps (1-32 live branches over a shared
   prefix); relative error (Frobenius) must be under 1e-2;
2. end to end: the engine on the embedded model answers a prompt in ASPD mode with each backend;
3. step time against live branches (1-32) for both backends (a fork of N branches, fixed length).

It prints a short table last and writes `bench/results/device_check.json` (and a copy under $OUT
when that is set). `--cpu-dry-run` runs the same code on the CPU with FlashInfer's computation done
by the torch reference (`cascade`), small sizes: how CI checks the script itself.

    python bench/device_check.py                 # on the CUDA machine
    python bench/device_check.py --cpu-dry-run   # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from runtime import attention  # noqa: E402
from runtime.attention_plan import SeqStep, plan  # noqa: E402
from runtime.model_runner import KVState  # noqa: E402
from runtime.protocol import SERIAL_TAG, Tag  # noqa: E402

BRANCHES = (1, 2, 4, 8, 16, 32)


def step_tags(prefix: int, branches: int, branch_len: int) -> list[Tag]:
    """A cache as ASPD decoding leaves it: a serial prefix, then `branch_len` tokens of each branch
    interleaved (one per live branch per step); the last token of each branch is this step's query."""
    return [SERIAL_TAG] * prefix + [Tag(1, j) for _ in range(branch_len) for j in range(1, branches + 1)]


def correctness(backend: str, device: torch.device, sizes: dict) -> list[dict]:
    """Cascade in bf16 (FlashInfer on CUDA) vs SDPA in fp32 with the dense mask."""
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    hq, hkv, d = sizes["heads"], sizes["kv_heads"], sizes["head_dim"]
    for n in sizes["branches"]:
        tags = step_tags(sizes["prefix"], n, sizes["branch_len"])
        total = len(tags)
        q = torch.randn(hq, n, d, generator=g)
        k, v = torch.randn(hkv, total, d, generator=g), torch.randn(hkv, total, d, generator=g)
        kv = KVState(None, torch.device("cpu"), capacity=total)
        kv.append_tags(tags)
        ref = attention.sdpa(q, k, v, kv.mask(n)[0, 0])
        p = plan([SeqStep(tuple(tags), n)])
        qb, kb, vb = (x.to(device, torch.bfloat16) for x in (q, k, v))
        if backend == "flashinfer":
            fi = attention.FlashInferCascade(device)
            fi.plan(p, hq, hkv, d, torch.bfloat16)
            pool = torch.stack([kb.transpose(0, 1), vb.transpose(0, 1)], dim=1)[:, :, None].contiguous()
            got = fi.run(qb.transpose(0, 1).contiguous(), pool).transpose(0, 1)
        else:
            got = attention.cascade_reference(qb, kb, vb, p)
        err = float((got.float().cpu() - ref).norm() / ref.norm())
        rows.append({"branches": n, "keys": total, "rel_error": err, "ok": err < 1e-2})
    return rows


def engine_runs(backends: list[str], device: torch.device, max_new_tokens: int) -> dict:
    from runtime.engine import Engine
    from runtime.model_loader import load
    from runtime.sampling import SamplingParams

    out = {}
    prompt = "Give me five tips for staying productive when working from home."
    for b in backends:
        eng = Engine(load(adapter="auto", device=str(device)), fast=False, attention=b)  # only attention differs
        seq = eng.new_sequence(eng.chat_prompt(prompt))
        t0 = time.perf_counter()
        o = eng.generate(seq, SamplingParams(max_new_tokens=max_new_tokens), "aspd")
        out[b] = {"seconds": time.perf_counter() - t0, "tokens": o.completion_tokens, "blocks": len(o.blocks),
                  "text": o.text}
        eng.release(seq)
    first, *rest = backends
    out["same_text"] = all(out[b]["text"] == out[first]["text"] for b in rest)
    return out


def step_times(backends: list[str], device: torch.device, prefix: int, tokens: int,
               branches: tuple[int, ...]) -> dict:
    """Milliseconds per decode step against live branches (each branch `tokens` long, EOS ignored)."""
    from runtime.engine import Engine
    from runtime.model_loader import load
    from runtime.sampling import SamplingParams

    res: dict = {}
    for b in backends:
        eng = Engine(load(device=str(device)), fast=False, attention=b)
        base = eng.encode("word " * prefix)
        res[b] = {}
        for n in branches:
            seq = eng.new_sequence(base)
            eng.prefill(seq)
            p = SamplingParams(max_new_tokens=n * tokens, max_branch_tokens=tokens, ignore_eos=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if n == 1:  # one live stream: a plain serial step
                out = eng.generate(seq, p.model_copy(update={"max_new_tokens": tokens}), "ar")
            else:
                out = eng.fork(seq, [f"{i + 1}." for i in range(n)], p)
            if device.type == "cuda":
                torch.cuda.synchronize()
            res[b][n] = round(out.total_s / max(out.forward_passes, 1) * 1000, 2)
            eng.release(seq)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same code on the CPU (torch cascade, small)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "device_check.json")
    args = ap.parse_args()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if args.cpu_dry_run:
        device, fast_backend = torch.device("cpu"), "cascade"
        sizes = {"heads": 4, "kv_heads": 2, "head_dim": 32, "prefix": 64, "branch_len": 4, "branches": (1, 2, 4)}
        e2e_tokens, step_prefix, step_tokens = 24, 16, 4
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-dry-run to check the script itself")
            return 2
        device, fast_backend = torch.device("cuda"), "flashinfer"
        sizes = {"heads": 9, "kv_heads": 3, "head_dim": 64, "prefix": 1024, "branch_len": 64, "branches": BRANCHES}
        e2e_tokens, step_prefix, step_tokens = 256, 512, 32
        report["gpu"] = torch.cuda.get_device_name(0)
        try:
            import flashinfer

            report["flashinfer"] = getattr(flashinfer, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            report["flashinfer_error"] = f"{type(e).__name__}: {e}"
            fast_backend = None
    report["device"] = str(device)
    backends = ["sdpa"] + ([fast_backend] if fast_backend else [])
    if fast_backend:
        report["correctness"] = correctness(fast_backend, device, sizes)
    report["engine"] = engine_runs(backends, device, e2e_tokens)
    report["step_ms"] = step_times(backends, device, step_prefix, step_tokens, sizes["branches"])
    report["backends"] = backends
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    args.out.write_text(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "device_check.json").write_text(text)
    ok = all(r["ok"] for r in report.get("correctness", []))
    print(f"correctness ({fast_backend} bf16 vs fp32 SDPA):", "ok" if ok and fast_backend else "FAILED",
          [round(r["rel_error"], 5) for r in report.get("correctness", [])])
    print("engine end to end:", {b: (round(report['engine'][b]['seconds'], 2), report['engine'][b]['blocks'])
                                 for b in backends}, "same text:", report["engine"]["same_text"])
    print("step ms | " + " | ".join(f"{n:>6}" for n in sizes["branches"]))
    for b in backends:
        print(f"{b:>7} | " + " | ".join(f"{report['step_ms'][b][n]:6.1f}" for n in sizes["branches"]))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
