"""OpenAI's routes: /v1/models, /v1/completions and /v1/chat/completions, whole or streamed as
deltas (with an optional usage chunk)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from .api import BadRequest
from .api_openai import ChatRequest, CompletionRequest
from .http_errors import refusal, refusal_body
from .http_state import DEFAULT_MAX_TOKENS, Pending, ServerState, State, first_error
from .outcomes import Event, Outcome, Result
from .roles import chat_ids, has_chat_template
from .routes_sglang import sse
from .sampling import SamplingParams

router = APIRouter()


@router.get("/v1/models")
async def models(st: State) -> dict:
    return {"object": "list", "data": [{"id": st.model_name, "object": "model", "created": 0,
                                        "owned_by": "aspd-lang", "max_model_len": st.engine.max_len}]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http: HttpRequest, st: State):
    params = body.sampling(16, st.defaults)
    prompts = body.prompts()
    if body.stream and len(prompts) > 1:
        raise BadRequest("stream a single prompt per request")
    return await _answer(st, http, body, params, prompts, chat=False)


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, http: HttpRequest, st: State):
    params = body.sampling(DEFAULT_MAX_TOKENS, st.defaults)
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    tok = st.engine.tok
    st.fits("".join(m["content"] for m in msgs), "messages")
    if has_chat_template(tok):  # templated in a worker thread, off the event loop
        prompts = [(None, await asyncio.to_thread(chat_ids, tok, msgs))]
    else:
        prompts = [("".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: ", None)]
    return await _answer(st, http, body, params, prompts, chat=True)


async def _answer(st: ServerState, http: HttpRequest, body, params: SamplingParams, prompts, chat: bool):
    mode = "aspd" if body.aspd else "ar"
    pendings = [Pending(asyncio.get_running_loop()) for _ in prompts]
    where = "messages" if chat else "prompt"
    reqs = [await st.new_request(p, params, t, ids, where, mode=mode, stream=body.stream)
            for p, (t, ids) in zip(pendings, prompts)]
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {"id": ident, "created": int(time.time()), "model": body.model or st.model_name}
    if body.stream:
        evs = await st.stream(http, reqs[0], pendings[0])
        if isinstance(evs, JSONResponse):
            return evs
        return StreamingResponse(_sse_openai(evs, head, chat, body.include_usage), media_type="text/event-stream")
    evs = await st.results(http, reqs, pendings)
    if evs is None:  # nobody reads this answer: no traceback for a client that left
        return refusal(Outcome.CANCELLED, "the client went away")
    if (err := first_error(evs)) is not None:
        return err
    choices = []
    for i, e in enumerate(evs):
        o = e.result.output
        choice = {"index": i, "finish_reason": _finish(o.finish_reason), "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": o.text}
        else:
            choice["text"] = o.text
        choices.append(choice)
    usage = _usage([e.result for e in evs])
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}


def _finish(reason: str) -> str:
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
        yield sse(chunk(None, None, first=True))
    async for ev in evs:
        if ev.error is not None:
            yield sse(refusal_body(ev.outcome, ev.error))
            break
        delta = ev.text[sent:]
        sent = len(ev.text)
        if delta:
            yield sse(chunk(delta, None))
        if ev.done:
            yield sse(chunk(None, _finish(ev.result.output.finish_reason)))
            if include_usage:
                yield sse({**head, "object": kind, "choices": [], "usage": _usage([ev.result])})
    yield "data: [DONE]\n\n"
