"""Admin routes: health, the loop's counters, cache flushes and aborts; and what sglang-router polls
on a worker, answered in SGLang's shapes: /health, /server_info (dp_size), /get_load (its load for
load-aware policies) and /metrics (Prometheus, merged by the router's /engine_metrics)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse

from . import __version__
from .api import AbortRequest
from .http_errors import status_of
from .http_state import Pending, ServerState, State, owned
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
    return {"model_path": st.model_name, "served_model_name": st.model_name, "version": __version__,
            "context_length": st.engine.max_len, "tp_size": 1, "dp_size": 1,
            "max_running_requests": cfg.max_running, "max_queued_requests": cfg.max_waiting,
            "max_total_num_tokens": cfg.cache_tokens, "disable_radix_cache": cfg.cache_tokens == 0,
            "internal_states": [stats]}


def _load(st: ServerState) -> dict:
    """On the loop's thread: SGLang's load of one data-parallel rank (num_tokens: the tokens the
    running requests hold, what the router adds up as the worker's load)."""
    sched = st.loop.scheduler
    return {"dp_rank": 0, "num_reqs": len(sched.running) + len(sched.waiting), "num_waiting_reqs": len(sched.waiting),
            "num_tokens": sum(tokens for _, tokens in sched.running.values())}


@router.get("/get_load")
async def get_load(st: State) -> list[dict]:
    return [await st.on_loop(lambda: _load(st))]


@router.get("/metrics")
async def metrics(st: State) -> PlainTextResponse:
    """SGLang's Prometheus names for what the loop counts."""
    stats, load = await st.on_loop(lambda: (st.loop.stats(), _load(st)))
    prompt = stats["prefill_tokens"] + stats["cached_tokens"]
    rows = [("num_running_reqs", "gauge", stats["running"]), ("num_queue_reqs", "gauge", stats["waiting"]),
            ("num_used_tokens", "gauge", load["num_tokens"]),
            ("cache_hit_rate", "gauge", stats["cached_tokens"] / prompt if prompt else 0.0),
            ("num_requests_total", "counter", stats["requests"]), ("prompt_tokens_total", "counter", prompt),
            ("cached_tokens_total", "counter", stats["cached_tokens"]),
            ("generation_tokens_total", "counter", stats["generated_tokens"])]
    label = st.model_name.replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(f'# TYPE sglang:{name} {kind}\nsglang:{name}{{model_name="{label}"}} {value}\n'
                   for name, kind, value in rows)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


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
