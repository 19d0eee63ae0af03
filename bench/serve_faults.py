"""`aspd serve` under hostile input, with the embedded model: every request answered, memory bounded,
no long stalls.

    .venv/bin/python bench/serve_faults.py     # ~6 minutes; writes bench/results/serve_faults.json

1. A hostile round (`bench/hostile_cases.py`, plus aborts, oversized and cut-off requests): each
   request must get its answer before its deadline; counted: correct, other 4xx, 5xx (and 5xx not
   labelled `server_error`), hangs; afterwards no live sequence or held session (leaks).
2. Memory: the server's RSS before and after the round, and after 200 fork sessions of a
   2,000-token parent (each a session holding its own KV) against the bound the configuration
   sets: RSS before + (session budget + prefix-cache budget) x K/V bytes per token.
3. Stalls: p99 latency of short requests while 4,000-token prompts prefill, with chunked prefill
   (the default) and without (one chunk of any size, no share limit), against its idle value.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment  # noqa: E402
from bench.hostile_cases import ALL, Case, answered_well, send  # noqa: E402
from bench.serve_load import chat, pct, stats  # noqa: E402
from tests.serve_util import serve_command  # noqa: E402

DEADLINE_S = 60.0
WORDS = ("river stone lantern orchard velvet thunder copper meadow silver harbor quiet ember willow "
         "falcon marble canyon").split()


def text_of(tokens: int, seed: int) -> str:
    """About `tokens` tokens of distinct plain words (one word is about one token here)."""
    return " ".join(WORDS[(seed * 7 + i * 3 + i // 16) % len(WORDS)] for i in range(tokens))


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def kv_bytes_per_token() -> int:
    """K and V of every layer for one token, at 4 bytes a value (the bound holds for any KV dtype)."""
    from transformers import AutoConfig

    from runtime.model_loader import embedded_checkpoint

    c = AutoConfig.from_pretrained(embedded_checkpoint())
    return c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4


def hostile_round(url: str, console: Console) -> dict:
    out = {"cases": 0, "correct": 0, "other_4xx": 0, "5xx": 0, "unlabelled_5xx": 0, "hangs": 0, "wrong": []}

    def judge(name: str, ok: bool, status: int | None, why: str = "", body: dict | None = None) -> None:
        out["cases"] += 1
        if status is None:
            out["hangs"] += 1
        elif status >= 500:
            out["5xx"] += 1
            out["unlabelled_5xx"] += (body or {}).get("error", {}).get("type") != "server_error"
        elif not ok and 400 <= status < 500:
            out["other_4xx"] += 1
        out["correct"] += ok
        if not ok:
            out["wrong"].append(f"{name}: {why or status}")

    def body_of(r: httpx.Response) -> dict:
        try:
            return r.json() if isinstance(r.json(), dict) else {}
        except ValueError:
            return {}

    with httpx.Client() as client:
        for case in ALL:
            try:
                r = send(client, url, case, timeout=DEADLINE_S)
            except httpx.TimeoutException:
                judge(case.name, False, None, "no answer before the deadline")
                continue
            wrong = answered_well(case, r)
            judge(case.name, wrong is None, r.status_code, wrong or "", body_of(r))
        big = [Case("a 1 MB prompt", "/generate", {"text": "word " * 200_000}, words=("context window",)),
               Case("a 9 MB body", "/generate", {"text": "a" * 9 * 2**20}, status=413)]
        for case in big:
            try:
                r = send(client, url, case, timeout=DEADLINE_S)
                wrong = answered_well(case, r)
                judge(case.name, wrong is None, r.status_code, wrong or "", body_of(r))
            except httpx.TimeoutException:
                judge(case.name, False, None, "no answer before the deadline")
        for stream in (False, True):  # abort a running request: its client gets finish_reason abort
            got: dict = {}
            body = {"text": chat("Tell me a long story."), "rid": f"victim-{stream}", "stream": stream,
                    "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}

            def call(body=body, got=got, stream=stream):
                with httpx.stream("POST", url + "/generate", json=body, timeout=DEADLINE_S) as r:
                    lines = [x for x in r.iter_lines() if x.startswith("data: {")] if stream else []
                    got["status"] = r.status_code
                    got["json"] = json.loads(lines[-1][6:]) if stream else json.loads(r.read())

            th = threading.Thread(target=call)
            th.start()
            while stats(url)["running"] == 0 and th.is_alive():
                time.sleep(0.05)
            client.post(url + "/abort_request", json={"rid": body["rid"]})
            th.join(DEADLINE_S)
            reason = got.get("json", {}).get("meta_info", {}).get("finish_reason", {}).get("type")
            judge(f"abort ({'stream' if stream else 'plain'})", reason == "abort", got.get("status"),
                  f"finish reason {reason}")
        for k in range(20):  # clients that give up mid-request
            try:
                client.post(url + "/generate", json={"text": chat(f"Count to {k}."), "sampling_params": {
                    "max_new_tokens": 500, "ignore_eos": True}}, timeout=0.5)
            except httpx.TimeoutException:
                pass
    t0 = time.time()
    while (s := stats(url))["running"] or s["waiting"]:
        if time.time() - t0 > DEADLINE_S:
            break
        time.sleep(0.1)
    out["leaked_sequences"] = s["live_sequences"] - s["sessions"]
    out["held_sessions"] = s["sessions"]
    console.print(f"hostile round: {out['correct']}/{out['cases']} answered as they must be")
    return out


def fork_sessions(url: str, n: int, parent_tokens: int) -> dict:
    parent = chat(text_of(parent_tokens, 1))
    with httpx.Client() as c:
        r = c.post(url + "/generate", json={"text": parent, "rid": "parent", "sampling_params": {"max_new_tokens": 1}},
                   timeout=DEADLINE_S)
        assert r.status_code == 200, r.text
        held = parent + r.json()["text"]
        bad = 0
        for k in range(n):
            r = c.post(url + "/generate", json={"text": held + f" branch {k}:", "rid": f"b{k}",
                                                "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}},
                       timeout=DEADLINE_S)
            bad += r.status_code != 200
    s = stats(url)
    return {"forks": n, "parent_tokens": parent_tokens, "failed": bad, "sessions_held": s["sessions"],
            "session_tokens": s["session_tokens"], "session_budget": s["session_budget"]}


def short_latencies(url: str, n: int | None = None, until: threading.Event | None = None) -> list[float]:
    out = []
    with httpx.Client() as c:
        while (n is not None and len(out) < n) or (until is not None and not until.is_set()):
            t0 = time.perf_counter()
            r = c.post(url + "/generate", json={"text": chat("What is 2 + 2?"), "sampling_params": {
                "max_new_tokens": 16, "ignore_eos": True}}, timeout=DEADLINE_S)
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - t0)
    return out


def stall_phase(url: str, long_tokens: int, rounds: int) -> dict:
    short_latencies(url, 3)  # warm up
    idle = short_latencies(url, 30)
    during, long_s = [], []
    for k in range(rounds):
        done = threading.Event()
        res: list = []

        def long_call(k=k, done=done, res=res):
            t0 = time.perf_counter()
            r = httpx.post(url + "/generate", json={"text": chat(text_of(long_tokens, 10 + k)), "sampling_params": {
                "max_new_tokens": 1}}, timeout=600)
            res.append((r.status_code, time.perf_counter() - t0))
            done.set()

        th = threading.Thread(target=long_call)
        th.start()
        time.sleep(0.2)
        during += short_latencies(url, until=done)
        th.join()
        assert res and res[0][0] == 200, res
        long_s.append(res[0][1])
    return {"idle_p99_s": round(pct(idle, 0.99), 3), "idle_p50_s": round(pct(idle, 0.5), 3),
            "during_p99_s": round(pct(during, 0.99), 3), "during_p50_s": round(pct(during, 0.5), 3),
            "during_requests": len(during), "p99_ratio": round(pct(during, 0.99) / pct(idle, 0.99), 2),
            "long_prompt_s": round(sum(long_s) / len(long_s), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--forks", type=int, default=200)
    ap.add_argument("--parent-tokens", type=int, default=2000)
    ap.add_argument("--long-tokens", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3, help="long prompts per stall measurement")
    ap.add_argument("--session-tokens", type=int, default=16384)
    ap.add_argument("--cache-tokens", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_faults.json")
    args = ap.parse_args()
    console = Console()
    base = ["--adapter", "none", "--max-running", "8", "--max-queue", "16"]
    budget = ["--session-tokens", str(args.session_tokens), "--cache-tokens", str(args.cache_tokens)]
    with serve_command(*base, *budget) as (url, pid):
        rss0 = rss_mb(pid)
        hostile = hostile_round(url, console)
        rss1 = rss_mb(pid)
        console.print(f"{args.forks} fork sessions of a {args.parent_tokens}-token parent")
        forks = fork_sessions(url, args.forks, args.parent_tokens)
        rss2 = rss_mb(pid)
    bound = rss1 + (args.session_tokens + args.cache_tokens) * kv_bytes_per_token() / 2**20
    stalls = {}
    for name, extra in (("chunked", []), ("unchunked", ["--prefill-chunk", "100000", "--prefill-share", "1"])):
        console.print(f"short requests while {args.long_tokens}-token prompts prefill: {name}")
        with serve_command(*base, "--cache-tokens", "0", *extra) as (url, _):
            stalls[name] = stall_phase(url, args.long_tokens, args.rounds)
    result = {
        "hostile": hostile,
        "memory": {"rss_start_mb": round(rss0, 1), "rss_after_hostile_mb": round(rss1, 1),
                   "rss_after_forks_mb": round(rss2, 1), "bound_mb": round(bound, 1), "within_bound": rss2 <= bound,
                   "kv_bytes_per_token_bound": kv_bytes_per_token(), **forks},
        "stalls": stalls, "server_args": base + budget, "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    t = Table(title="aspd serve under hostile input (embedded SmolLM2-135M, this machine)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    h, m = hostile, result["memory"]
    rows = [("cases answered as they must be", f"{h['correct']}/{h['cases']}"), ("5xx (unlabelled)",
            f"{h['5xx']} ({h['unlabelled_5xx']})"), ("hangs", h["hangs"]), ("leaked sequences", h["leaked_sequences"]),
            ("RSS start / after hostile / after forks (MB)",
             f"{m['rss_start_mb']} / {m['rss_after_hostile_mb']} / {m['rss_after_forks_mb']}"),
            ("RSS bound (MB)", m["bound_mb"])]
    for name, st in stalls.items():
        rows.append((f"short p99 idle / during long prefill ({name})",
                     f"{st['idle_p99_s']} / {st['during_p99_s']} s ({st['p99_ratio']}x)"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    for w in h["wrong"]:
        console.print(f"[red]{w}[/]")


if __name__ == "__main__":
    main()
