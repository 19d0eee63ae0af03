"""The catalogue of hostile and careless requests against `aspd serve`: what each must get back.

One list for the test suite (`tests/test_hostile.py`, on the tiny model) and the fault benchmark
(`bench/serve_faults.py`, on the embedded model): a body is sent as JSON text exactly as written
here (`json.dumps`, so a lone surrogate travels as "\\ud800"), or as `raw` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHAT = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: object = None
    status: int = 400
    words: tuple[str, ...] = ()  # what the error message must name
    method: str = "POST"
    raw: bytes | None = None
    headers: dict = field(default_factory=dict)


SURROGATES = [
    Case("surrogate in text", "/generate", {"text": "a\ud800"}, words=("text", "surrogate")),
    Case("surrogate in rid", "/generate", {"text": "a", "rid": "r\ud800"}, words=("rid", "surrogate")),
    Case("surrogate in prompt", "/v1/completions", {"prompt": "x\udfff"}, words=("prompt", "surrogate")),
    Case("surrogate in model", "/v1/completions", {"prompt": "x", "model": "m\ud800"}, words=("model", "surrogate")),
    Case("surrogate in chat content", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "hi \ud800"}]}, words=("content", "surrogate")),
    Case("surrogate in a content part", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
         words=("content", "surrogate")),
]

BAD_FIELDS = [
    Case("seed 2**64", "/generate", {"text": "a", "sampling_params": {"seed": 2**64}}, words=("seed",)),
    Case("seed below -2**63", "/generate", {"text": "a", "sampling_params": {"seed": -(2**63) - 1}}, words=("seed",)),
    Case("openai seed 2**70", "/v1/completions", {"prompt": "a", "seed": 2**70}, words=("seed",)),
    Case("openai min_p 3", "/v1/chat/completions", {"messages": CHAT, "min_p": 3}, words=("min_p",)),
    Case("openai top_k -5", "/v1/completions", {"prompt": "a", "top_k": -5}, words=("top_k",)),
    Case("stream as a string", "/generate", {"text": "a", "stream": "yes"}, words=("stream",)),
    Case("max_new_tokens true", "/generate", {"text": "a", "sampling_params": {"max_new_tokens": True}},
         words=("max_new_tokens",)),
    Case("max_new_tokens -1", "/generate", {"text": "a", "sampling_params": {"max_new_tokens": -1}},
         words=("max_new_tokens",)),
    Case("sampling_params count", "/generate", {"text": ["a", "b"], "sampling_params": [{}]},
         words=("sampling_params",)),
    Case("unknown sampling parameter", "/generate", {"text": "a", "sampling_params": {"temprature": 0}},
         words=("temprature",)),
    Case("json_schema not JSON", "/generate", {"text": "a", "sampling_params": {"json_schema": "{"}},
         words=("json_schema",)),
    Case("json_schema refused", "/generate", {"text": "a", "sampling_params": {"json_schema": '{"type": 5}'}},
         words=("json_schema",)),
    Case("regex and json_schema", "/generate",
         {"text": "a", "sampling_params": {"regex": "a", "json_schema": "{}"}}, words=("regex", "json_schema")),
    Case("ebnf", "/generate", {"text": "a", "sampling_params": {"ebnf": "root ::= x"}}, words=("ebnf",)),
    Case("response_format unknown", "/v1/chat/completions",
         {"messages": CHAT, "response_format": {"type": "yaml"}}, words=("response_format",)),
    Case("response_format bad schema", "/v1/chat/completions",
         {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}},
         words=("response_format",)),
    Case("tools", "/v1/chat/completions",
         {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, words=("tools",)),
    Case("tool_choice", "/v1/chat/completions", {"messages": CHAT, "tool_choice": "auto"}, words=("tool_choice",)),
    Case("best_of", "/v1/completions", {"prompt": "a", "best_of": 3}, words=("best_of",)),
    Case("lora_path", "/v1/completions", {"prompt": "a", "lora_path": "x"}, words=("lora_path",)),
    Case("logit_bias", "/v1/completions", {"prompt": "a", "logit_bias": {"5": 10}}, words=("logit_bias",)),
    Case("suffix", "/v1/completions", {"prompt": "a", "suffix": "end"}, words=("suffix",)),
    Case("echo", "/v1/completions", {"prompt": "a", "echo": True}, words=("echo",)),
    Case("n 2", "/v1/completions", {"prompt": "a", "n": 2}, words=("n must be 1",)),
    Case("text and input_ids", "/generate", {"text": "a", "input_ids": [1]}, words=("exactly one",)),
    Case("input_ids out of vocab", "/generate", {"input_ids": [10**9]}, words=("input_ids",)),
    Case("empty text", "/generate", {"text": ""}, words=("empty",)),
    Case("no messages", "/v1/chat/completions", {"messages": []}, words=("messages",)),
    Case("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "a"}]}, words=("role",)),
    Case("image content", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         words=("image_url",)),
    Case("a streamed batch", "/generate", {"text": ["a", "b"], "stream": True}, words=("stream",)),
    Case("not JSON", "/generate", raw=b"{not json", headers={"content-type": "application/json"}),
    Case("a JSON list body", "/generate", [1, 2, 3]),
    Case("join without src_rids", "/concate_and_append_request", {"src_rids": [], "dst_rid": "y"},
         words=("src_rids",)),
    Case("join of unknown rids", "/concate_and_append_request", {"src_rids": ["x"], "dst_rid": "y"}, status=404,
         words=("unknown rid",)),
]

ROUTES = [
    Case("GET on an admin route", "/flush_cache", method="GET", status=405),
    Case("an unknown route", "/no/such/route", method="GET", status=404),
    Case("abort of an unknown rid", "/abort_request", {"rid": "nobody"}, status=200),
]

ACCEPTED = [  # valid SGLang / OpenAI shapes, each must get 200
    Case("sampling_params null", "/generate", {"text": "a", "sampling_params": None}, status=200),
    Case("sampling_params per prompt", "/generate",
         {"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}]}, status=200),
    Case("completions of token lists", "/v1/completions", {"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 3},
         status=200),
    Case("response_format text", "/v1/chat/completions",
         {"messages": CHAT, "response_format": {"type": "text"}, "tool_choice": "none", "max_tokens": 3}, status=200),
    Case("temperature 1e-300", "/generate",
         {"text": "a", "sampling_params": {"temperature": 1e-300, "seed": 2**63, "max_new_tokens": 4}}, status=200),
]

ALL = SURROGATES + BAD_FIELDS + ROUTES + ACCEPTED


def send(client, url: str, case: Case, timeout: float = 30.0):
    """The case's request (an `httpx.Client`); raises httpx.TimeoutException past `timeout`."""
    import json

    content = case.raw if case.raw is not None else (json.dumps(case.body).encode() if case.body is not None else None)
    headers = {"content-type": "application/json", **case.headers} if content is not None else dict(case.headers)
    return client.request(case.method, url + case.path, content=content, headers=headers, timeout=timeout)


def answered_well(case: Case, r) -> str | None:
    """What is wrong with the answer (None: it is the one the case must get)."""
    if r.status_code != case.status:
        return f"status {r.status_code}, wanted {case.status}: {r.text[:200]}"
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"not a JSON error: {r.text[:200]}"
        if err.get("code") != r.status_code or not err.get("type"):
            return f"malformed error {err}"
        missing = [w for w in case.words if w not in err.get("message", "")]
        if missing:
            return f"the message does not name {missing}: {err.get('message')}"
    return None
