"""`AspdEndpoint`: SGLang's own `RuntimeEndpoint`, plus what lets `aspd serve` keep branch KV.

SGLang's HTTP client sends each executor's whole text with every request and never says which
executor a request came from, so a server cannot tell which requests a `concate_and_append`
join names. This subclass adds the executor's id as the request's `rid` (SGLang's own field) on
every single-text request, marks the request after an adaptive gen with `session_params: {"aspd":
{"adaptive": true}}` (and its `fork_bias`, if set), sends the run's `--seed` as `sampling_seed` (as
the in-process backends use it for every gen), and takes the chat roles the server publishes (the
model's own template, as NativeBackend uses). A parent whose text SGLang never committed before its
fork (it skips that while its text lags, as in a hand-written program with only text before
`s.fork(n)`) is committed at the join, so the KV join still finds it.

Behind sglang-router: it forwards only SGLang's fields (`session_params` as written, hence ASPD's
options there), takes one prompt per /generate (select's batch goes one by one), and proxies neither
the join nor /abort_request: those go as /generate requests whose text routes them (the cache-aware
policy sends a text to the worker holding its prefix, where the branches ran). A join that reaches
a worker without the branches (404) becomes a text join: SGLang has appended the branch texts to
the parent already, so its next request re-prefills them there (`joins` counts both kinds).
Everything else (the requests, streaming, select's log-probs) is SGLang's code. Against a server
that is not `aspd serve`, it behaves exactly like `RuntimeEndpoint`, with text joins.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.utils import http_request

from runtime.roles import RoleFormat

from . import interpreter_guard
from .roles import sglang_template


class AspdEndpoint(RuntimeEndpoint):
    def __init__(self, base_url: str, seed: int | None = None, fork_bias: float | None = None, **kw):
        interpreter_guard.install()  # a failed request ends the program with its error, never a hang
        super().__init__(base_url, **kw)
        self.is_aspd = bool(self.model_info.get("aspd"))
        self.support_concate_and_append = self.is_aspd  # a stock server has no KV join
        self.supports_aspd = self.is_aspd
        if self.is_aspd and "roles" in self.model_info:  # the server's model's own chat roles
            self.chat_template = sglang_template(RoleFormat.model_validate(self.model_info["roles"]))
        self.seed = seed  # sent with every gen (SGLang's frontend has no seed): as the in-process backends
        self.fork_bias = fork_bias  # sent with every adaptive gen that sets none
        self._adaptive: dict[str, float | None] = {}  # executors whose next gen is adaptive: its fork bias
        self._committed: dict[str, str] = {}  # an executor's last text sent with max_new_tokens=0
        self._fork_prefix: dict[str, str] = {}  # a forked executor's fork-point text, by its id
        self._sent: dict[str, str] = {}  # an executor's last text sent: what routes its join or release
        self._routes = True  # the join and abort routes answer (False behind a router: /generate carries them)
        self._batches = True  # /generate takes a list of prompts (False behind a router: one request each)
        self.joins: Counter[str] = Counter()  # "kv" / "text": how the joins went
        self._lock = threading.Lock()

    def next_gen_adaptive(self, sid: str, fork_bias: float | None = None) -> None:
        """Called on the executor's thread right before an adaptive gen (see sglang_compile)."""
        with self._lock:
            self._adaptive[sid] = fork_bias

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        with self._lock:
            prefix = self._fork_prefix.get(src_rids[0]) if src_rids else None
            committed = self._committed.get(dst_rid) == prefix
        if self.is_aspd and prefix is not None and not committed:  # the fork point never reached the server
            res = http_request(self.base_url + "/generate", json={"text": prefix, "rid": dst_rid,
                                                                  "sampling_params": {"max_new_tokens": 0}},
                               api_key=self.api_key, verify=self.verify)
            self._assert_success(res)
        with self._lock:  # the parent's text after the join: what its next request starts with
            joined = (prefix or "") + "".join(self._sent.get(r, "")[len(prefix or ""):] for r in src_rids)
        kv = self._admin("/concate_and_append_request", {"src_rids": src_rids, "dst_rid": dst_rid},
                         {"rid": dst_rid, "text": joined, "session_params": {"aspd": {"join": src_rids}}})
        self.joins["kv" if kv else "text"] += 1
        with self._lock:
            self._committed.pop(dst_rid, None)
            texts = [self._sent.pop(rid, joined) for rid in src_rids]
            for rid in src_rids:
                self._committed.pop(rid, None)
                self._fork_prefix.pop(rid, None)
        if not kv:  # the branches' sessions stay wherever they ran: free them
            for rid, text in zip(src_rids, texts):
                self._release(rid, text)

    def _admin(self, route: str, body: dict, via_generate: dict) -> bool:
        """POST an admin route, or behind a router (no such route: a 404 that is not ours) the same as
        a /generate request; False when the worker does not hold the rids (404)."""
        if self._routes:
            res = http_request(self.base_url + route, json=body, api_key=self.api_key, verify=self.verify)
            if res.status_code != 404 or _ours(res):
                return _found(res, self._assert_success)
            self._routes = False
        res = http_request(self.base_url + "/generate", json={**via_generate, "sampling_params": {"max_new_tokens": 0}},
                           api_key=self.api_key, verify=self.verify)
        return _found(res, self._assert_success)

    def _release(self, rid: str, text: str) -> None:
        with contextlib.suppress(Exception):  # best effort: an unreleased session is evicted (LRU)
            self._admin("/abort_request", {"rid": rid}, {"rid": rid, "text": text,
                                                          "session_params": {"aspd": {"release": True}}})

    def end_program(self, s) -> None:
        """The executor ended: the server may drop what it holds for it (its session's KV). SGLang
        also calls this when the program function returns while the executor still has commands
        queued; the session is released only by a call that finds the queue drained (SGLang calls
        it again when the program's state is dropped)."""
        queue = getattr(s, "queue", None)
        if self.is_aspd and (queue is None or queue.unfinished_tasks <= 1):  # <= the end-of-program marker
            with self._lock:
                self._committed.pop(s.sid, None)
                self._fork_prefix.pop(s.sid, None)
                text = self._sent.pop(s.sid, s.text_)
            self._release(s.sid, text)

    def _generate_http_request(self, s, data):
        """SGLang's, for select: behind sglang-router, which takes one prompt a request (422 for a
        list), the prompts go one by one (the same log-probs; no rid: they are not the executor's)."""
        if not self._batches and _batched(data):
            return [self._one(x) for x in _unbatched(data)]
        self._add_images(s, data)
        res = http_request(self.base_url + "/generate", json=data, api_key=self.api_key, verify=self.verify)
        if res.status_code == 422 and _batched(data):
            self._batches = False
            return [self._one(x) for x in _unbatched(data)]
        self._assert_success(res)
        return res.json()

    def _one(self, data: dict) -> dict:
        res = http_request(self.base_url + "/generate", json=data, api_key=self.api_key, verify=self.verify)
        self._assert_success(res)
        return res.json()

    def _assert_success(self, res) -> None:
        """SGLang's, also for an error that is not JSON (a router's plain-text 4xx/5xx): its status and text."""
        if res.status_code == 200:
            return
        raw = res.text if hasattr(res, "text") else res.resp.read().decode("utf-8", "replace")
        try:
            content = json.loads(raw)
        except ValueError:
            content = f"{res.status_code} {raw.strip()}"
        raise RuntimeError(content)

    def _add_images(self, s, data) -> None:  # the one hook SGLang calls with both executor and body
        super()._add_images(s, data)
        if not self.is_aspd or not isinstance(data.get("text"), str):
            return
        data["rid"] = s.sid
        commit = data.get("sampling_params", {}).get("max_new_tokens") == 0
        with self._lock:
            self._sent[s.sid] = data["text"]
            if s.fork_start_text_pos is not None:
                self._fork_prefix.setdefault(s.sid, s.text_[:s.fork_start_text_pos])
            if commit:
                self._committed[s.sid] = data["text"]
            else:
                self._committed.pop(s.sid, None)
                if self.seed is not None:  # SGLang's name for it: routers forward it
                    data["sampling_params"].setdefault("sampling_seed", self.seed)
                if s.sid in self._adaptive:
                    bias = self._adaptive.pop(s.sid)
                    bias = self.fork_bias if bias is None else bias
                    opts = {"adaptive": True} | ({} if bias is None else {"fork_bias": bias})
                    data["session_params"] = {"aspd": opts}  # the one field routers forward as written


def _ours(res) -> bool:
    """An answer from `aspd serve` (its errors are JSON); a router's 404 for a route it lacks is empty."""
    try:
        body = res.json()
    except (ValueError, json.JSONDecodeError):
        return False
    return isinstance(body, dict)


def _found(res, check) -> bool:
    if res.status_code == 404:  # the rids are not there: the router sent them elsewhere, or they were evicted
        return False
    check(res)
    return True


def _batched(data: dict) -> bool:
    ids = data.get("input_ids")
    return isinstance(data.get("text"), list) or bool(ids and isinstance(ids[0], list))


def _unbatched(data: dict) -> list[dict]:
    key = "text" if isinstance(data.get("text"), list) else "input_ids"
    sps = data.get("sampling_params")
    return [{**data, key: x} | ({"sampling_params": sps[i]} if isinstance(sps, list) else {})
            for i, x in enumerate(data[key])]
