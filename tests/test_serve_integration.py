"""`aspd serve` as users run it (a subprocess on loopback) with the embedded model, driven by real
clients: SGLang's frontend, the OpenAI client, plain HTTP. fp32 on both sides so that the
in-process reference and the batched server agree token for token (see the README on bf16)."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import httpx
import pytest
import sglang as sgl
import torch
from openai import OpenAI

from aspd_lang.runner import Runner, load_program_file
from runtime.engine import Engine
from runtime.model_loader import load
from runtime.sampling import SamplingParams
from tests.serve_util import serve_command

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
DEFAULTS = SamplingParams(repetition_penalty=1.2)


@pytest.fixture(scope="module")
def url():
    with serve_command("--dtype", "float32", "--repetition-penalty", "1.2", "--max-running", "8",
                       "--adapter", "none") as (u, _):  # the same base model as the in-process reference
        yield u


@pytest.fixture(scope="module")
def local() -> Engine:
    torch.set_num_threads(2)
    return Engine(load(dtype=torch.float32))


def stats(url: str) -> dict:
    return httpx.get(url + "/server_info", timeout=60).json()["internal_states"][0]


def test_a_dsl_program_with_fork_join_and_select_over_http_equals_in_process(url, local):
    pf = load_program_file(ROOT / "programs" / "pros_cons.py")
    ref = Runner("native", DEFAULTS, engine=local).run(pf.main, pf.args)
    before = stats(url)
    got = Runner("sglang", DEFAULTS, url=url).run(pf.main, pf.args)
    after = stats(url)
    assert got.text == ref.text and got.variables == ref.variables  # the KV join over HTTP is the in-process one
    assert got.variables["verdict"] in ("A", "B")
    assert after["cached_tokens"] - before["cached_tokens"] > 4 * 20  # four branches forked off the prefix
    assert after["sessions"] == 0 and after["live_sequences"] == 0


def test_stock_runtime_endpoint_streams(url):
    @sgl.function
    def story(s):
        s += sgl.user("Tell a very short story about a cat.")
        s += sgl.assistant(sgl.gen("story", max_tokens=24, temperature=0))

    st = story.run(backend=sgl.RuntimeEndpoint(url), stream=True)
    chunks = list(st.text_iter("story"))
    assert len(chunks) > 2 and "".join(chunks) == st["story"] and st["story"].strip()


def test_openai_client_streams_a_chat_completion(url):
    client = OpenAI(base_url=url + "/v1", api_key="none")
    msgs = [{"role": "user", "content": "Name three colours."}]
    stream = client.chat.completions.create(model="x", messages=msgs, max_tokens=24, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    full = client.chat.completions.create(model="x", messages=msgs, max_tokens=24, temperature=0)
    assert text == full.choices[0].message.content and text.strip()


QUESTIONS = ["What is the capital of France?", "Give two tips for sleeping well.", "Why do cats purr?",
             "Write a haiku about rain.", "What is 12 times 12?", "Name a famous painter.",
             "How do plants make food?", "What is a prime number?"]


def _ask(url: str, q: str) -> str:
    body = {"text": f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
            "sampling_params": {"max_new_tokens": 24, "temperature": 0}}
    r = httpx.post(url + "/generate", json=body, timeout=300)
    r.raise_for_status()
    return r.json()["text"]


def test_concurrent_greedy_requests_equal_sequential_ones(url):
    httpx.post(url + "/flush_cache")
    one_by_one = [_ask(url, q) for q in QUESTIONS]
    httpx.post(url + "/flush_cache")
    before = stats(url)
    with cf.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: _ask(url, q), QUESTIONS))
    after = stats(url)
    assert together == one_by_one
    assert (after["batched_rows"] - before["batched_rows"]) / (after["steps"] - before["steps"]) > 2  # batched
