"""`aspd serve` workers behind SGLang's router (`aspd cluster`), on the embedded model:

  1. one worker (all cores), sent to directly and through the router, requests interleaved: the
     router's overhead (latency p50/p99 of short requests one at a time; throughput under load);
  2. two workers behind the router (each pinned to its share of the cores): throughput and errors
     under the same load;
  3. a fork-heavy program mix (a shared document, four branches, a KV join) from several clients on
     the two workers, under `cache_aware` and under `round_robin`: prefix-cache hit rate (prompt
     tokens taken from the cache or a session), KV joins against text joins, errors, programs/s.

    .venv/bin/python bench/serve_cluster.py      # ~5 minutes; writes bench/results/serve_cluster.json

On a machine with few cores two workers share them with the clients and the router: their gain is
bounded by the cores, which the result records (each worker's cores, the machine's).
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
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from aspd_lang import gen, program  # noqa: E402
from aspd_lang.runner import Runner  # noqa: E402
from bench.common import environment  # noqa: E402
from bench.serve_load import QUESTIONS, concurrent_phase, pct, weights  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from tests.serve_util import Cluster, cluster_command, free_port, router_command  # noqa: E402

ASPECTS = ["the topic", "the main claim", "one example", "a title"]
DOCS = json.loads((ROOT / "programs" / "data" / "documents.json").read_text())


@program
def fork_heavy(s, document):
    """A shared document, four branches that each read it, a KV join, a serial summary."""
    with s.user():
        s += f"Read this text and answer questions about it.\n\n{document}"
    with s.assistant():
        with s.parallel(ASPECTS) as br:
            for i, a in enumerate(ASPECTS):
                br[i] += f"About {a}:" + gen(f"a{i}", max_tokens=12, ignore_eos=True)
        s += "\nIn short," + gen("summary", max_tokens=12, ignore_eos=True)


def documents(n: int) -> list[str]:
    """`n` distinct documents (the three shipped ones in a rotation, under a numbered heading)."""
    return [f"Report {k + 1}.\n\n" + "\n\n".join(DOCS[k % 3:] + DOCS[:k % 3]) for k in range(n)]


def counters(urls: list[str]) -> dict[str, int]:
    """The workers' prefill and cached prompt tokens, summed."""
    out = {"prefill_tokens": 0, "cached_tokens": 0}
    for u in urls:
        s = httpx.get(u + "/server_info", timeout=60).json()["internal_states"][0]
        for k in out:
            out[k] += s[k]
    return out


def short(client: httpx.Client, url: str, i: int, max_new: int) -> float | None:
    t0 = time.perf_counter()
    try:
        r = client.post(url + "/generate", json={"text": QUESTIONS[i % len(QUESTIONS)], "sampling_params": {
            "max_new_tokens": max_new, "temperature": 0}}, timeout=600)
        return time.perf_counter() - t0 if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def flush(workers: list[str]) -> None:
    for w in workers:  # a cold prefix cache: no phase gains from the one before
        httpx.post(w + "/flush_cache", timeout=60)


def overhead(c: Cluster, n: int, max_new: int) -> dict:
    """Short requests one at a time, direct and routed in turn (the same worker, the same drift; which
    goes first alternates, and each starts from a cold cache)."""
    worker = c.workers[0][0]
    direct, routed = [], []
    with httpx.Client() as client:
        for i in range(n):
            pair = [(worker, direct), (c.router, routed)]
            for url, times in pair if i % 2 else pair[::-1]:
                flush([worker])
                times.append(short(client, url, i, max_new))
    ok_d, ok_r = [t for t in direct if t is not None], [t for t in routed if t is not None]
    return {"requests": n, "errors": (n - len(ok_d)) + (n - len(ok_r)),
            "direct_p50_s": round(statistics.median(ok_d), 4), "direct_p99_s": round(pct(ok_d, 0.99), 4),
            "routed_p50_s": round(statistics.median(ok_r), 4), "routed_p99_s": round(pct(ok_r, 0.99), 4),
            "overhead_p50_ms": round(1000 * (statistics.median(ok_r) - statistics.median(ok_d)), 2)}


def load(url: str, workers: list[str], clients: int, seconds: float, max_new: int) -> dict:
    flush(workers)
    t0 = time.perf_counter()
    out = concurrent_phase(url, clients, seconds, max_new)
    wall = time.perf_counter() - t0
    lat = [t for ok, t in out if ok]
    return {"requests": len(out), "errors": sum(not ok for ok, _ in out), "throughput_rps": round(len(lat) / wall, 3),
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p99_s": round(pct(lat, 0.99), 3) if lat else None}


def fork_mix(url: str, workers: list[str], clients: int, programs: int, groups: int) -> dict:
    """`programs` runs of the fork-heavy program from `clients` threads, over `groups` documents."""
    docs = documents(groups)
    flush(workers)  # every policy starts cold
    before = counters(workers)
    joins = {"kv": 0, "text": 0}
    errors, lock, todo = [], threading.Lock(), iter(range(programs))

    def client(_: int) -> None:
        runner = Runner("sglang", SamplingParams(), url=url)
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                break
            try:
                runner.run(fork_heavy, {"document": docs[k % groups]})
            except Exception as e:  # counted: a failed program is a result here
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
        with lock:
            for kind, n in runner._sglang_backend().joins.items():
                joins[kind] += n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    after = counters(workers)
    prefill = after["prefill_tokens"] - before["prefill_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    return {"programs": programs, "errors": len(errors), "error_samples": errors[:3],
            "programs_per_s": round((programs - len(errors)) / wall, 3), "seconds": round(wall, 1),
            "prefill_tokens": prefill, "cached_tokens": cached,
            "prefix_hit_rate": round(cached / (prefill + cached), 3) if prefill + cached else None,
            "kv_joins": joins["kv"], "text_joins": joins["text"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30, help="each load phase")
    ap.add_argument("--latency-requests", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="per request under load")
    ap.add_argument("--programs", type=int, default=24, help="fork-heavy programs per policy")
    ap.add_argument("--groups", type=int, default=4, help="distinct documents in the fork-heavy mix")
    ap.add_argument("--dtype", default="auto", help="the workers' weight format")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_cluster.json")
    args = ap.parse_args()
    console = Console()
    # model flags are aspd cluster's own; after `--`, the rest of every worker's `aspd serve` flags
    serve = ["--adapter", "none", "--dtype", args.dtype, "--", "--repetition-penalty", "1.2", "--max-running", "16"]
    result: dict = {"clients": args.clients, "seconds": args.seconds, "max_new_tokens": args.max_new_tokens,
                    "server_args": serve}

    console.print("[bold]1 worker[/]: direct against routed")
    with cluster_command("--workers", "1", "--port", str(free_port()), "--worker-port", "0", *serve) as c:
        short(httpx.Client(), c.router, 0, 4)
        result["one_worker"] = {
            "cores": list(c.cores), "latency": overhead(c, args.latency_requests, 8),
            "direct": load(c.workers[0][0], [c.workers[0][0]], args.clients, args.seconds, args.max_new_tokens),
            "routed": load(c.router, [c.workers[0][0]], args.clients, args.seconds, args.max_new_tokens),
            "fork_mix_cache_aware": fork_mix(c.router, [c.workers[0][0]], args.clients, args.programs, args.groups)}

    console.print("[bold]2 workers[/]: routed; the fork-heavy mix under cache_aware and round_robin")
    with cluster_command("--workers", "2", "--port", str(free_port()), "--worker-port", "0", *serve) as c:
        urls = [u for u, _ in c.workers]
        short(httpx.Client(), c.router, 0, 4)
        two = {"cores": list(c.cores), "routed": load(c.router, urls, args.clients, args.seconds, args.max_new_tokens),
               "fork_mix_cache_aware": fork_mix(c.router, urls, args.clients, args.programs, args.groups)}
        with router_command(urls, "round_robin") as rr:
            two["fork_mix_round_robin"] = fork_mix(rr, urls, args.clients, args.programs, args.groups)
        result["two_workers"] = two

    one, two = result["one_worker"], result["two_workers"]
    result["two_over_one_throughput"] = round(two["routed"]["throughput_rps"] / one["routed"]["throughput_rps"], 2)
    result["weights"] = weights(args.dtype)
    result["environment"] = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    t = Table(title=f"aspd serve behind sglang-router (embedded SmolLM2-135M, {result['weights']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    lat = one["latency"]
    rows = [("short request p50 / p99, direct", f"{lat['direct_p50_s']} s / {lat['direct_p99_s']} s"),
            ("short request p50 / p99, through the router", f"{lat['routed_p50_s']} s / {lat['routed_p99_s']} s"),
            ("router overhead p50", f"{lat['overhead_p50_ms']} ms"),
            ("1 worker: req/s direct / routed",
             f"{one['direct']['throughput_rps']} / {one['routed']['throughput_rps']}"),
            ("2 workers: req/s routed (x vs 1)",
             f"{two['routed']['throughput_rps']} ({result['two_over_one_throughput']}x)"),
            ("errors under load", str(sum(p["errors"] for p in (one["direct"], one["routed"], two["routed"]))))]
    for name in ("fork_mix_cache_aware", "fork_mix_round_robin"):
        m = two[name]
        rows.append((f"2 workers, fork mix, {name.removeprefix('fork_mix_')}",
                     f"hit rate {m['prefix_hit_rate']}, {m['kv_joins']} KV / {m['text_joins']} text joins, "
                     f"{m['programs_per_s']} programs/s, {m['errors']} errors"))
    rows.append(("cores per worker", f"1 worker: {' | '.join(one['cores'])}; 2 workers: {' | '.join(two['cores'])} "
                                      f"(machine: {result['environment']['machine']['cores']})"))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
