"""The serving loop: one thread owns the engine and runs every request of the server, step by step.

Requests arrive from any thread (`submit`) and wait in the scheduler's bounded queue. Between
steps the loop admits what fits: it builds the request's sequence (continuing or forking a held
session, or loading the longest cached prefix from the radix cache), prefills what is not cached,
and starts the engine's step generator. Each step then runs ONE forward over the pending tokens
of all running requests (serial streams and every live branch of every ASPD block) and hands each
generator its logits; finished requests leave, new ones join before the next step.

Sessions: a request that names a `rid` leaves its sequence held under that rid when it ends. A
later request with the same rid whose text extends the session's text continues it; a request
with a new rid whose text extends a session's text starts from a copy of it (a forked branch);
`join` grafts such branches back onto their parent's sequence (the ASPD KV join over HTTP).

Everything that touches the engine runs on the loop's thread; other threads talk to it through
the inbox (commands) and per-request `emit` callbacks (events).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from .engine import Engine, EngineError, Mode
from .model_runner import Forward, KVSlice
from .outputs import FinishReason, GenerationOutput, token_logprob
from .radix_cache import RadixCache
from .run import Run
from .sampling import SamplingParams
from .scheduler import QueueFull, Scheduler, SchedulerConfig
from .sequence import SeqState

log = logging.getLogger("aspd.serve")


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _libc()


def give_back_memory() -> None:
    """glibc keeps freed K/V buffers in its heap (its mmap threshold rises as large blocks are freed),
    so a server's RSS would never come down after sessions end: hand the free pages back."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _first_logprob_token(req: Request) -> int:
    """The first prompt token whose log-prob is returned (`logprob_start_len`, within the prompt)."""
    return max(min(req.logprobs.start, len(req.ids) - 1), 0)


class NotFound(EngineError):
    """An unknown rid (404)."""


@dataclass(frozen=True)
class ServeConfig:
    max_running: int = 16
    max_waiting: int = 64
    cache_tokens: int = 32768  # radix prefix cache budget; 0 turns prefix caching off
    max_sessions: int = 256  # held rid sessions (LRU)
    session_tokens: int = 32768  # and their tokens: each holds its own KV (~23 KB a token for SmolLM2-135M)
    prefill_chunk: int = 128  # prompt tokens per forward: a long prompt interleaves with running decodes
    prefill_share: float = 0.3  # while others decode, prompt chunks take at most this share of the time


@dataclass(frozen=True)
class LogprobSpec:
    start: int  # first prompt token whose log-prob is returned
    top: int = 0  # alternatives per token


@dataclass(frozen=True)
class Event:
    """What the loop tells a request's owner: its text so far (cumulative), or the end."""

    text: str
    done: bool = False
    result: Result | None = None
    error: str | None = None
    status: int = 200


@dataclass(frozen=True)
class Result:
    rid: str
    output: GenerationOutput
    prompt_tokens: int
    cached_tokens: int
    input_logprobs: list[tuple[float | None, int, list[tuple[float, int]]]] | None
    latency_s: float


@dataclass(eq=False)
class Request:
    params: SamplingParams
    emit: Callable[[Event], None]
    text: str | None = None
    input_ids: list[int] | None = None
    rid: str | None = None
    mode: Mode = "ar"
    logprobs: LogprobSpec | None = None
    stream: bool = False
    # the loop's state
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ids: list[int] = field(default_factory=list)
    seq: SeqState | None = None
    gen: Any = None
    fwd: Forward | None = None
    run: Run | None = None  # the request's decoding run: its steps, its text so far (streaming), its output
    sent: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    input_logprobs: list | None = None
    t0: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    lp_from: int | None = None  # first prompt row whose log-probs are computed
    chunks: int = 0  # prompt chunks computed
    prompt_lps: dict[int, tuple] = field(default_factory=dict)  # prompt token index -> its log-prob triple


@dataclass
class Session:
    text: str
    seq: SeqState


@dataclass
class Counters:
    requests: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    prefill_tokens: int = 0  # prompt tokens computed
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache or a session
    generated_tokens: int = 0
    steps: int = 0
    batched_rows: int = 0  # sum over steps of the requests in the step


class ServingLoop:
    def __init__(self, engine: Engine, config: ServeConfig = ServeConfig()):
        if config.prefill_chunk < 1 or not 0.0 < config.prefill_share <= 1.0:
            raise ValueError("prefill_chunk must be >= 1 and prefill_share in (0, 1]")
        self.engine, self.config = engine, config
        self.scheduler: Scheduler[Request] = Scheduler(SchedulerConfig(
            max_running=config.max_running, max_waiting=config.max_waiting,
            max_tokens=engine.max_len * config.max_running))
        self.cache = RadixCache(config.cache_tokens, split=lambda v, k: v.split(k)) if config.cache_tokens > 0 else None
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.prefilling: deque[Request] = deque()  # started, prompt not yet all computed (oldest first)
        self._credit = 0.0  # seconds of prompt computing that decode steps have paid for
        self.active_rids: set[str] = set()
        self.counters = Counters()
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="aspd-engine", daemon=True)

    # ----------------------------------------------------------------- API (any thread)

    def start(self) -> ServingLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(lambda: None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, req: Request) -> None:
        """Queue a request; its events arrive through `req.emit` (429 when the queue is full)."""
        self._inbox.put(lambda: self._admit_to_queue(req))

    def cancel(self, req: Request) -> None:
        """The client went away: drop the request and free what it holds."""
        self._inbox.put(lambda: self._cancel(req))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the loop's thread between steps (joins, cache flushes, statistics)."""
        fut: Future = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as e:  # handed to the caller
                fut.set_exception(e)
        self._inbox.put(run)
        return fut

    # ----------------------------------------------------------------- the loop

    def _main(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            self._drain(block=self.scheduler.idle)
            self._admit()
            # A prompt's first chunk goes at once (a short prompt starts now); the rest of a long one
            # waits for the time that decode steps pay for, so running streams keep their pace.
            fresh = next((r for r in self.prefilling if not r.chunks), None)
            if fresh is not None or (self.prefilling and (self._credit >= 0 or not self._decoding())):
                t = time.perf_counter()
                self._prefill_chunk(fresh or self.prefilling[0])
                self._credit = min(self._credit, 0.0) - (time.perf_counter() - t)
            if self.scheduler.running:
                t = time.perf_counter()
                if self._step():  # decode time earns prompt time: share / (1 - share) of it
                    share = self.config.prefill_share
                    self._credit += (time.perf_counter() - t) * share / max(1.0 - share, 1e-9)

    def _decoding(self) -> bool:
        return any(r.fwd is not None for r in self.scheduler.running_requests())

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                cmd()
            except Exception:
                log.exception("a serving-loop command failed")
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit_to_queue(self, req: Request) -> None:
        self.counters.requests += 1
        try:
            if not req.ids:  # the server tokenizes before it submits; a direct caller may not have
                req.ids = list(req.input_ids) if req.input_ids is not None else self.engine.encode(req.text or "")
            if not req.ids:
                raise EngineError("the prompt is empty")
            need = len(req.ids) + req.params.max_new_tokens
            if need > self.engine.max_len:
                raise EngineError(f"the prompt has {len(req.ids)} tokens and max_new_tokens is "
                                  f"{req.params.max_new_tokens}: {need} tokens; the model's context window is "
                                  f"{self.engine.max_len}")
            if req.rid is not None and req.rid in self.active_rids:
                raise EngineError(f"rid {req.rid!r} is already running")
            self.scheduler.submit(req, need)
        except QueueFull as e:
            self.counters.rejected += 1
            req.emit(Event("", done=True, error=str(e), status=429))
            return
        except (EngineError, UnicodeError, ValueError, TypeError) as e:  # the tokenizer's errors are the input's
            self.counters.failed += 1
            req.emit(Event("", done=True, error=f"the prompt cannot be used: {e}", status=400))
            return
        if req.rid is not None:
            self.active_rids.add(req.rid)
        self._admit()  # a free slot is taken now, so the queue bound means what it says

    def _admit(self) -> None:
        while self.scheduler.can_admit():
            req = self.scheduler.admit()
            try:
                self._start(req)
            except EngineError as e:
                self._fail(req, str(e), 400)
            except Exception as e:
                log.exception("request %s failed to start", req.id)
                self._fail(req, f"internal error: {e}", 500)

    def _step(self) -> bool:
        """One decode step of every running request (False: none was decoding)."""
        batch = [r for r in self.scheduler.running_requests() if r.fwd is not None]
        if not batch:
            return False
        try:
            logits = self.engine.runner.forward_many([r.fwd for r in batch])
        except Exception as e:
            log.exception("a batched forward failed")
            for r in batch:
                self._fail(r, f"internal error: {e}", 500)
            return False
        self.counters.steps += 1
        self.counters.batched_rows += len(batch)
        for r, row in zip(batch, logits):
            try:
                r.fwd = r.gen.send(row)
            except StopIteration as done:
                self._finish(r, done.value)
                continue
            except EngineError as e:
                self._fail(r, str(e), 400)
                continue
            except Exception as e:
                log.exception("request %s failed", r.id)
                self._fail(r, f"internal error: {e}", 500)
                continue
            if r.stream:
                self._stream(r)
        return True

    # ----------------------------------------------------------------- a request's life

    def _start(self, req: Request) -> None:
        """Set up the request's sequence; its prompt is computed a chunk per loop turn (`_prefill_chunk`)."""
        if req.logprobs is not None:
            req.lp_from = max(_first_logprob_token(req) - 1, 0)
        req.seq, req.cached_tokens = self._sequence(req, req.lp_from)
        req.prompt_tokens = req.seq.length
        self.counters.prefill_tokens += req.prompt_tokens - req.cached_tokens
        self.counters.cached_tokens += req.cached_tokens
        self.prefilling.append(req)

    def _prefill_chunk(self, req: Request) -> None:
        """One chunk of a request's prompt (the last one starts its decoding): a long prompt delays
        running streams by a chunk's forward now and then, never by its whole prefill. Prompt
        log-probs are taken chunk by chunk too, so no [prompt x vocab] table is ever whole."""
        req.chunks += 1
        seq, p = req.seq, req.params
        final_keep = 1 if p.max_new_tokens > 0 else 0
        left = len(seq.serial.pending) - final_keep
        last = left <= self.config.prefill_chunk
        keep = final_keep if last else len(seq.serial.pending) - self.config.prefill_chunk
        try:
            first_row = max(req.lp_from, len(seq.written)) if req.lp_from is not None else None
            if first_row is not None and first_row >= len(seq.written) + len(seq.serial.pending) - keep:
                first_row = None  # this chunk ends before the rows asked for
            rows = self.engine.prefill(seq, keep=keep, logits_from=first_row)
            if rows is not None:
                self._prompt_logprobs(req, rows, first_row)
            if not last:
                return
            self.prefilling.remove(req)
            self._cache_insert(seq)
            if req.logprobs is not None:
                req.input_logprobs = [req.prompt_lps.get(i, (None, req.ids[i], []))
                                      for i in range(_first_logprob_token(req), len(req.ids))]
                req.prompt_lps = {}
            req.run = self.engine.start(seq, p, req.mode, logprobs=req.logprobs.top if req.logprobs else None)
            req.gen = req.run.steps()
            try:
                req.fwd = next(req.gen)
            except StopIteration as done:
                self._finish(req, done.value)
        except EngineError as e:
            self._fail(req, str(e), 400)
        except Exception as e:
            log.exception("request %s failed in prefill", req.id)
            self._fail(req, f"internal error: {e}", 500)

    def _sequence(self, req: Request, lp_from: int | None) -> tuple[SeqState, int]:
        """The request's sequence and how many of its prompt tokens need no computing."""
        eng = self.engine
        if req.text is not None and lp_from is None:
            own = self.sessions.get(req.rid) if req.rid is not None else None
            if own is not None and req.text.startswith(own.text):
                del self.sessions[req.rid]  # continued: it is the request's now
                n = own.seq.length
                eng.extend(own.seq, req.text[len(own.text):])
                return own.seq, n
            if own is not None:  # the client rewrote the session's text: start over
                self._drop_session(req.rid)
            parent = self._parent_session(req.text)
            if parent is not None:
                delta = req.text[len(parent.text):]
                if self.cache is None:  # no prefix reuse: recompute the parent's tokens (a join still fits)
                    return eng.new_sequence(eng.tokens(parent.seq) + eng.encode(delta)), 0
                seq = eng.copy_sequence(parent.seq)
                eng.extend(seq, delta)
                return seq, parent.seq.length
        ids = req.ids
        limit = len(ids) - 1 if lp_from is None else min(len(ids) - 1, lp_from)
        m = self.cache.match(ids[:limit]) if self.cache is not None and limit > 0 else None
        if m is not None and m.length:
            return eng.new_sequence(ids, prefix=KVSlice.concat([n.value for n in m.path])), m.length
        return eng.new_sequence(ids), 0

    def _parent_session(self, text: str) -> Session | None:
        """The session whose text is the longest prefix of `text` (a branch forked off it)."""
        best = None
        for s in self.sessions.values():
            if text.startswith(s.text) and (best is None or len(s.text) > len(best.text)):
                best = s
        return best

    def _cache_insert(self, seq: SeqState) -> None:
        """Offer the sequence's computed serial prefix to the radix cache (only what is new)."""
        if self.cache is None:
            return
        toks = self.engine.cacheable_prefix(seq)
        m = self.cache.match(toks)
        new = len(toks) - m.length
        if new <= 0 or not self.cache.can_insert(new):
            return
        kv = seq.kv.gather(range(m.length, len(toks)))
        self.cache.insert(toks, kv, start=m.length)

    def _prompt_logprobs(self, req: Request, rows: torch.Tensor, first_row: int) -> None:
        """Row k holds the log-probs at prompt index first_row + k: those of the token after it."""
        start = _first_logprob_token(req)
        for k in range(rows.shape[0]):
            i = first_row + k + 1
            if start <= i < len(req.ids):
                req.prompt_lps[i] = token_logprob(rows[k], req.ids[i], req.logprobs.top)

    def _stream(self, req: Request) -> None:
        if req.run is None:
            return
        text = _stable(req.run.partial_text(), req.params.stop)
        if len(text) > len(req.sent) and text.startswith(req.sent):
            req.sent = text
            req.emit(Event(text))

    def _finish(self, req: Request, out: GenerationOutput) -> None:
        self.scheduler.finish(req)
        self._end_rid(req)
        self.counters.finished += 1
        self.counters.generated_tokens += out.completion_tokens
        seq = req.seq
        if not seq.closed:
            self._cache_insert(seq)
        if req.rid is not None and req.text is not None and not seq.closed:
            self._hold(req.rid, Session(req.text + out.text, seq))
        else:
            self.engine.release(seq)
        result = Result(rid=req.rid or req.id, output=out, prompt_tokens=req.prompt_tokens,
                        cached_tokens=req.cached_tokens, input_logprobs=req.input_logprobs,
                        latency_s=time.perf_counter() - req.t0)
        req.emit(Event(out.text, done=True, result=result))

    def _fail(self, req: Request, message: str, status: int) -> None:
        self.scheduler.cancel(req)
        self._unqueue(req)
        self._end_rid(req)
        self.counters.failed += 1
        if req.seq is not None:
            self.engine.release(req.seq)
        req.emit(Event(req.sent, done=True, error=message, status=status))

    def _cancel(self, req: Request) -> None:
        if req.cancelled or not self.scheduler.cancel(req):
            return
        req.cancelled = True
        self._unqueue(req)
        self._end_rid(req)
        self.counters.cancelled += 1
        if req.gen is not None:
            req.gen.close()
        if req.seq is not None:
            self.engine.release(req.seq)

    def _unqueue(self, req: Request) -> None:
        if req in self.prefilling:
            self.prefilling.remove(req)

    def _end_rid(self, req: Request) -> None:
        if req.rid is not None:
            self.active_rids.discard(req.rid)

    # ----------------------------------------------------------------- sessions and joins

    def _hold(self, rid: str, session: Session) -> None:
        self._drop_session(rid)
        if session.seq.kv.capacity > self.config.session_tokens:  # over the whole budget: not held (a session
            self.engine.release(session.seq)  # only saves recomputing; its text still works without it)
            give_back_memory()
            return
        self.sessions[rid] = session
        self._evict()

    def _evict(self) -> None:
        """Least recently used sessions go until both bounds hold."""
        cfg = self.config
        evicted = False
        while self.sessions and (len(self.sessions) > cfg.max_sessions or self.session_tokens > cfg.session_tokens):
            _, s = self.sessions.popitem(last=False)
            self.engine.release(s.seq)
            evicted = True
        if evicted:
            give_back_memory()

    @property
    def session_tokens(self) -> int:
        return sum(s.seq.kv.capacity for s in self.sessions.values())  # the memory held, not just the tokens

    def _drop_session(self, rid: str, trim: bool = True) -> None:
        s = self.sessions.pop(rid, None)
        if s is not None:
            self.engine.release(s.seq)
            if trim:
                give_back_memory()

    def join(self, src_rids: list[str], dst_rid: str) -> None:
        """On the loop's thread: graft the branch sessions onto the destination session (SGLang's
        concate_and_append_request, as the ASPD KV join)."""
        if not src_rids:
            raise EngineError("src_rids is empty")
        if dst_rid in src_rids or len(set(src_rids)) != len(src_rids):
            raise EngineError("src_rids must be distinct and must not contain dst_rid")
        for rid in (*src_rids, dst_rid):
            if rid in self.active_rids:
                raise EngineError(f"rid {rid!r} is still running")
            if rid not in self.sessions:
                raise NotFound(f"unknown rid {rid!r}: only requests sent with a rid are kept for joins "
                               "(aspd_lang.AspdEndpoint sends them)")
        dst = self.sessions[dst_rid]
        srcs = [self.sessions[r] for r in src_rids]
        for rid, s in zip(src_rids, srcs):
            if not s.text.startswith(dst.text):
                raise EngineError(f"the text of {rid!r} does not continue the text of {dst_rid!r}")
        self.engine.graft(dst.seq, [s.seq for s in srcs])
        dst.text += "".join(s.text[len(dst.text):] for s in srcs)
        for rid in src_rids:
            self._drop_session(rid, trim=False)
        give_back_memory()  # once for all the branches
        self.sessions.move_to_end(dst_rid)
        self._evict()

    def abort(self, rid: str) -> bool:
        """On the loop's thread: drop a held session, or end the running or waiting request with that
        rid; its client gets what was written so far with finish reason `abort`, as in SGLang."""
        for r in [*self.scheduler.running_requests(), *(r for r, _ in self.scheduler.waiting)]:
            if r.rid == rid:
                try:
                    out = r.run.output() if r.run is not None else None
                except Exception:  # a run cut at an odd point: its text is lost, the reply is not
                    log.exception("request %s: no output at its abort", r.id)
                    out = None
                self._cancel(r)
                out = (out or GenerationOutput.empty(r.prompt_tokens)).model_copy(
                    update={"finish_reason": FinishReason.ABORT})
                r.emit(Event(out.text, done=True, result=Result(
                    rid=rid, output=out, prompt_tokens=r.prompt_tokens, cached_tokens=r.cached_tokens,
                    input_logprobs=r.input_logprobs, latency_s=time.perf_counter() - r.t0)))
                return True
        known = rid in self.sessions
        self._drop_session(rid)
        return known

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def stats(self) -> dict:
        """On the loop's thread: counters and what is live (the leak checks read this)."""
        gc.collect()
        c = self.counters
        return {
            **c.__dict__,
            "running": len(self.scheduler.running),
            "prefilling": len(self.prefilling),
            "waiting": len(self.scheduler.waiting),
            "sessions": len(self.sessions),
            "session_tokens": self.session_tokens,
            "session_budget": self.config.session_tokens,
            "live_sequences": self.engine.live_sequences,
            "cache_tokens": self.cache.size if self.cache is not None else 0,
            "cache_budget": self.config.cache_tokens,
            "mean_batch": c.batched_rows / c.steps if c.steps else 0.0,
        }


def complete(engine: Engine, prompts: list[list[int]], params: SamplingParams, mode: Mode = "ar",
             batch: int = 16) -> Iterator[tuple[int, Event]]:
    """Answer many prompts (token ids) offline with continuous batching; yields (index, last event)
    in the order they finish."""
    loop = ServingLoop(engine, ServeConfig(max_running=batch, max_waiting=len(prompts) + 1)).start()
    done: queue.Queue = queue.Queue()
    try:
        for i, ids in enumerate(prompts):
            loop.submit(Request(params=params, emit=lambda ev, i=i: done.put((i, ev)) if ev.done else None,
                                input_ids=ids, mode=mode))
        for _ in prompts:
            yield done.get()
    finally:
        loop.stop()


def complete_all(engine: Engine, prompts: list[list[int]], params: SamplingParams, mode: Mode = "ar",
                 batch: int = 16) -> list[GenerationOutput]:
    """`complete`, collected in prompt order; the first failed answer raises."""
    out: list[GenerationOutput | None] = [None] * len(prompts)
    for i, ev in complete(engine, prompts, params, mode, batch):
        if ev.error:
            raise EngineError(f"prompt {i}: {ev.error}")
        out[i] = ev.result.output
    return out


def _stable(text: str, stops: tuple[str, ...]) -> str:
    """The part of a growing text that can be sent: without a trailing incomplete character, and
    without a tail that could still turn into a stop string (it would be cut)."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[:len(text) - hold]
