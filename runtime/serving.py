"""The serving loop: one thread owns the engine and runs every request of the server, step by step.

Requests arrive from any thread (`submit`) and wait in the scheduler's bounded queue. Between
steps the loop admits what fits: it builds the request's sequence (continuing or forking a held
session, or loading the longest cached prefix from the radix cache) and starts computing its
prompt. Each turn then reads schedule -> forward -> postprocess: the scheduler picks at most one
prompt chunk and the decode batch, ONE forward runs the pending tokens of all decoding requests
(serial streams and every live branch of every ASPD block), and each generator samples from its
rows; finished requests leave (a request with a `rid` leaves its sequence held as a session,
`sessions.py`), new ones join before the next step.

Everything that touches the engine runs on the loop's thread; other threads talk to it through
the inbox (commands) and per-request `emit` callbacks (events ending in an `Outcome`).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from .engine import Engine, EngineError
from .model_runner import KVSlice
from .outcomes import Event, Outcome, UnknownRid
from .outputs import FinishReason, GenerationOutput
from .radix_cache import RadixCache
from .scheduler import QueueFull, Scheduler, SchedulerConfig
from .sequence import SeqState
from .serve_request import Counters, LogprobSpec, Request, ServeConfig, stable_text
from .sessions import Session, Sessions

__all__ = ["Event", "LogprobSpec", "Request", "ServeConfig", "ServingLoop"]

log = logging.getLogger("aspd.serve")


class ServingLoop:
    def __init__(self, engine: Engine, config: ServeConfig | None = None):
        config = config or ServeConfig()
        if config.prefill_chunk < 1 or not 0.0 < config.prefill_share <= 1.0:
            raise ValueError("prefill_chunk must be >= 1 and prefill_share in (0, 1]")
        self.engine, self.config = engine, config
        self.scheduler: Scheduler[Request] = Scheduler(SchedulerConfig(
            max_running=config.max_running, max_waiting=config.max_waiting,
            max_tokens=engine.max_len * config.max_running, prefill_share=config.prefill_share),
            has_step=lambda r: r.fwd is not None)
        self.cache = RadixCache(config.cache_tokens, split=lambda v, k: v.split(k)) if config.cache_tokens > 0 else None
        self.sessions: Sessions[Session] = Sessions(engine.release, config.max_sessions, config.session_tokens)
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
        """Queue a request; its events arrive through `req.emit` (REJECTED when the queue is full)."""
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
            req = self.scheduler.next_prefill()
            if req is not None:
                t = time.perf_counter()
                self._prefill_chunk(req)
                self.scheduler.paid_prefill(time.perf_counter() - t)
            batch = self.scheduler.decode_batch()
            if batch:
                t = time.perf_counter()
                logits = self._forward(batch)
                if logits is not None:
                    self._postprocess(batch, logits)
                    self.scheduler.paid_decode(time.perf_counter() - t)

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
            req.emit(Event.refused(Outcome.REJECTED, str(e)))
            return
        except (EngineError, UnicodeError, ValueError, TypeError) as e:  # the tokenizer's errors are the input's
            self.counters.failed += 1
            req.emit(Event.refused(Outcome.INVALID, f"the prompt cannot be used: {e}"))
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
                self._fail(req, str(e), Outcome.INVALID)
            except Exception as e:
                log.exception("request %s failed to start", req.id)
                self._fail(req, f"internal error: {e}", Outcome.FAILED)

    def _forward(self, batch: list[Request]) -> list[torch.Tensor] | None:
        """One forward over the pending step of every request in the batch (None: it failed)."""
        try:
            return self.engine.runner.forward_many([r.fwd for r in batch])
        except Exception as e:
            log.exception("a batched forward failed")
            for r in batch:
                self._fail(r, f"internal error: {e}", Outcome.FAILED)
            return None

    def _postprocess(self, batch: list[Request], logits: list[torch.Tensor]) -> None:
        """Each request samples from its rows: its next step, or its end."""
        self.counters.steps += 1
        self.counters.batched_rows += len(batch)
        for r, row in zip(batch, logits):
            try:
                r.fwd = r.gen.send(row)
            except StopIteration as done:
                self._finish(r, done.value)
                continue
            except EngineError as e:
                self._fail(r, str(e), Outcome.INVALID)
                continue
            except Exception as e:
                log.exception("request %s failed", r.id)
                self._fail(r, f"internal error: {e}", Outcome.FAILED)
                continue
            if r.stream:
                self._stream(r)

    # ----------------------------------------------------------------- a request's life

    def _start(self, req: Request) -> None:
        """Set up the request's sequence; its prompt is computed a chunk per loop turn (`_prefill_chunk`)."""
        if req.logprobs is not None:
            req.lp_from = max(req.first_logprob_token - 1, 0)
        req.seq, req.cached_tokens = self._sequence(req, req.lp_from)
        req.prompt_tokens = req.seq.length
        self.counters.prefill_tokens += req.prompt_tokens - req.cached_tokens
        self.counters.cached_tokens += req.cached_tokens
        self.scheduler.start_prefill(req)

    def _prefill_chunk(self, req: Request) -> None:
        """One chunk of a request's prompt (the last one starts its decoding): a long prompt delays
        running streams by a chunk's forward now and then, never by its whole prefill. Prompt
        log-probs are taken chunk by chunk too, so no [prompt x vocab] table is ever whole."""
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
                req.add_prompt_logprobs(rows, first_row)
            if not last:
                return
            self.scheduler.prefilled(req)
            self._cache_insert(seq)
            if req.logprobs is not None:
                req.collect_input_logprobs()
            req.run = self.engine.start(seq, p, req.mode, logprobs=req.logprobs.top if req.logprobs else None)
            req.gen = req.run.steps()
            try:
                req.fwd = next(req.gen)
            except StopIteration as done:
                self._finish(req, done.value)
        except EngineError as e:
            self._fail(req, str(e), Outcome.INVALID)
        except Exception as e:
            log.exception("request %s failed in prefill", req.id)
            self._fail(req, f"internal error: {e}", Outcome.FAILED)

    def _sequence(self, req: Request, lp_from: int | None) -> tuple[SeqState, int]:
        """The request's sequence and how many of its prompt tokens need no computing."""
        eng = self.engine
        if req.text is not None and lp_from is None:
            own = self.sessions.take(req.rid) if req.rid is not None else None
            if own is not None:
                n = own.seq.length
                if own.follow(eng, req.text):  # continued: it is the request's now
                    return own.seq, n
                self.sessions.free(own)  # the client rewrote the session's text: start over
            parent = self.sessions.parent(req.text)
            if parent is not None:
                if self.cache is None:  # no prefix reuse: recompute the parent's tokens (a join still fits)
                    return eng.new_sequence(eng.tokens(parent.seq) + eng.encode(req.text[len(parent.text):])), 0
                branch = parent.fork(eng)
                branch.follow(eng, req.text)
                return branch.seq, parent.seq.length
        ids = req.ids
        limit = len(ids) - 1 if lp_from is None else min(len(ids) - 1, lp_from)
        m = self.cache.match(ids[:limit]) if self.cache is not None and limit > 0 else None
        if m is not None and m.length:
            return eng.new_sequence(ids, prefix=KVSlice.concat([n.value for n in m.path])), m.length
        return eng.new_sequence(ids), 0

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

    def _stream(self, req: Request) -> None:
        text = stable_text(req.run.partial_text(), req.params.stop) if req.run is not None else ""
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
            self.sessions.hold(req.rid, Session(req.text + out.text, seq))
        else:
            self.engine.release(seq)
        req.emit(Event.finished(req.result(out)))

    def _fail(self, req: Request, message: str, outcome: Outcome) -> None:
        self.scheduler.cancel(req)
        self._end_rid(req)
        self.counters.failed += 1
        if req.seq is not None:
            self.engine.release(req.seq)
        req.emit(Event.refused(outcome, message, req.sent))

    def _cancel(self, req: Request) -> None:
        if req.cancelled or not self.scheduler.cancel(req):
            return
        req.cancelled = True
        self._end_rid(req)
        self.counters.cancelled += 1
        if req.gen is not None:
            req.gen.close()
        if req.seq is not None:
            self.engine.release(req.seq)

    def _end_rid(self, req: Request) -> None:
        if req.rid is not None:
            self.active_rids.discard(req.rid)

    # ----------------------------------------------------------------- joins, aborts, statistics

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
                raise UnknownRid(f"unknown rid {rid!r}: only requests sent with a rid are kept for joins "
                                 "(aspd_lang.AspdEndpoint sends them)")
        self.sessions.graft(self.engine, src_rids, dst_rid)

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
                r.emit(Event.finished(r.result(out)))
                return True
        return self.sessions.drop(rid)

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
            "prefilling": len(self.scheduler.prefilling),
            "waiting": len(self.scheduler.waiting),
            "sessions": len(self.sessions),
            "session_tokens": self.sessions.tokens,
            "session_budget": self.config.session_tokens,
            "live_sequences": self.engine.live_sequences,
            "cache_tokens": self.cache.size if self.cache is not None else 0,
            "cache_budget": self.config.cache_tokens,
            "mean_batch": c.batched_rows / c.steps if c.steps else 0.0,
        }
