"""`aspd serve`: the SGLang-compatible and OpenAI-compatible HTTP server (FastAPI + uvicorn).

The app: the guard, one JSON error shape for every failure (`http_errors.py`, where the serving
loop's outcomes become status codes), and three groups of routes sharing one `ServerState`:
SGLang's native routes (`routes_sglang.py`), OpenAI's (`routes_openai.py`) and the admin routes
(`routes_admin.py`). Handlers validate the body (`api.py`), turn each prompt into a serving-loop
request, and relay its events: one JSON answer, or server-sent events with the cumulative text
(SGLang) or deltas (OpenAI). A client that goes away mid-request cancels it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import __version__, routes_admin, routes_openai, routes_sglang
from .api import BadRequest
from .guard import Access, Guard
from .http_errors import error
from .http_state import ServerState
from .sampling import DEFAULTS, SamplingParams
from .serving import ServingLoop


def create_app(engine_loop: ServingLoop, model_name: str, defaults: SamplingParams = DEFAULTS,
               access: Access | None = None) -> FastAPI:
    """The app over a started serving loop; `defaults`' anti-loop settings apply where a request sets
    none (SGLang's frontend never sends them); `access`: API key, allowed hosts, body limit."""
    app = FastAPI(title="aspd serve", version=__version__)
    app.add_middleware(Guard, access=access or Access())
    app.state.server = ServerState(engine_loop, model_name, defaults)
    for group in (routes_admin, routes_sglang, routes_openai):
        app.include_router(group.router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(BadRequest, _bad)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _crash)
    return app


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return error(400, "; ".join(msgs) or "invalid request")


async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
    return error(400, str(exc))


async def _http(_: Request, exc: HTTPException) -> JSONResponse:  # 404, 405, 413 in the same shape
    return error(exc.status_code, str(exc.detail))


async def _crash(_: Request, exc: Exception) -> JSONResponse:
    return error(500, f"internal error: {type(exc).__name__}: {exc}")
