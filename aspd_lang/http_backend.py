"""`AspdEndpoint`: SGLang's own `RuntimeEndpoint`, plus what lets `aspd serve` keep branch KV.

SGLang's HTTP client sends each executor's whole text with every request and never says which
executor a request came from, so a server cannot tell which requests a `concate_and_append`
join names. This subclass adds the executor's id as the request's `rid` (SGLang's own field) on
every single-text request, marks the request after an adaptive gen with `"aspd": true`, and takes
the chat roles the server publishes (the model's own template, as NativeBackend uses).
Everything else (the requests, streaming, select's log-probs) is SGLang's code. Against a server
that is not `aspd serve`, it behaves exactly like `RuntimeEndpoint`, with text joins.
"""

from __future__ import annotations

import contextlib
import threading

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.utils import http_request

from runtime.roles import RoleFormat

from .roles import sglang_template


class AspdEndpoint(RuntimeEndpoint):
    def __init__(self, base_url: str, **kw):
        super().__init__(base_url, **kw)
        self.is_aspd = bool(self.model_info.get("aspd"))
        self.support_concate_and_append = self.is_aspd  # a stock server has no KV join
        self.supports_aspd = self.is_aspd
        if self.is_aspd and "roles" in self.model_info:  # the server's model's own chat roles
            self.chat_template = sglang_template(RoleFormat.model_validate(self.model_info["roles"]))
        self._adaptive: set[str] = set()
        self._lock = threading.Lock()

    def next_gen_adaptive(self, sid: str) -> None:
        """Called on the executor's thread right before an adaptive gen (see sglang_compile)."""
        with self._lock:
            self._adaptive.add(sid)

    def end_program(self, s) -> None:
        """The executor ended: the server may drop what it holds for it (its session's KV). SGLang
        also calls this when the program function returns while the executor still has commands
        queued; the session is released only by a call that finds the queue drained (SGLang calls
        it again when the program's state is dropped)."""
        queue = getattr(s, "queue", None)
        if self.is_aspd and (queue is None or queue.unfinished_tasks <= 1):  # <= the end-of-program marker
            with contextlib.suppress(Exception):
                http_request(self.base_url + "/abort_request", json={"rid": s.sid}, api_key=self.api_key,
                             verify=self.verify)

    def _add_images(self, s, data) -> None:  # the one hook SGLang calls with both executor and body
        super()._add_images(s, data)
        if not self.is_aspd or not isinstance(data.get("text"), str):
            return
        data["rid"] = s.sid
        if data.get("sampling_params", {}).get("max_new_tokens") != 0:
            with self._lock:
                if s.sid in self._adaptive:
                    self._adaptive.discard(s.sid)
                    data["aspd"] = True
