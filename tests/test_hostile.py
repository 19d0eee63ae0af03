"""`aspd serve` under hostile or careless input (tiny model, uvicorn in a thread): every request gets
one well-formed answer (a result, or a JSON error naming what is wrong), the server stays healthy,
and nothing stays live afterwards."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from bench.hostile_cases import ALL, answered_well, send
from runtime.engine import Engine
from runtime.guard import Access
from tests.model_util import tiny_model
from tests.serve_util import idle, info, serve_in_thread

LONG = {"max_new_tokens": 3000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_positions=4096)


@pytest.fixture(scope="module")
def server(model):
    with serve_in_thread(Engine(model), max_running=4, max_waiting=4) as (url, loop):
        yield url, loop


def healthy(url: str) -> None:
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    s = idle(url)
    assert s["live_sequences"] == s["sessions"] == 0, s


def refused(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == status and err["type"] and all(w in err["message"] for w in words), err
    return err["message"]


def wait_running(url: str) -> None:
    for _ in range(400):
        if info(url)["running"]:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the request never ran")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_aborted_request_is_answered_with_finish_reason_abort(server, stream):
    url, _ = server
    body = {"text": "a long story", "rid": f"victim-{stream}", "stream": stream, "sampling_params": LONG}
    got: dict = {}

    def call():
        with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
            lines = [x for x in r.iter_lines() if x.startswith("data: {")] if stream else None
            got["status"] = r.status_code
            got["body"] = json.loads(lines[-1][6:]) if stream else (r.read(), r.json())[1]

    th = threading.Thread(target=call)
    th.start()
    wait_running(url)
    assert httpx.post(url + "/abort_request", json={"rid": body["rid"]}).json()["found"] is True
    th.join(timeout=30)
    assert not th.is_alive(), "the aborted client was left waiting"
    assert got["status"] == 200
    assert got["body"]["meta_info"]["finish_reason"]["type"] == "abort"
    healthy(url)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_every_case_of_the_catalogue_gets_its_answer(server, case):
    url, _ = server
    with httpx.Client() as client:
        wrong = answered_well(case, send(client, url, case))
    assert wrong is None, wrong
    healthy(url)


def test_valid_sglang_and_openai_shapes_are_accepted(server):
    url, _ = server
    r = httpx.post(url + "/generate", json={"text": "a", "sampling_params": None}, timeout=30)
    assert r.status_code == 200 and r.json()["text"] is not None
    two = [{"max_new_tokens": 2, "ignore_eos": True}, {"max_new_tokens": 5, "ignore_eos": True}]
    r = httpx.post(url + "/generate", json={"text": ["a", "b"], "sampling_params": two}, timeout=30)
    assert [x["meta_info"]["completion_tokens"] for x in r.json()] == [2, 5]
    r = httpx.post(url + "/v1/completions", json={"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 3}, timeout=30)
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                   "response_format": {"type": "text"}, "tool_choice": "none", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(url + "/generate", json={"text": "a", "sampling_params": {"temperature": 1e-300, "seed": 2**63,
                                                                             "max_new_tokens": 4}}, timeout=30)
    assert r.status_code == 200  # a vanishing temperature is greedy, not inf/nan
    healthy(url)


def test_an_oversized_prompt_is_refused_before_any_work(server):
    url, loop = server
    before = info(url)["requests"]
    huge = "ab " * 40_000  # more characters than the context window could hold in any tokens
    refused(httpx.post(url + "/generate", json={"text": huge}, timeout=30), 400, "text", "context window")
    refused(httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]},
                       timeout=30), 400, "messages")
    long = "ab " * 3000  # fits the check, not the window: refused with its token count
    refused(httpx.post(url + "/generate", json={"text": long, "sampling_params": {"max_new_tokens": 100}},
                       timeout=30), 400, "context window")
    assert info(url)["requests"] == before + 1  # only the last one reached the serving loop
    healthy(url)


def test_429_says_when_to_retry(model):
    with serve_in_thread(Engine(model), max_running=1, max_waiting=0) as (url, _):
        body = {"text": "slow", "stream": True, "sampling_params": LONG}
        with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
            next(r.iter_lines())
            second = httpx.post(url + "/generate", json={"text": "b"}, timeout=30)
        refused(second, 429)
        assert int(second.headers["retry-after"]) >= 1


def test_api_key_hosts_and_body_limit(model):
    access = Access.for_bind("127.0.0.1", api_keys=("s3cret", "other"), max_body_bytes=4096)
    with serve_in_thread(Engine(model), access=access) as (url, _):
        key = {"authorization": "Bearer s3cret"}
        assert httpx.get(url + "/health").status_code == 200  # open, as in SGLang
        refused(httpx.post(url + "/generate", json={"text": "a"}), 401, "API key")
        refused(httpx.post(url + "/generate", json={"text": "a"}, headers={"authorization": "Bearer nope"}), 401)
        refused(httpx.get(url + "/v1/models"), 401)
        assert httpx.get(url + "/v1/models", headers=key).status_code == 200
        r = httpx.post(url + "/generate", json={"text": "a", "sampling_params": {"max_new_tokens": 2}}, headers=key)
        assert r.status_code == 200
        refused(httpx.get(url + "/v1/models", headers={**key, "host": "evil.example:80"}), 403, "Host")
        refused(httpx.post(url + "/generate", json={"text": "a" * 5000}, headers=key), 413, "4096")

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"text": "'
            for _ in range(10):
                yield b"a" * 1000
            yield b'"}'
        refused(httpx.post(url + "/generate", content=chunks(), headers=key), 413)
        # each key's rids are its own: another client can neither abort nor join them, nor see them
        other = {"authorization": "Bearer other"}
        r = httpx.post(url + "/generate", json={"text": "mine", "rid": "r1", "sampling_params": {"max_new_tokens": 2}},
                       headers=key)
        assert r.json()["meta_info"]["id"] == "r1"
        assert httpx.post(url + "/abort_request", json={"rid": "r1"}, headers=other).json()["found"] is False
        refused(httpx.post(url + "/concate_and_append_request", json={"src_rids": ["r1"], "dst_rid": "r2"},
                           headers=other), 404, "'r1'")
        assert httpx.post(url + "/abort_request", json={"rid": "r1"}, headers=key).json()["found"] is True
        refused(httpx.post(url + "/generate", json={"text": "a", "rid": "x\u001f0"}, headers=key), 400, "rid")
        healthy_with_key = httpx.get(url + "/server_info", headers=key).json()["internal_states"][0]
        assert healthy_with_key["live_sequences"] == healthy_with_key["sessions"] == 0
    assert Access.for_bind("0.0.0.0").allowed_hosts == ("*",)
    assert Access.for_bind("::1").allowed_hosts == ("localhost", "127.0.0.1", "::1")


def test_sessions_are_charged_by_tokens(model):
    with serve_in_thread(Engine(model), max_running=2, max_waiting=4, session_tokens=1100) as (url, _):
        parent = "p" * 150
        for k in range(6):  # forks of one parent: each holds its own copy of the parent's KV
            r = httpx.post(url + "/generate", json={"text": parent + str(k), "rid": f"s{k}",
                                                    "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}})
            assert r.status_code == 200
            s = info(url)
            assert s["session_tokens"] <= 1100 and s["live_sequences"] == s["sessions"], s
        assert s["sessions"] == 2  # charged by the K/V they hold (512 tokens of room each): 2 fit, 3 do not
        r = httpx.post(url + "/generate", json={"text": "q" * 1200, "rid": "big",
                                                "sampling_params": {"max_new_tokens": 1}})
        assert r.status_code == 200 and info(url)["sessions"] == 2  # over the budget alone: not held, none evicted
        httpx.post(url + "/abort_request", json={"rid": "s5"})
        httpx.post(url + "/abort_request", json={"rid": "s4"})
        assert info(url)["session_tokens"] == 0 == info(url)["live_sequences"]


def test_a_plain_client_that_leaves_is_cancelled_without_a_traceback(server, caplog):
    url, _ = server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/generate", json={"text": "go", "sampling_params": LONG}, timeout=1.0)
    healthy(url)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def test_a_batch_larger_than_running_plus_queue_runs(model):
    with serve_in_thread(Engine(model), max_running=2, max_waiting=1) as (url, _):
        texts = [f"prompt {k}" for k in range(12)]
        r = httpx.post(url + "/generate", json={"text": texts, "sampling_params": {"max_new_tokens": 3}}, timeout=60)
        assert r.status_code == 200 and len(r.json()) == 12
        r = httpx.post(url + "/v1/completions", json={"prompt": texts, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and len(r.json()["choices"]) == 12
        texts[5] = "x " * 3000  # one bad prompt: the batch ends with its error, the rest cancelled
        refused(httpx.post(url + "/generate", json={"text": texts}, timeout=60), 400, "context window")
        healthy(url)
