"""Admin routes: health, the loop's counters, cache flushes and aborts."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse

from . import __version__
from .api import AbortRequest
from .http_errors import status_of
from .http_state import Pending, State, owned
from .outcomes import Outcome
from .sampling import SamplingParams

router = APIRouter()


@router.get("/health")
async def health(st: State) -> PlainTextResponse:
    return PlainTextResponse("", status_code=200 if st.loop.alive else 503)


@router.get("/health_generate")
async def health_generate(http: HttpRequest, st: State) -> PlainTextResponse:
    p = Pending(asyncio.get_running_loop())
    r = await st.new_request(p, SamplingParams(max_new_tokens=1), "ping", None)
    evs = await st.results(http, [r], [p])
    if evs is None:
        return PlainTextResponse("", status_code=status_of(Outcome.CANCELLED))
    [ev] = evs
    return PlainTextResponse("", status_code=200 if ev.error is None else 503)  # any refusal: unhealthy


@router.get("/get_server_info")
@router.get("/server_info")
async def server_info(st: State) -> dict:
    stats = await st.on_loop(st.loop.stats)
    cfg = st.loop.config
    return {"model_path": st.model_name, "version": __version__, "context_length": st.engine.max_len,
            "max_running_requests": cfg.max_running, "max_queued_requests": cfg.max_waiting,
            "max_total_num_tokens": cfg.cache_tokens, "disable_radix_cache": cfg.cache_tokens == 0,
            "internal_states": [stats]}


@router.post("/flush_cache")  # POST only: a GET can be triggered by any web page
async def flush_cache(st: State) -> PlainTextResponse:
    await st.on_loop(st.loop.flush)
    return PlainTextResponse("Cache flushed.\n")


@router.post("/abort_request")
async def abort_request(body: AbortRequest, http: HttpRequest, st: State) -> JSONResponse:
    """Cancel a running request or drop a held session (a no-op for unknown rids, as in SGLang)."""
    rid = owned(http, body.rid)
    known = await st.on_loop(lambda: st.loop.abort(rid))
    return JSONResponse({"success": True, "found": known})
