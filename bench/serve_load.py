"""Load on `aspd serve` with the embedded model: 16 concurrent clients against the same requests
sent one at a time, latency percentiles, the server's peak memory against a bound, and a
fork-heavy program's prefill tokens with the prefix cache on and off.

    .venv/bin/python bench/serve_load.py          # ~5 minutes; writes bench/results/serve_load.json

Each phase starts its own `aspd serve` (a subprocess on loopback, exactly as users run it) and
reads its counters from /server_info; memory is the server process's RSS, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from aspd_lang import gen, program  # noqa: E402
from aspd_lang.runner import Runner  # noqa: E402
from bench.common import environment  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from tests.serve_util import serve_command  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "Give two tips for sleeping well.", "Why do cats purr?",
    "Write a haiku about rain.", "What is 12 times 12?", "Name a famous painter and one of their works.",
    "How do plants make food?", "What is a prime number?", "How can I improve my focus while studying?",
    "What are the benefits of drinking water?", "Explain what a black hole is.", "Suggest a name for a bakery.",
    "Why is exercise good for the heart?", "What does a compiler do?", "Describe the taste of a lemon.",
    "How do vaccines work?", "What is the difference between weather and climate?", "Give a tip for saving money.",
    "What is photosynthesis?", "Why do leaves change colour in autumn?", "How do I make a cup of tea?",
    "What is the largest ocean?", "Name three programming languages.", "What causes thunder?",
]


def chat(q: str) -> str:
    return f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


class RssPeak:
    """The server process's peak resident memory, sampled in a thread."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 2**20


def stats(url: str) -> dict:
    return httpx.get(url + "/server_info", timeout=60).json()["internal_states"][0]


def ask(client: httpx.Client, url: str, q: str, max_new: int) -> tuple[bool, float]:
    t0 = time.perf_counter()
    try:
        r = client.post(url + "/generate", json={"text": chat(q), "sampling_params": {
            "max_new_tokens": max_new, "temperature": 0}}, timeout=600)
        ok = r.status_code == 200 and bool(r.json().get("text") is not None)
    except httpx.HTTPError:
        ok = False
    return ok, time.perf_counter() - t0


def concurrent_phase(url: str, clients: int, seconds: float, max_new: int) -> list[tuple[bool, float]]:
    """`clients` threads, each sending the questions in turn (offset by client) until time is up."""
    deadline = time.perf_counter() + seconds
    out: list[tuple[bool, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client() as c:
            i = k
            while time.perf_counter() < deadline:
                res = ask(c, url, QUESTIONS[i % len(QUESTIONS)], max_new)
                with lock:
                    out.append(res)
                i += clients

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return out


def sequential_phase(url: str, seconds: float, max_new: int) -> list[tuple[bool, float]]:
    out, i = [], 0
    deadline = time.perf_counter() + seconds
    with httpx.Client() as c:
        while time.perf_counter() < deadline:
            out.append(ask(c, url, QUESTIONS[i % len(QUESTIONS)], max_new))
            i += 1
    return out


@program
def fork_heavy(s, document):
    """A long shared prefix (a document) and eight branches that each read it."""
    with s.user():
        s += f"Read this text and answer questions about it.\n\n{document}"
    with s.assistant():
        aspects = ["the topic", "the main claim", "one example", "the tone", "the audience", "a weakness",
                   "a strength", "a title"]
        with s.parallel(aspects) as br:
            for i, a in enumerate(aspects):
                br[i] += f"About {a}:" + gen(f"a{i}", max_tokens=12, ignore_eos=True)
        s += "\nIn short," + gen("summary", max_tokens=12, ignore_eos=True)


def fork_prefill(url: str) -> dict:
    doc = "\n\n".join(json.loads((ROOT / "programs" / "data" / "documents.json").read_text()))
    before = stats(url)
    res = Runner("sglang", SamplingParams(), url=url).run(fork_heavy, {"document": doc})
    after = stats(url)
    return {"prefill_tokens": after["prefill_tokens"] - before["prefill_tokens"],
            "cached_tokens": after["cached_tokens"] - before["cached_tokens"],
            "completion_tokens": res.completion_tokens, "seconds": res.seconds}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rss-bound-mb", type=float, default=2048, help="the memory bound the server must stay under")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    ap.add_argument("--dtype", default="auto", help="the server's weight format")
    args = ap.parse_args()
    console = Console()
    serve_args = ["--adapter", "none", "--dtype", args.dtype, "--repetition-penalty", "1.2", "--max-running",
                  str(args.clients),
                  "--max-queue", "64", "--cache-tokens", "16384"]

    with serve_command(*serve_args) as (url, pid):
        peak = RssPeak(pid)
        ask(httpx.Client(), url, "warm up", 4)
        console.print(f"[bold]concurrent[/]: {args.clients} clients for {args.seconds:.0f} s")
        t0 = time.perf_counter()
        conc = concurrent_phase(url, args.clients, args.seconds, args.max_new_tokens)
        conc_s = time.perf_counter() - t0
        mid = stats(url)
        console.print(f"[bold]sequential[/]: one client for {args.seconds:.0f} s")
        t0 = time.perf_counter()
        seq = sequential_phase(url, args.seconds, args.max_new_tokens)
        seq_s = time.perf_counter() - t0
        rss = peak.stop()
        end = stats(url)
        on = fork_prefill(url)
    with serve_command(*serve_args[:-2], "--cache-tokens", "0") as (url, _):
        off = fork_prefill(url)

    lat = [t for ok, t in conc if ok]
    result = {
        "clients": args.clients, "seconds": args.seconds, "max_new_tokens": args.max_new_tokens,
        "errors": sum(not ok for ok, _ in conc) + sum(not ok for ok, _ in seq),
        "requests_concurrent": len(conc), "requests_sequential": len(seq),
        "throughput_rps": round(len(conc) / conc_s, 3), "sequential_rps": round(len(seq) / seq_s, 3),
        "p50_s": round(statistics.median(lat), 3), "p99_s": round(pct(lat, 0.99), 3),
        "sequential_p50_s": round(statistics.median([t for _, t in seq]), 3),
        "mean_batch": round(mid["mean_batch"], 2),
        "generated_tokens": end["generated_tokens"],
        "peak_rss_mb": round(rss, 1), "rss_bound_mb": args.rss_bound_mb, "rss_within_bound": rss < args.rss_bound_mb,
        "prefill_tokens_cache_on": on["prefill_tokens"], "prefill_tokens_cache_off": off["prefill_tokens"],
        "fork_program": {"cache_on": on, "cache_off": off},
        "server_args": serve_args, "weights": weights(args.dtype), "environment": environment(),
    }
    result["speedup_throughput"] = round(result["throughput_rps"] / result["sequential_rps"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    t = Table(title=f"aspd serve under load (embedded SmolLM2-135M, {result['weights']}, this machine)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("errors", "throughput_rps", "sequential_rps", "speedup_throughput", "p50_s", "p99_s", "mean_batch",
              "peak_rss_mb", "rss_bound_mb", "prefill_tokens_cache_on", "prefill_tokens_cache_off"):
        t.add_row(k, str(result[k]))
    console.print(t)
    console.print(f"wrote {args.out}")


def weights(dtype: str) -> str:
    """The weight format the server ran: `--dtype`, or what auto chose (the choice is cached)."""
    if dtype != "auto":
        return dtype
    from runtime.autotune import cached_entry, model_key
    from runtime.model_loader import DEFAULT_MODEL

    entry = cached_entry(model_key(DEFAULT_MODEL, None))
    return f"auto: {entry['choice']}" if entry else "auto"


if __name__ == "__main__":
    main()
