"""`aspd serve`'s HTTP API on the tiny model (uvicorn in a thread, fp32): SGLang's real frontend
(`RuntimeEndpoint`, and `AspdEndpoint` for KV joins), the OpenAI client, streaming, bad input and
disconnects."""

from __future__ import annotations

import json

import httpx
import pytest
import sglang as sgl
from openai import OpenAI

from aspd_lang.runner import Runner, load_program_file
from runtime.engine import Engine
from tests.dsl_util import DEFAULTS, PROGRAMS, fork_join
from tests.model_util import JSON_CHARS, tiny_model
from tests.serve_util import idle, info, serve_in_thread


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_positions=4096)


@pytest.fixture(scope="module")
def server(model):
    with serve_in_thread(Engine(model), defaults=DEFAULTS, max_running=8,
                         max_waiting=8) as (url, loop):
        yield url, loop


@pytest.fixture(scope="module")
def json_model():  # a vocabulary that can write JSON: the example programs include json_schema gens
    return tiny_model(max_positions=4096, chars=JSON_CHARS)


@pytest.fixture(scope="module")
def json_server(json_model):
    with serve_in_thread(Engine(json_model), defaults=DEFAULTS, max_running=8,
                         max_waiting=8) as (url, loop):
        yield url, loop


def test_model_and_server_info(server):
    url, _ = server
    mi = httpx.get(url + "/get_model_info").json()
    assert mi["model_path"] == "tiny" and mi["aspd"] is True
    assert httpx.get(url + "/model_info").json() == mi
    assert httpx.get(url + "/get_server_info").json()["max_running_requests"] == 8
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/health_generate", timeout=30).status_code == 200
    assert httpx.post(url + "/flush_cache").status_code == 200


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_programs_over_http_equal_the_in_process_run(json_server, json_model, path):
    """Each example program through SGLang's interpreter and HTTP (AspdEndpoint: KV joins on the
    server) gives exactly the text and variables of the same program on NativeBackend in process."""
    url, _ = json_server
    pf = load_program_file(path)
    args = pf.batch(**pf.args)[0] if pf.batch else pf.args
    ref = Runner("native", DEFAULTS, engine=Engine(json_model)).run(pf.main, args)
    got = Runner("sglang", DEFAULTS, url=url).run(pf.main, args)
    assert (got.text, got.variables) == (ref.text, ref.variables)
    assert idle(url)["sessions"] == 0  # the program's sessions were released at its end


def test_kv_join_over_http_equals_the_in_process_join(server, model):
    url, _ = server
    before = info(url)
    ref = Runner("native", DEFAULTS, engine=Engine(model)).run(fork_join, {"topic": "tea"})
    got = Runner("sglang", DEFAULTS, url=url).run(fork_join, {"topic": "tea"})
    assert (got.text, got.variables) == (ref.text, ref.variables)
    after = idle(url)
    assert after["cached_tokens"] - before["cached_tokens"] > 0  # branches started from the parent's KV


@sgl.function
def raw_program(s, topic):
    s += "about " + topic + ":\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"point {i}:" + sgl.gen("p", max_tokens=5, ignore_eos=True)
    forks.join()  # gather_variable: no KV join needed
    s += "verdict:" + sgl.select("v", choices=["good", "bad"]) + sgl.gen("end", max_tokens=4, ignore_eos=True)


def test_stock_runtime_endpoint_runs_fork_select_and_streaming(server, model):
    url, _ = server
    backend = sgl.RuntimeEndpoint(url)
    state = raw_program.run(topic="tea", backend=backend, temperature=0)
    assert state.error() is None
    assert len(state["p"]) == 2 and state["v"] in ("good", "bad")
    # the same program on NativeBackend in process
    from aspd_lang.native_backend import NativeBackend

    ref = raw_program.run(topic="tea", backend=NativeBackend(Engine(model), DEFAULTS), temperature=0)
    assert (state["p"], state["v"], state["end"]) == (ref["p"], ref["v"], ref["end"])

    @sgl.function
    def streamed(s):
        s += "once upon a time" + sgl.gen("story", max_tokens=12, ignore_eos=True)

    st = streamed.run(backend=backend, stream=True, temperature=0)
    chunks = list(st.text_iter("story"))
    assert len(chunks) > 1 and "".join(chunks) == st["story"]
    idle(url)


def test_generate_contract(server):
    url, _ = server
    r = httpx.post(url + "/generate", json={"text": "abc", "sampling_params": {"max_new_tokens": 5, "temperature": 0,
                                                                                "ignore_eos": True}}).json()
    m = r["meta_info"]
    assert m["completion_tokens"] == 5 and m["prompt_tokens"] == 3 and m["finish_reason"]["type"] == "length"
    assert {"id", "cached_tokens", "e2e_latency"} <= set(m)
    body = {"text": ["abc", "abd"], "sampling_params": {"max_new_tokens": 0}}
    batch = httpx.post(url + "/generate", json=body).json()
    assert [b["meta_info"]["completion_tokens"] for b in batch] == [0, 0]
    ids = httpx.post(url + "/generate", json={"input_ids": [3, 4, 5], "sampling_params": {"max_new_tokens": 2}})
    assert ids.status_code == 200
    stop = httpx.post(url + "/generate", json={"text": "abc", "sampling_params": {
        "max_new_tokens": 20, "temperature": 0, "ignore_eos": True, "stop": r["text"][2:4]}}).json()
    assert stop["text"] == r["text"][:2] and stop["meta_info"]["finish_reason"]["type"] == "stop"
    lp = httpx.post(url + "/generate", json={"text": "abcd", "sampling_params": {"max_new_tokens": 1, "temperature": 0},
                                              "return_logprob": True, "logprob_start_len": 1,
                                              "top_logprobs_num": 2, "return_text_in_logprobs": True}).json()
    triples = lp["meta_info"]["input_token_logprobs"]
    assert [t[2] for t in triples] == ["b", "c", "d"] and all(t[0] < 0 for t in triples)
    assert len(lp["meta_info"]["output_token_logprobs"]) == 1
    assert len(lp["meta_info"]["input_top_logprobs"][0]) == 2


def test_sglang_stream_is_cumulative_and_ends_with_done(server):
    url, _ = server
    body = {"text": "hello", "stream": True, "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                                  "ignore_eos": True}}
    with httpx.stream("POST", url + "/generate", json=body, timeout=30) as r:
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    texts = [json.loads(x[5:])["text"] for x in lines[:-1]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    plain = httpx.post(url + "/generate", json={**body, "stream": False}).json()
    assert texts[-1] == plain["text"]


def test_openai_client_streams_a_chat_and_completes(server):
    url, _ = server
    client = OpenAI(base_url=url + "/v1", api_key="none")
    assert client.models.list().data[0].id == "tiny"
    msgs = [{"role": "user", "content": "say hi"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(parts) == full.choices[0].message.content
    assert usage.completion_tokens == full.usage.completion_tokens and finish == full.choices[0].finish_reason
    comp = client.completions.create(model="tiny", prompt="abc", max_tokens=4, temperature=0)
    assert comp.usage.completion_tokens <= 4 and comp.choices[0].text is not None


BAD = [
    ("invalid json", b"{not json", 400),
    ("missing prompt", {"sampling_params": {}}, 400),
    ("wrong type", {"text": 5}, 400),
    ("negative max_new_tokens", {"text": "a", "sampling_params": {"max_new_tokens": -1}}, 400),
    ("huge max_new_tokens", {"text": "a", "sampling_params": {"max_new_tokens": 10 ** 9}}, 400),
    ("prompt over the context window", {"text": "a" * 5000}, 400),
    ("unknown sampling parameter", {"text": "a", "sampling_params": {"temprature": 0}}, 400),
    ("bad regex", {"text": "a", "sampling_params": {"regex": "([0-9]+"}}, 400),
    ("ebnf", {"text": "a", "sampling_params": {"ebnf": "root ::= \"a\""}}, 400),
    ("token id out of range", {"input_ids": [10 ** 6]}, 400),
]


@pytest.mark.parametrize("name,body,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_json_error_and_the_server_stays_healthy(server, name, body, status):
    url, _ = server
    raw = {"content": body, "headers": {"content-type": "application/json"}}
    kw = raw if isinstance(body, bytes) else {"json": body}
    r = httpx.post(url + "/generate", timeout=30, **kw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    ok = {"text": "ok", "sampling_params": {"max_new_tokens": 1}}
    assert httpx.post(url + "/generate", json=ok).status_code == 200
    idle(url)


def test_bad_joins_and_openai_errors(server):
    url, _ = server
    r = httpx.post(url + "/concate_and_append_request", json={"src_rids": ["x"], "dst_rid": "y"})
    assert r.status_code == 404 and "unknown rid" in r.json()["error"]["message"]
    assert httpx.post(url + "/concate_and_append_request", json={"src_rids": "x"}).status_code == 400
    r = httpx.post(url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "echo": True})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]


def test_too_many_requests_get_429(model):
    with serve_in_thread(Engine(model), max_running=1, max_waiting=0) as (url, _):
        body = {"text": "slow", "stream": True, "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
        with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
            next(r.iter_lines())  # the first request is running
            second = httpx.post(url + "/generate", json={"text": "b"}, timeout=30)
        assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
        assert idle(url)["live_sequences"] == 0
        assert httpx.get(url + "/health").status_code == 200


def test_a_client_that_disconnects_mid_stream_leaves_nothing(server):
    url, _ = server
    body = {"text": "long story", "stream": True, "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}
    with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
        it = r.iter_lines()
        next(it)
        next(it)
    s = idle(url)
    assert s["live_sequences"] == 0 and s["cancelled"] >= 1


def test_without_the_prefix_cache_joins_still_work_and_prefill_more(model):
    counts = {}
    for budget in (0, 4096):
        with serve_in_thread(Engine(model), defaults=DEFAULTS,
                             cache_tokens=budget) as (url, _):
            got = Runner("sglang", DEFAULTS, url=url).run(fork_join, {"topic": "tea"})
            counts[budget] = idle(url)["prefill_tokens"]
        ref = Runner("native", DEFAULTS, engine=Engine(model)).run(fork_join, {"topic": "tea"})
        assert (got.text, got.variables) == (ref.text, ref.variables)
    assert counts[4096] < counts[0]
