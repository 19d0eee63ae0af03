"""SGLang's native routes: /generate (one prompt or a batch, streamed or not), the model's facts,
and the KV join of branch sessions (`/concate_and_append_request`)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from . import routes_admin
from .api import AbortRequest, BadRequest, GenerateRequest, JoinRequest, meta_info
from .engine import EngineError
from .http_errors import refusal, refusal_body
from .http_state import DEFAULT_MAX_TOKENS, Pending, State, first_error, owned, shown
from .outcomes import Event, Outcome, Result, UnknownRid
from .serving import LogprobSpec

router = APIRouter()


@router.get("/get_model_info")
@router.get("/model_info")
async def model_info(st: State) -> dict:
    tok = st.engine.tok.name_or_path  # a local directory: routers load the tokenizer from it, not the hub
    return {"model_path": st.model_name, "tokenizer_path": tok if os.path.isdir(tok) else st.model_name,
            "is_generation": True, "context_length": st.engine.max_len, "aspd": True,
            "roles": st.roles.model_dump()}


@router.post("/concate_and_append_request")
async def concate_and_append(body: JoinRequest, http: HttpRequest,
                             st: State) -> JSONResponse:
    src, dst = [owned(http, r) for r in body.src_rids], owned(http, body.dst_rid)
    try:
        await st.on_loop(lambda: st.loop.join(src, dst))
    except UnknownRid as e:
        return refusal(Outcome.NOT_FOUND, shown(str(e)))
    except EngineError as e:
        return refusal(Outcome.INVALID, shown(str(e)))
    return JSONResponse({"success": True})


@router.post("/generate")
async def generate(body: GenerateRequest, http: HttpRequest, st: State):
    opts = body.options  # a join or a release sent through a router, which proxies /generate only
    if (opts.join is not None or opts.release) and not isinstance(body.rid, str):
        raise BadRequest("session_params.aspd join and release act on one rid")
    if opts.join is not None:
        return await concate_and_append(JoinRequest(src_rids=opts.join, dst_rid=body.rid), http, st)
    if opts.release:
        return await routes_admin.abort_request(AbortRequest(rid=body.rid), http, st)
    prompts = body.prompts()
    params = [w.to_sampling(DEFAULT_MAX_TOKENS, st.defaults) for w in body.samplings(len(prompts))]
    mode = "aspd" if body.aspd_mode else "ar"
    rids = [owned(http, r) for r in body.rids(len(prompts))]
    lp = LogprobSpec(body.logprob_start_len, body.top_logprobs_num) if body.return_logprob else None
    pendings = [Pending(asyncio.get_running_loop()) for _ in prompts]
    reqs = [await st.new_request(p, sp, t, ids, rid=rid, mode=mode, logprobs=lp, stream=body.stream)
            for p, sp, (t, ids), rid in zip(pendings, params, prompts, rids)]
    decode = st.engine.decode if body.return_text_in_logprobs else None
    if body.stream:
        if body.batched:
            raise BadRequest("stream a single prompt per request")
        evs = await st.stream(http, reqs[0], pendings[0])
        if isinstance(evs, JSONResponse):
            return evs
        return StreamingResponse(_sse_generate(evs, decode), media_type="text/event-stream")
    evs = await st.results(http, reqs, pendings)
    if evs is None:  # nobody reads this answer: no traceback for a client that left
        return refusal(Outcome.CANCELLED, "the client went away")
    if (err := first_error(evs)) is not None:
        return err
    out = [_generate_json(e.result, decode) for e in evs]
    return out if body.batched else out[0]


def _generate_json(result: Result, decode) -> dict:
    return {"text": result.output.text, "meta_info": meta_info(result, decode, rid=shown(result.rid))}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse_generate(evs: AsyncIterator[Event], decode) -> AsyncIterator[str]:
    """SGLang's stream: each event carries the cumulative text; the last has the full meta_info."""
    async for ev in evs:
        if ev.error is not None:
            yield sse(refusal_body(ev.outcome, ev.error))
            break
        if ev.done:
            yield sse(_generate_json(ev.result, decode))
        else:
            yield sse({"text": ev.text, "meta_info": {"finish_reason": None}})
    yield "data: [DONE]\n\n"
