"""`aspd cluster`: real `aspd serve` workers (the tiny model, fp32, subprocesses on loopback) behind the
real `sglang-router` binary, driven by SGLang's frontend, the OpenAI client and plain HTTP: every
example program gives through the router what it gives against one worker (KV joins included), the
router's polls get SGLang's answers, streams pass, a join that misses falls back to a text join, and a
worker killed mid-load is routed around with no request hanging or lost (slow). Fast: the command's
checks, and one worker in this process answering the polls and the joins a router can carry."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from aspd_cli.cluster import split_cores
from aspd_cli.main import main
from aspd_lang import gen, program
from aspd_lang.http_backend import AspdEndpoint
from aspd_lang.runner import Runner, load_program_file
from aspd_lang.sglang_compile import to_sglang
from runtime.engine import Engine
from runtime.sampling import SamplingParams
from tests.model_util import tiny_model
from tests.serve_util import cluster_command, free_port, router_command, serve_in_thread, tiny_model_dir, within

pytest.importorskip("sglang_router")
ROOT = Path(__file__).parents[1]
DEFAULTS = SamplingParams()  # the servers' own defaults apply: SGLang's frontend sends none
SERVE = ("--adapter", "none", "--dtype", "float32")  # fp32: every worker computes the same tokens
TIMEOUT = 60  # no request may take longer: a hang fails the test


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def cluster(tiny_dir):
    with cluster_command("--workers", "2", "--port", str(free_port()), "--worker-port", "0", "--model", tiny_dir,
                         *SERVE) as c:
        yield c


def _within(fn, *args):
    """fn(*args) within TIMEOUT, or a failed test (a hang)."""
    return within(TIMEOUT, fn, *args)


def _runs(url: str, prog, args: dict, defaults: SamplingParams = DEFAULTS):
    runner = Runner("sglang", defaults, url=url)
    res = _within(runner.run, prog, args)
    return res, runner._sglang_backend().joins


@pytest.mark.slow
def test_every_program_gives_the_same_text_and_variables_through_the_router_as_against_one_worker(cluster):
    direct = cluster.workers[0][0]
    forks = 0
    for path in sorted((ROOT / "programs").glob("*.py")):
        pf = load_program_file(path)
        for args in pf.batch(**pf.args) if pf.batch else [pf.args]:
            routed, routed_joins = _runs(cluster.router, pf.main, args)
            alone, alone_joins = _runs(direct, pf.main, args)
            assert (routed.text, routed.variables) == (alone.text, alone.variables), path.name
            assert routed_joins == alone_joins, path.name  # cache_aware kept each fork on one worker: KV joins
            assert set(alone_joins) <= {"kv"}, path.name
            forks += alone_joins["kv"]
    assert forks >= 6  # the fork/join programs did join


@pytest.mark.slow
def test_an_adaptive_gen_forks_on_the_worker_through_the_router(cluster):
    """The router drops fields SGLang does not define (`aspd`, `fork_bias`): they ride in session_params."""
    pf = load_program_file(ROOT / "programs" / "adaptive_chat.py")
    forky = DEFAULTS.model_copy(update={"fork_bias": 5.0})  # the random model forks only when pushed
    routed, _ = _runs(cluster.router, pf.main, pf.args, forky)
    alone, _ = _runs(cluster.workers[0][0], pf.main, pf.args, forky)
    resp = routed.gens[0].response
    assert resp is not None and any(seg.kind == "parallel" for seg in resp.segments)  # the worker forked
    assert (routed.text, resp) == (alone.text, alone.gens[0].response)


@pytest.mark.slow
def test_the_router_gets_sglang_answers_to_what_it_polls(cluster):
    r = cluster.router
    loads = httpx.get(r + "/get_loads", timeout=TIMEOUT).json()["workers"]
    assert sorted(w["worker"] for w in loads) == sorted(u for u, _ in cluster.workers)
    assert all(w["load"] >= 0 for w in loads)  # -1: the worker did not answer /get_load
    metrics = httpx.get(r + "/engine_metrics", timeout=TIMEOUT)
    assert metrics.status_code == 200 and "sglang_num_running_reqs{" in metrics.text  # merged, labelled by worker
    assert all(f'worker_addr="{u}"' in metrics.text for u, _ in cluster.workers)
    flush = httpx.post(r + "/flush_cache", timeout=TIMEOUT)
    assert flush.status_code == 200
    info = httpx.get(r + "/get_model_info", timeout=TIMEOUT).json()
    assert Path(info["tokenizer_path"], "tokenizer.json").exists()  # loaded from disk, never from the hub
    log = "".join(cluster.log)
    assert "Invalid HTTP request" not in log and "Failed to load tokenizer" not in log, log[-2000:]


def _sse(lines) -> list[dict | str]:
    return [ln.removeprefix("data: ") if ln == "data: [DONE]" else json.loads(ln.removeprefix("data: "))
            for ln in lines if ln.startswith("data: ")]


@pytest.mark.slow
def test_generate_and_openai_stream_through_the_router(cluster):
    body = {"text": "tea is", "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}}
    whole = httpx.post(cluster.router + "/generate", json=body, timeout=TIMEOUT).json()["text"]
    with httpx.stream("POST", cluster.router + "/generate", json={**body, "stream": True}, timeout=TIMEOUT) as res:
        events = _sse(list(res.iter_lines()))
    assert events[-1] == "[DONE]" and len(events) > 3 and events[-2]["text"] == whole
    assert whole == httpx.post(cluster.workers[0][0] + "/generate", json=body, timeout=TIMEOUT).json()["text"]
    client = OpenAI(base_url=cluster.router + "/v1", api_key="none", timeout=TIMEOUT)
    msgs = [{"role": "user", "content": "Name three colours."}]
    kw = dict(model="x", messages=msgs, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                   if c.choices)
    full = client.chat.completions.create(**kw)
    # the router sends max_tokens on as max_completion_tokens: the worker must honour it
    assert text == full.choices[0].message.content and text and full.usage.completion_tokens == 16
    # ASPD decoding through the router, which drops `"aspd": true`: the options ride in session_params
    # (a completion: a block opens after a newline, and the prompt ends one; the random model forks
    # only when pushed)
    ask = dict(model="x", prompt="list three tips:\n", max_tokens=96, temperature=0)
    direct = OpenAI(base_url=cluster.workers[0][0] + "/v1", api_key="none", timeout=TIMEOUT)
    forky = {"adaptive": True, "fork_bias": 100.0}
    routed = client.completions.create(**ask, extra_body={"session_params": {"aspd": forky}})
    alone = direct.completions.create(**ask, extra_body={"aspd": True, "fork_bias": 100.0})
    serial = direct.completions.create(**ask)
    assert routed.choices[0].text == alone.choices[0].text != serial.choices[0].text
    kw = dict(model="x", prompt="tea is", max_tokens=8, temperature=0)
    parts = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
    assert parts == client.completions.create(**kw).choices[0].text and parts


def _joined(join: str):
    @program
    def forked(s, topic):
        s += f"notes on {topic}:" + gen("intro", max_tokens=8)
        with s.parallel(["a", "b", "c"], join=join) as br:
            for i, b in enumerate(br):
                b += f" part {i}:" + gen(f"p{i}", max_tokens=12)
        s += " so" + gen("tail", max_tokens=12)
    return forked


def _text(url: str, prog, args: dict) -> tuple[str, dict]:
    backend = AspdEndpoint(url)
    state = _within(lambda: to_sglang(prog.ir(**args)).run(backend=backend, **args))
    return _within(state.text), dict(backend.joins)


@pytest.mark.slow
def test_a_join_that_reaches_a_worker_without_the_branches_becomes_a_text_join(cluster):
    """round_robin spreads a fork's requests over both workers: most joins find the branches on none."""
    direct = cluster.workers[0][0]
    kinds = {"kv": 0, "text": 0}
    with router_command([u for u, _ in cluster.workers], "round_robin") as rr:
        for topic in ("tea", "rain", "maps", "bread"):
            text, joins = _text(rr, _joined("kv"), {"topic": topic})
            [kind] = joins  # one join, of one kind
            kinds[kind] += 1
            expected = _text(direct, _joined("kv" if kind == "kv" else "reprefill"), {"topic": topic})[0]
            assert text == expected, (topic, kind)  # a text join is the reprefill join, exactly
    assert kinds["text"] >= 1, kinds
    assert _text(direct, _joined("kv"), {"topic": "tea"})[1] == {"kv": 1}  # one worker: always the KV join


def _ask(url: str, i: int) -> str:
    """'answer', or the error the client got; never silence."""
    body = {"text": f"q{i} tell", "sampling_params": {"max_new_tokens": 300, "temperature": 0, "ignore_eos": True}}
    try:
        if i % 3:
            r = httpx.post(url + "/generate", json=body, timeout=TIMEOUT)
            return "answer" if r.status_code == 200 and len(r.json()["text"]) > 0 else f"error {r.status_code}"
        with httpx.stream("POST", url + "/generate", json={**body, "stream": True}, timeout=TIMEOUT) as r:
            events = _sse(list(r.iter_lines()))
        if r.status_code != 200:
            return f"error {r.status_code}"
        if isinstance(events[-2], dict) and "error" in events[-2]:
            return "error in stream"
        assert events[-1] == "[DONE]" and events[-2]["meta_info"]["finish_reason"], events[-3:]  # not cut silently
        return "answer"
    except httpx.TransportError as e:  # the connection broke: the client knows
        return f"error {type(e).__name__}"


@pytest.mark.slow
def test_a_worker_killed_mid_load_is_routed_around_and_no_request_hangs_or_is_lost(tiny_dir):
    with cluster_command("--workers", "2", "--port", str(free_port()), "--worker-port", "0", "--model", tiny_dir,
                         *SERVE) as c:
        t0 = time.time()
        with cf.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(_ask, c.router, i) for i in range(12)]
            time.sleep(0.5)
            os.kill(c.workers[1][1], signal.SIGKILL)
            outcomes = [f.result(timeout=2 * TIMEOUT) for f in futures]
        assert len(outcomes) == 12 and time.time() - t0 < 2 * TIMEOUT
        assert all(o == "answer" or o.startswith("error") for o in outcomes)
        assert "answer" in outcomes, outcomes  # the live worker kept answering (the router retries the rest there)
        after = [_ask(c.router, 100 + i) for i in range(1, 7)]
        assert after == ["answer"] * 6  # routed around the dead worker
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(timeout=40) == 0
        time.sleep(0.5)
        for _, pid in (*c.workers, (None, c.router_pid)):  # it stopped everything it started
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def _served(worker: str) -> int:
    """How many requests a worker has taken (its Prometheus counter)."""
    metrics = httpx.get(worker + "/metrics", timeout=TIMEOUT).text
    return int(float(next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("sglang:num_requests_total"))))


@pytest.mark.slow
def test_the_requests_right_after_a_worker_dies_all_answer(tiny_dir):
    """Before any health check notices: cache_aware sends these prompts to the worker that holds their
    prefixes, now dead; its circuit opens after two refused connections, so the router's retries reach
    the live worker (at the router's default of ten, a request's five retries all hit the dead one)."""
    with cluster_command("--workers", "2", "--port", str(free_port()), "--worker-port", "0", "--model", tiny_dir,
                         *SERVE) as c:
        asks = range(101, 107)
        assert [_ask(c.router, i) for i in asks] == ["answer"] * 6
        holder = max(c.workers, key=lambda w: _served(w[0]))  # the worker the router's prefix tree points to
        os.kill(holder[1], signal.SIGKILL)
        assert [_ask(c.router, i) for i in asks] == ["answer"] * 6
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(timeout=40) == 0


def test_each_worker_gets_its_own_cores():
    assert split_cores([0, 1, 2, 3], 2) == [(0, 1), (2, 3)]
    assert split_cores([0, 1, 2], 2) == [(0, 1), (2,)]
    assert split_cores([0], 2) == [None, None]  # fewer cores than workers: they share


def test_a_busy_port_is_a_one_line_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert main(["cluster", "--workers", "2", "--port", str(busy)]) == 2
    err = capsys.readouterr().err
    assert f"port {busy} on 127.0.0.1 is in use" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def worker():
    with serve_in_thread(Engine(tiny_model(max_positions=4096))) as (url, _):
        yield url


def test_a_worker_answers_the_routers_polls_in_sglangs_shapes(worker):
    assert httpx.get(worker + "/server_info", timeout=TIMEOUT).json()["dp_size"] == 1
    [load] = httpx.get(worker + "/get_load", timeout=TIMEOUT).json()
    assert load == {"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}
    metrics = httpx.get(worker + "/metrics", timeout=TIMEOUT)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'sglang:num_running_reqs{model_name="tiny"} 0' in metrics.text.splitlines()


def test_joins_and_releases_ride_on_generate_where_a_router_proxies_nothing_else(worker):
    def post(body: dict) -> httpx.Response:
        return httpx.post(worker + "/generate", json=body, timeout=TIMEOUT)

    zero = {"max_new_tokens": 0}
    assert post({"text": "notes:", "rid": "p", "sampling_params": zero}).status_code == 200
    for i in range(2):
        assert post({"text": f"notes: part {i}", "rid": f"b{i}", "sampling_params": zero}).status_code == 200
    join = {"text": "notes: part 0 part 1", "rid": "p", "sampling_params": zero,
            "session_params": {"aspd": {"join": ["b0", "b1"]}}}
    assert post(join).json() == {"success": True}
    missing = post({**join, "session_params": {"aspd": {"join": ["b0"]}}})  # consumed by the join
    assert missing.status_code == 404 and "b0" in missing.json()["error"]["message"]
    release = {"text": "notes:", "rid": "p", "session_params": {"aspd": {"release": True}}}
    assert post(release).json() == {"success": True, "found": True}
    assert post(release).json() == {"success": True, "found": False}
    bad = post({"text": "x", "session_params": {"aspd": {"adaptive": "yes"}}})
    assert bad.status_code == 400 and "adaptive" in bad.json()["error"]["message"]
