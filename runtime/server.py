"""`aspd serve`: the SGLang-compatible and OpenAI-compatible HTTP server (FastAPI + uvicorn).

Handlers validate the body (`api.py`), turn each prompt into a serving-loop `Request`, and relay
its events: one JSON answer, or server-sent events with the cumulative text (SGLang) or deltas
(OpenAI). A client that goes away mid-request cancels it: the loop frees its sequence.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from . import __version__, serving
from .api import AbortRequest, BadRequest, ChatRequest, CompletionRequest, GenerateRequest, JoinRequest
from .engine import EngineError
from .guard import Access, Guard
from .roles import role_format
from .sampling import DEFAULTS, SamplingParams
from .serving import Event, LogprobSpec, Result, ServingLoop
from .vocab import token_texts

RID_SEP = "\x1f"  # around a key's index in the rids it owns (a control character no rid may hold)
RETRY_AFTER_S = 1  # what a 429 asks the client to wait: a queue slot frees at every finished request
DEFAULT_MAX_TOKENS = 128


def error_body(status: int, message: str, kind: str | None = None) -> dict:
    """The one error shape (OpenAI's), in replies and in streams: 5xx are `server_error`, 429
    `rate_limit_error`."""
    kind = kind or ("server_error" if status >= 500 else "rate_limit_error" if status == 429 else
                    "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def error(status: int, message: str, kind: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    return JSONResponse(error_body(status, message, kind), status_code=status, headers=headers)


class _Pending:
    """A request's events, moved from the loop's thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def emit(self, ev: Event) -> None:  # called on the serving loop's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (shutdown)
            pass


def create_app(engine_loop: ServingLoop, model_name: str, defaults: SamplingParams = DEFAULTS,
               access: Access | None = None) -> FastAPI:
    """The app over a started serving loop; `defaults`' anti-loop settings apply where a request sets
    none (SGLang's frontend never sends them); `access`: API key, allowed hosts, body limit."""
    app = FastAPI(title="aspd serve", version=__version__)
    app.add_middleware(Guard, access=access or Access())
    eng = engine_loop.engine
    vocab = eng.runner.vocab_size
    roles = role_format(eng.tok)  # the model's chat roles as text, for AspdEndpoint
    max_chars = eng.max_len * max(map(len, token_texts(eng.tok)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error(400, "; ".join(msgs) or "invalid request")

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:  # 404, 405, 413 in the same shape
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------- plumbing

    def fits(text: str, field: str) -> None:
        """A length check that needs no tokenizer: no token is longer than `max_chars` characters."""
        if len(text) > max_chars:
            raise BadRequest(f"{field}: {len(text)} characters cannot fit the context window of {eng.max_len} tokens")

    async def new_request(pending: _Pending, params: SamplingParams, text: str | None, ids: list[int] | None,
                          field: str = "text", **kw) -> serving.Request:
        """Text is tokenized here, in a worker thread: neither the event loop nor the engine waits on it."""
        if ids is not None and any(not 0 <= t < vocab for t in ids):
            raise BadRequest(f"input_ids must be token ids in [0, {vocab})")
        tokens = ids
        if text is not None:
            fits(text, field)
            try:
                tokens = await asyncio.to_thread(eng.encode, text)
            except (UnicodeError, ValueError, TypeError) as e:
                raise BadRequest(f"{field}: cannot be tokenized: {e}") from None
        return serving.Request(params=params, emit=pending.emit, text=text, input_ids=ids, ids=list(tokens or ()), **kw)

    async def next_event(http: Request, pending: _Pending) -> Event | None:
        """The request's next event, or None once the client has gone away."""
        while True:
            try:
                return await asyncio.wait_for(pending.queue.get(), timeout=0.5)
            except TimeoutError:
                if await http.is_disconnected():
                    return None

    async def results(http: Request, reqs: list[serving.Request], pendings: list[_Pending]) -> list[Event] | None:
        """Submit, wait for every request's last event; None (all cancelled) if the client goes away.
        A batch enters `max_running` at a time, the next as each answer ends, so a batch larger than
        the queue still runs; the first error ends it (the rest are cancelled)."""
        window, sent = max(1, engine_loop.config.max_running), 0
        out: list[Event] = []
        try:
            for i, p in enumerate(pendings):
                while sent < min(len(reqs), i + window):
                    engine_loop.submit(reqs[sent])
                    sent += 1
                ev = await next_event(http, p)
                while ev is not None and not ev.done:
                    ev = await next_event(http, p)
                if ev is None:
                    return None
                out.append(ev)
                if ev.error is not None:
                    break
        finally:
            if len(out) < len(reqs) or out[-1].error is not None:  # gone, failed, or shutting down
                for r in reqs[:sent]:
                    engine_loop.cancel(r)
        return out

    async def events(http: Request, req: serving.Request, pending: _Pending) -> AsyncIterator[Event]:
        engine_loop.submit(req)
        done = False
        try:
            while not done and (ev := await next_event(http, pending)) is not None:
                done = ev.done
                yield ev
        finally:
            if not done:
                engine_loop.cancel(req)

    async def started(evs: AsyncIterator[Event]) -> AsyncIterator[Event] | JSONResponse:
        """Wait for a stream's first event: a request refused at once (400, 429) gets a plain error
        status instead of a 200 stream that carries the error."""
        try:
            first = await anext(evs)
        except StopAsyncIteration:
            return error(499, "the client went away")
        if first.error is not None:
            await evs.aclose()
            return first_error([first])

        async def chained() -> AsyncIterator[Event]:
            yield first
            async for ev in evs:
                yield ev
        return chained()

    def first_error(evs: list[Event]) -> JSONResponse | None:
        bad = [e for e in evs if e.error is not None]
        if not bad:
            return None
        worst = max(bad, key=lambda e: e.status)
        return error(worst.status, worst.error)

    # ------------------------------------------------------------- SGLang

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("", status_code=200 if engine_loop.alive else 503)

    @app.get("/health_generate")
    async def health_generate(http: Request) -> PlainTextResponse:
        p = _Pending(asyncio.get_running_loop())
        r = await new_request(p, SamplingParams(max_new_tokens=1), "ping", None)
        evs = await results(http, [r], [p])
        if evs is None:
            return PlainTextResponse("", status_code=499)
        [ev] = evs
        return PlainTextResponse("", status_code=200 if ev.error is None else 503)

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def model_info() -> dict:
        return {"model_path": model_name, "tokenizer_path": model_name, "is_generation": True,
                "context_length": eng.max_len, "aspd": True, "roles": roles.model_dump()}

    @app.get("/get_server_info")
    @app.get("/server_info")
    async def server_info() -> dict:
        stats = await asyncio.wrap_future(engine_loop.call(engine_loop.stats))
        cfg = engine_loop.config
        return {"model_path": model_name, "version": __version__, "context_length": eng.max_len,
                "max_running_requests": cfg.max_running, "max_queued_requests": cfg.max_waiting,
                "max_total_num_tokens": cfg.cache_tokens, "disable_radix_cache": cfg.cache_tokens == 0,
                "internal_states": [stats]}

    @app.post("/flush_cache")  # POST only: a GET can be triggered by any web page
    async def flush_cache() -> PlainTextResponse:
        await asyncio.wrap_future(engine_loop.call(engine_loop.flush))
        return PlainTextResponse("Cache flushed.\n")

    def owned(http: Request, rid: str | None) -> str | None:
        """With several API keys, each key's rids live apart: no client can abort or join another's."""
        if rid is not None and RID_SEP in rid:
            raise BadRequest("rid: may not hold the control character U+001F")
        principal = getattr(http.state, "principal", None)
        return rid if rid is None or principal is None else f"{RID_SEP}{principal}{RID_SEP}{rid}"

    @app.post("/concate_and_append_request")
    async def concate_and_append(body: JoinRequest, http: Request) -> JSONResponse:
        src, dst = [owned(http, r) for r in body.src_rids], owned(http, body.dst_rid)
        try:
            await asyncio.wrap_future(engine_loop.call(lambda: engine_loop.join(src, dst)))
        except serving.NotFound as e:
            return error(404, _shown(str(e)), "not_found_error")
        except EngineError as e:
            return error(400, _shown(str(e)))
        return JSONResponse({"success": True})

    @app.post("/abort_request")
    async def abort_request(body: AbortRequest, http: Request) -> JSONResponse:
        """Cancel a running request or drop a held session (a no-op for unknown rids, as in SGLang)."""
        rid = owned(http, body.rid)
        known = await asyncio.wrap_future(engine_loop.call(lambda: engine_loop.abort(rid)))
        return JSONResponse({"success": True, "found": known})

    @app.post("/generate")
    async def generate(body: GenerateRequest, http: Request):
        prompts = body.prompts()
        params = [w.to_sampling(DEFAULT_MAX_TOKENS, defaults) for w in body.samplings(len(prompts))]
        mode = "aspd" if body.aspd_mode else "ar"
        rids = [owned(http, r) for r in body.rids(len(prompts))]
        lp = LogprobSpec(body.logprob_start_len, body.top_logprobs_num) if body.return_logprob else None
        pendings = [_Pending(asyncio.get_running_loop()) for _ in prompts]
        reqs = [await new_request(p, sp, t, ids, rid=rid, mode=mode, logprobs=lp, stream=body.stream)
                for p, sp, (t, ids), rid in zip(pendings, params, prompts, rids)]
        text_in = body.return_text_in_logprobs
        if body.stream:
            if body.batched:
                raise BadRequest("stream a single prompt per request")
            evs = await started(events(http, reqs[0], pendings[0]))
            if isinstance(evs, JSONResponse):
                return evs
            return StreamingResponse(_sse_generate(evs, eng, text_in), media_type="text/event-stream")
        evs = await results(http, reqs, pendings)
        if evs is None:  # nobody reads this answer: no traceback for a client that left
            return error(499, "the client went away")
        if (err := first_error(evs)) is not None:
            return err
        out = [_generate_json(e.result, eng, text_in) for e in evs]
        return out if body.batched else out[0]

    # ------------------------------------------------------------- OpenAI

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "aspd-lang", "max_model_len": eng.max_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        params = body.sampling(16, defaults)
        prompts = body.prompts()
        if body.stream and len(prompts) > 1:
            raise BadRequest("stream a single prompt per request")
        return await _openai(http, body, params, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        params = body.sampling(DEFAULT_MAX_TOKENS, defaults)
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        tok = eng.tok
        fits("".join(m["content"] for m in msgs), "messages")
        if getattr(tok, "chat_template", None):  # templated in a worker thread, off the event loop
            out = await asyncio.to_thread(tok.apply_chat_template, msgs, add_generation_prompt=True, tokenize=True)
            ids = list(out["input_ids"] if hasattr(out, "keys") else out)
            prompts = [(None, ids)]
        else:
            prompts = [("".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: ", None)]
        return await _openai(http, body, params, prompts, chat=True)

    async def _openai(http: Request, body, params: SamplingParams, prompts, chat: bool):
        mode = "aspd" if body.aspd else "ar"
        pendings = [_Pending(asyncio.get_running_loop()) for _ in prompts]
        field = "messages" if chat else "prompt"
        reqs = [await new_request(p, params, t, ids, field, mode=mode, stream=body.stream)
                for p, (t, ids) in zip(pendings, prompts)]
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = {"id": ident, "created": int(time.time()), "model": body.model or model_name}
        if body.stream:
            evs = await started(events(http, reqs[0], pendings[0]))
            if isinstance(evs, JSONResponse):
                return evs
            return StreamingResponse(_sse_openai(evs, head, chat, body.include_usage), media_type="text/event-stream")
        evs = await results(http, reqs, pendings)
        if evs is None:  # nobody reads this answer: no traceback for a client that left
            return error(499, "the client went away")
        if (err := first_error(evs)) is not None:
            return err
        choices = []
        for i, e in enumerate(evs):
            o = e.result.output
            choice = {"index": i, "finish_reason": _openai_finish(o.finish_reason), "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": o.text}
            else:
                choice["text"] = o.text
            choices.append(choice)
        usage = _usage([e.result for e in evs])
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}

    return app


# ----------------------------------------------------------------- response shapes


def _shown(text: str) -> str:
    """Rids as their owner wrote them (the key index taken out, also where a message shows the repr)."""
    parts = text.replace(repr(RID_SEP)[1:-1], RID_SEP).split(RID_SEP)
    return "".join(p for i, p in enumerate(parts) if i % 2 == 0)


def _finish_reason(result: Result) -> dict:
    o = result.output
    if o.finish_reason == "length":
        return {"type": "length", "length": o.completion_tokens}
    if o.finish_reason == "abort":
        return {"type": "abort", "message": "aborted by /abort_request"}
    return {"type": "stop", "matched": None}


def _triples(entries, eng, with_text: bool) -> tuple[list, list]:
    """SGLang's [logprob, token id, text] triples and the top alternatives per position."""
    def text(t: int) -> str | None:
        return eng.decode([t]) if with_text else None
    main = [[lp, t, text(t)] for lp, t, _ in entries]
    tops = [[[a_lp, a_t, text(a_t)] for a_lp, a_t in alts] if alts else None for _, _, alts in entries]
    return main, tops


def _meta(result: Result, eng, with_text: bool) -> dict:
    o = result.output
    meta = {"id": _shown(result.rid), "finish_reason": _finish_reason(result), "prompt_tokens": result.prompt_tokens,
            "completion_tokens": o.completion_tokens, "cached_tokens": result.cached_tokens,
            "e2e_latency": result.latency_s}
    if result.input_logprobs is not None:
        meta["input_token_logprobs"], meta["input_top_logprobs"] = _triples(result.input_logprobs, eng, with_text)
        meta["output_token_logprobs"], meta["output_top_logprobs"] = _triples(o.token_logprobs or [], eng, with_text)
    if o.blocks or o.parallel_tokens:
        meta["aspd"] = {"markup": o.markup, "segments": [s.model_dump() for s in o.response.segments],
                        "serial_tokens": o.serial_tokens, "parallel_tokens": o.parallel_tokens,
                        "blocks": [b.model_dump() for b in o.blocks], "forward_passes": o.forward_passes}
    return meta


def _generate_json(result: Result, eng, with_text: bool) -> dict:
    return {"text": result.output.text, "meta_info": _meta(result, eng, with_text)}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse_generate(evs: AsyncIterator[Event], eng, with_text: bool) -> AsyncIterator[str]:
    """SGLang's stream: each event carries the cumulative text; the last has the full meta_info."""
    async for ev in evs:
        if ev.error is not None:
            yield _sse(error_body(ev.status, ev.error))
            break
        if ev.done:
            yield _sse(_generate_json(ev.result, eng, with_text))
        else:
            yield _sse({"text": ev.text, "meta_info": {"finish_reason": None}})
    yield "data: [DONE]\n\n"


def _openai_finish(reason: str) -> str:
    return reason if reason in ("length", "abort") else "stop"  # vLLM's "abort" for an aborted request


def _usage(results: list[Result]) -> dict:
    p = sum(r.prompt_tokens for r in results)
    c = sum(r.output.completion_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in results)}}


async def _sse_openai(evs: AsyncIterator[Event], head: dict, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's stream: deltas, a last chunk with finish_reason, optionally a usage chunk."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta is not None else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return {**head, "object": kind, "choices": [choice]}

    sent = 0
    if chat:
        yield _sse(chunk(None, None, first=True))
    async for ev in evs:
        if ev.error is not None:
            yield _sse(error_body(ev.status, ev.error))
            break
        delta = ev.text[sent:]
        sent = len(ev.text)
        if delta:
            yield _sse(chunk(delta, None))
        if ev.done:
            yield _sse(chunk(None, _openai_finish(ev.result.output.finish_reason)))
            if include_usage:
                yield _sse({**head, "object": kind, "choices": [], "usage": _usage([ev.result])})
    yield "data: [DONE]\n\n"
