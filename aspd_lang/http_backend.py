"""`AspdEndpoint`: SGLang's own `RuntimeEndpoint`, plus what lets `aspd serve` keep branch KV.

SGLang's HTTP client sends each executor's whole text with every request and never says which
executor a request came from, so a server cannot tell which requests a `concate_and_append`
join names. This subclass adds the executor's id as the request's `rid` (SGLang's own field) on
every single-text request, marks the request after an adaptive gen with `"aspd": true` (and its
`fork_bias`, if set), sends
`seed` (the run's `--seed`, as the in-process backends use it for every gen), and takes
the chat roles the server publishes (the model's own template, as NativeBackend uses). A parent
whose text SGLang never committed before its fork (it skips that while its text lags, as in a
hand-written program with only text before `s.fork(n)`) is committed at the join, so the KV join
still finds it.
Everything else (the requests, streaming, select's log-probs) is SGLang's code. Against a server
that is not `aspd serve`, it behaves exactly like `RuntimeEndpoint`, with text joins.
"""

from __future__ import annotations

import contextlib
import threading

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
        super().concatenate_and_append(src_rids, dst_rid)
        with self._lock:
            self._committed.pop(dst_rid, None)
            for rid in src_rids:
                self._committed.pop(rid, None)
                self._fork_prefix.pop(rid, None)

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
            with contextlib.suppress(Exception):
                http_request(self.base_url + "/abort_request", json={"rid": s.sid}, api_key=self.api_key,
                             verify=self.verify)

    def _add_images(self, s, data) -> None:  # the one hook SGLang calls with both executor and body
        super()._add_images(s, data)
        if not self.is_aspd or not isinstance(data.get("text"), str):
            return
        data["rid"] = s.sid
        commit = data.get("sampling_params", {}).get("max_new_tokens") == 0
        with self._lock:
            if s.fork_start_text_pos is not None:
                self._fork_prefix.setdefault(s.sid, s.text_[:s.fork_start_text_pos])
            if commit:
                self._committed[s.sid] = data["text"]
            else:
                self._committed.pop(s.sid, None)
                if self.seed is not None:
                    data["sampling_params"].setdefault("seed", self.seed)
                if s.sid in self._adaptive:
                    bias = self._adaptive.pop(s.sid)
                    bias = self.fork_bias if bias is None else bias
                    data["aspd"] = True
                    if bias is not None:
                        data["sampling_params"]["fork_bias"] = bias
