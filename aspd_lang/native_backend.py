"""NativeBackend: SGLang's interpreter running on the in-process engine.

SGLang runs each forked branch on its own thread and calls `generate` from all of them at once,
with the full text each time. This backend maps every stream executor to the engine: a root
executor to a session (`runtime/sessions.py`, as `aspd serve` holds its rids: its sequence is
extended by the text's delta since the last call), a forked child to a branch of a plain block on
the sequence of the session that holds exactly its fork point. Sibling `generate` calls meet at a
rendezvous and decode as one set of engine branches over the shared prefix KV; the join
(`concatenate_and_append`) splices the branch KV into the parent: no re-prefill.

Siblings are known exactly when the compiled program announces them (`expect_branches`); for
hand-written SGLang programs the first siblings to arrive wait `window_s` for the others.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod, token_length_normalized
from sglang.lang.interpreter import StreamExecutor
from sglang.lang.ir import SglSamplingParams

from runtime.api import meta_info, sglang_sampling
from runtime.engine import Engine, GenerationOutput
from runtime.errors import UserError
from runtime.outcomes import Result
from runtime.roles import role_format
from runtime.sampling import SamplingParams
from runtime.sessions import Session, Sessions, joined_text

from . import interpreter_guard
from .roles import sglang_template


class BackendError(UserError, ValueError):
    """A request NativeBackend cannot serve (an unsupported sampling option, a broken fork)."""


def to_sampling(sp: SglSamplingParams, defaults: SamplingParams) -> SamplingParams:
    """SGLang's sampling parameters as the engine's: the server's one mapping (`runtime.api`), the
    backend's defaults for what SGLang does not set, its refusals as BackendError."""
    try:
        return sglang_sampling(sp, defaults, server="NativeBackend", grammars=True)  # regex, json_schema
    except ValueError as e:  # BadRequest, or a value SamplingParams refuses (pydantic names the field)
        raise BackendError(str(e)) from None


@dataclass(eq=False)
class _Root(Session):
    """An executor's session: `text` is what the engine holds for it, as SGLang sees it."""

    arguments: int = 0  # id() of the executor's arguments dict, shared with its forked children
    group: _Group | None = None
    ended: bool = False  # the program ended; free the sequence once its queued commands ran


@dataclass(eq=False)
class _Child:
    root: _Root
    group: _Group
    branch: int
    text: str
    done: bool = False


@dataclass(eq=False)
class _Group:
    """The forked children of one root: a plain parallel block on its sequence."""

    root: _Root
    expected: set[str] | None = None  # the siblings announced to decode together (None: unknown)
    children: dict[str, _Child] = field(default_factory=dict)
    waiting: dict[str, SamplingParams] = field(default_factory=dict)
    results: dict[str, GenerationOutput | BaseException] = field(default_factory=dict)
    last_arrival: float = 0.0
    running: bool = False


class NativeBackend(BaseBackend):
    supports_aspd = True

    def __init__(self, engine: Engine, defaults: SamplingParams | None = None, window_s: float = 0.02):
        interpreter_guard.install()  # a failed call ends the program with its error, never a hang
        super().__init__()
        self.engine = engine
        self.defaults = defaults or SamplingParams()
        self.window_s = window_s
        self.support_concate_and_append = True
        self.chat_template = sglang_template(role_format(engine.tok))
        self.lock = threading.RLock()  # the engine runs one call at a time
        self.cond = threading.Condition(self.lock)
        self.roots: Sessions[_Root] = Sessions()  # by executor id (or "orphan-" + a child's, see _child)
        self.children: dict[str, _Child] = {}
        self.adaptive_next: dict[str, float | None] = {}  # executors whose next gen is adaptive: its fork bias
        self.stats = {"generate_calls": 0, "batched_calls": 0, "batches": 0}

    def get_model_name(self) -> str:
        return self.engine.loaded.name

    # ----------------------------------------------------------------- executors

    def _root(self, s: StreamExecutor) -> _Root:
        """The root state for an executor, its engine sequence brought up to its text."""
        st = self.roots.get(s.sid)
        if st is None:
            st = self._adopt(s) or _Root(seq=None, text="", arguments=id(s.arguments))
            self.roots.hold(s.sid, st)
        if st.group is not None:  # children ended without a KV join (gather_variable): drop their block
            self._drop_group(st)
        text = s.text_
        if st.seq is None or st.seq.closed or not st.follow(self.engine, text):
            st.seq, st.text = self.engine.new_sequence(text), text  # first use, or text rewritten
        return st

    def _child(self, s: StreamExecutor) -> _Child | None:
        """A forked executor's branch (registered on first sight), or None if it has no parent here."""
        ch = self.children.get(s.sid)
        if ch is not None or s.fork_start_text_pos is None:
            return ch
        prefix = s.text_[:s.fork_start_text_pos]
        root = self.roots.holding(prefix, lambda r: r.arguments == id(s.arguments) and r.seq is not None)
        if root is None:  # the parent never committed its prefix (SGLang skips that when its text lags): do it here
            root = _Root(seq=self.engine.new_sequence(prefix), text=prefix, arguments=id(s.arguments))
            self.roots.hold(f"orphan-{s.sid}", root)
        if root.group is None:
            self.engine.open_block(root.seq)
            root.group = _Group(root=root)
        ch = _Child(root=root, group=root.group, branch=self.engine.add_branch(root.seq), text=prefix)
        self.children[s.sid] = root.group.children[s.sid] = ch
        return ch

    def _adopt(self, s: StreamExecutor) -> _Root | None:
        """A parent first seen after its children: take over the root they created for it."""
        for key, r in list(self.roots.items()):
            if key.startswith("orphan-") and r.arguments == id(s.arguments) and s.text_.startswith(r.text):
                return self.roots.take(key)
        return None

    def _release(self, s: StreamExecutor, calls_running: int) -> None:
        """Free an ended program's sequence once nothing is queued on its executor (SGLang calls
        end_program while the executor may still have commands to run)."""
        st = self.roots.get(s.sid)
        if st is None or not st.ended or st.group is not None:
            return
        queue = getattr(s, "queue", None)
        if queue is None or queue.unfinished_tasks <= calls_running + 1:  # + the end-of-program marker
            self.roots.take(s.sid)

    def _sync_child(self, ch: _Child, s: StreamExecutor) -> None:
        text = s.text_
        if not text.startswith(ch.text):
            raise BackendError("a forked branch's text was rewritten; NativeBackend cannot follow it")
        if len(text) > len(ch.text):
            self.engine.branch_extend(ch.root.seq, ch.branch, text[len(ch.text):])
            ch.text = text

    def _drop_group(self, root: _Root) -> None:
        self.engine.join(root.seq, discard=True)
        for sid in root.group.children:
            self.children.pop(sid, None)
        root.group = None

    def expect_branches(self, parent: StreamExecutor, children: list[StreamExecutor]) -> None:
        """The compiled program announces which children decode together now (all of a fork's, or
        one at a time in serial mode): they batch without waiting a window."""
        with self.lock:
            if parent.sid not in self.roots:
                self._root(parent)
            for c in children:
                if self._child(c) is None:
                    raise BackendError("a fork whose parent text is not in the engine")
            self.children[children[0].sid].group.expected = {c.sid for c in children}

    def branch_done(self, sid: str) -> None:
        """Called on a branch's executor thread after its last command (see sglang_compile)."""
        with self.lock:
            ch = self.children.get(sid)
            if ch is not None:
                ch.done = True
                self.cond.notify_all()

    def next_gen_adaptive(self, sid: str, fork_bias: float | None = None) -> None:
        """Called on an executor's thread right before an adaptive gen (see sglang_compile)."""
        with self.lock:
            if sid in self.children:
                raise BackendError("an adaptive gen inside a forked branch (blocks do not nest)")
            self.adaptive_next[sid] = fork_bias  # consumed by the next generate of this executor

    # ----------------------------------------------------------------- SGLang backend API

    def commit_lazy_operations(self, s: StreamExecutor) -> None:
        """Before a fork: compute the shared prefix once. Before a join: a branch's last text."""
        with self.lock:
            ch = self._child(s)
            if ch is not None:
                self._sync_child(ch, s)
                ch.done = True
                self.cond.notify_all()
            elif s.text_:
                st = self._root(s)
                if st.seq.serial.pending:
                    self.engine.prefill(st.seq)

    def generate(self, s: StreamExecutor, sampling_params: SglSamplingParams):
        params = to_sampling(sampling_params, self.defaults)
        with self.lock:
            self.stats["generate_calls"] += 1
            ch = self._child(s)
            if ch is None:
                st = self._root(s)
                adaptive = s.sid in self.adaptive_next
                bias = self.adaptive_next.pop(s.sid, None)
                if bias is not None:
                    params = params.model_copy(update={"fork_bias": bias})
                out = self.engine.generate(st.seq, params, mode="aspd" if adaptive else "ar")
                st.text += out.text
                self._release(s, 1)
                return out.text, _meta(out, s.sid)
            try:
                self._sync_child(ch, s)
                out = self._rendezvous(ch, s.sid, params)
            except BaseException:
                self._child_failed(ch)
                raise
            ch.text += out.text
            return out.text, _meta(out, s.sid)

    def _child_failed(self, ch: _Child) -> None:
        """A branch whose call failed takes no further part: its siblings stop waiting for it."""
        ch.done = True
        self.cond.notify_all()

    def _rendezvous(self, ch: _Child, sid: str, params: SamplingParams) -> GenerationOutput:
        """Wait until every live sibling waits (or the window passes), then decode them together."""
        g = ch.group
        g.waiting[sid] = params
        g.last_arrival = time.perf_counter()
        self.cond.notify_all()
        while sid not in g.results:
            group = g.children if g.expected is None else g.expected
            live = [k for k in group if k in g.children and not g.children[k].done]
            ready = all(k in g.waiting for k in live)
            quiet = g.expected is not None or time.perf_counter() - g.last_arrival >= self.window_s
            if not g.running and ready and quiet:
                self._run_batch(g)
            else:
                self.cond.wait(timeout=self.window_s / 4)
        res = g.results.pop(sid)
        if isinstance(res, BaseException):
            raise res
        return res

    def _run_batch(self, g: _Group) -> None:
        batch, g.waiting = dict(g.waiting), {}
        g.running = True
        try:
            requests = {g.children[sid].branch: p for sid, p in batch.items()}
            out = self.engine.decode_branches(g.root.seq, requests)
            self.stats["batches"] += 1
            self.stats["batched_calls"] += len(batch)
            for k, sid in enumerate(batch):
                g.results[sid] = _branch_output(out, k)
        except Exception as e:  # every waiting branch hears of it, not just the leader
            for sid in batch:
                g.results[sid] = e
        finally:
            g.running = False
            self.cond.notify_all()

    def select(self, s: StreamExecutor, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod | None = None) -> ChoicesDecision:
        method = choices_method or token_length_normalized
        if method.requires_unconditional_logprobs:
            raise BackendError("NativeBackend does not compute unconditional likelihoods")
        with self.lock:
            ch = self._child(s)
            try:
                if ch is None:
                    seq, branch = self._root(s).seq, None
                else:
                    self._sync_child(ch, s)
                    seq, branch = ch.root.seq, ch.branch
                logprobs = self.engine.score(seq, choices, branch)
            except BaseException:
                if ch is not None:
                    self._child_failed(ch)
                raise
            if ch is None:
                self._release(s, 1)
        ids = [self.engine.encode(c) for c in choices]
        triples = [[[lp, t, None] for lp, t in zip(lps, x)] for lps, x in zip(logprobs, ids)]
        decision = method(choices=choices, normalized_prompt_logprobs=[sum(x) / len(x) for x in logprobs],
                          input_token_logprobs=triples, output_token_logprobs=[[] for _ in choices])
        # The chosen text is appended by the interpreter and reaches the engine with the next call.
        return decision

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        """The ASPD join: the branches' KV stays where it is, in the order SGLang lists them."""
        with self.lock:
            first = self.children.get(src_rids[0]) if src_rids else None
            if first is None:
                raise BackendError("concatenate_and_append: no forked branches to join for this program")
            root = first.root
            for key in [k for k, r in self.roots.items() if r is root]:  # a parent first seen here
                self.roots.take(key)
            self.roots.hold(dst_rid, root)
            by_sid = root.group.children
            missing = [r for r in src_rids if r not in by_sid]
            if missing or len(src_rids) != len(by_sid):
                raise BackendError(f"concatenate_and_append: branches {missing or 'unlisted'} are not this fork's")
            self.engine.join(root.seq, order=[by_sid[r].branch for r in src_rids])
            root.text = joined_text(root.text, [by_sid[r].text for r in src_rids])
            for sid in by_sid:
                self.children.pop(sid, None)
            root.group = None

    def end_program(self, s) -> None:
        with self.lock:
            for ex in s if isinstance(s, list) else [s]:
                ch = self.children.get(ex.sid)
                if ch is not None:
                    ch.done = True
                    self.cond.notify_all()
                elif ex.sid in self.roots:
                    st = self.roots.get(ex.sid)
                    st.ended = True
                    if st.group is not None and all(c.done for c in st.group.children.values()):
                        self._drop_group(st)  # branches that failed before their join
                    self._release(ex, 0)

    def flush_cache(self) -> None:
        with self.lock:
            for key in [k for k, r in self.roots.items() if r.group is None]:
                self.roots.take(key)


def _branch_output(out: GenerationOutput, k: int) -> GenerationOutput:
    """The k-th branch of a batched decode, as the output of its own generate call."""
    body = out.response.blocks[0].branches[k].body
    n = out.blocks[0].branch_tokens[k]
    return out.model_copy(update=dict(text=body, completion_tokens=n, parallel_tokens=n, serial_tokens=0))


def _meta(out: GenerationOutput, sid: str) -> dict:
    """SGLang's meta_info, as the server writes it (`runtime.api.meta_info`)."""
    return meta_info(Result(rid=sid, output=out, prompt_tokens=out.prompt_tokens, cached_tokens=0,
                            input_logprobs=None, latency_s=out.total_s))
